"""End to end: a real two-node Ray cluster on 127.0.0.1 (`ray start` head + worker), jobs submitted
with the real `libra-ray submit` CLI through the Job Submission API.

The cluster runs in its own process groups and its own temp dir; teardown kills only those.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from libra_ray.testing import CACHE, ROOT, free_ports, pids_mentioning
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.e2e
PIPELINE_TIMEOUT_S = 600  # ~3-4 min idle; generous for a loaded CI machine


# `ray start`, except that a new raylet gets up to 180 s (not Ray's hard-coded 30 s) to register with
# the GCS: on a loaded 2-core machine registration alone can take longer, and the node start fails.
PATIENT_RAY_START = """
import sys, time
import ray._private.services as services
_get_node = services.get_node
def get_node(*args, **kwargs):
    deadline = time.monotonic() + 180
    while True:
        try:
            return _get_node(*args, **kwargs)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
services.get_node = get_node
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())
"""


def _node_ports() -> list[str]:
    """Every port a node would otherwise take at a fixed default (and collide with other clusters)."""
    agent, grpc, renv, metrics = free_ports(4)
    return ["--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(grpc),
            "--runtime-env-agent-port", str(renv), "--metrics-export-port", str(metrics)]


class LocalCluster:
    """A head and N worker nodes started with `ray start --block`, each in its own process group."""

    def __init__(self, num_workers: int = 1, cpus_per_node: int = 1):
        self.temp_dir = tempfile.mkdtemp(prefix="lrc-", dir="/tmp")  # short: unix socket paths
        gcs, dash, client = free_ports(3)
        self.gcs_address = f"127.0.0.1:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dash}"
        # Token auth, as Ray 2.60 enables by default, with a token private to this cluster.
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(self.auth)
        os.environ.update(self.auth)  # this process talks to the cluster too (state API, job client)
        refresh_ray_auth()
        self.env.update({
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "TORCH_EXTENSIONS_DIR": str(CACHE / "torch_extensions"),
            # A raylet waits this long for its dashboard agent (a slow Python start on a loaded machine).
            "RAY_agent_register_timeout_ms": "180000",
        })
        common = ["--block", "--node-ip-address", "127.0.0.1", f"--num-cpus={cpus_per_node}", "--num-gpus=0",
                  "--object-store-memory", str(300 * 1024**2), "--disable-usage-stats"]
        self.procs: list[subprocess.Popen] = []
        self.log = open(os.path.join(self.temp_dir, "ray-start.log"), "w")
        try:
            self._boot(gcs, dash, client, num_workers, common)
        except BaseException:
            self.shutdown(keep_logs=True)
            raise

    def _boot(self, gcs: int, dash: int, client: int, num_workers: int, common: list[str]) -> None:
        # One temp dir per node, as on real machines: nodes sharing one would unpack each job's working_dir
        # into the same folder, and a driver importing from it sees files vanish (flaky ImportErrors).
        self._start_node(["--head", f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                          f"--dashboard-port={dash}", f"--ray-client-server-port={client}", *_node_ports(), *common,
                          "--temp-dir", os.path.join(self.temp_dir, "n0")], nodes=1)
        for i in range(num_workers):
            self._start_node([f"--address={self.gcs_address}", *_node_ports(), *common,
                              "--temp-dir", os.path.join(self.temp_dir, f"n{i + 1}")], nodes=2 + i)

    def _start_node(self, args: list[str], nodes: int) -> None:
        # Belt and braces on a loaded machine: a node that still fails to start is tried again.
        for attempt in range(3):
            self._start(args)
            try:
                self._wait(lambda: self._alive_nodes() >= nodes, f"node {nodes}")
                return
            except RuntimeError:
                if attempt == 2:
                    raise
                _kill_group(self.procs.pop().pid, signal.SIGKILL)
                time.sleep(2)

    def _start(self, args: list[str]) -> None:
        cmd = [sys.executable, "-c", PATIENT_RAY_START, "start", *args]
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _alive_nodes(self) -> int:
        from ray.util.state import list_nodes

        try:
            return sum(n.state == "ALIVE" for n in list_nodes(address=self.dashboard, raise_on_missing_output=False))
        except Exception:  # not up yet
            return 0

    def _wait(self, ready, what: str, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"`ray start` exited while waiting for {what}:\n{self._log_tail()}")
            if ready():
                return
            time.sleep(1)
        raise TimeoutError(f"{what} not up after {timeout_s}s (logs: {self.temp_dir}):\n{self._log_tail()}")

    def _log_tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def shutdown(self, keep_logs: bool = False) -> None:
        for proc in reversed(self.procs):  # workers first, then the head
            _kill_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10  # Ray's graceful stop is slow; then force it
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _kill_group(proc.pid, signal.SIGKILL)
        # Ray processes that left the group still name our private temp dir on their command line.
        for pid in pids_mentioning(self.temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        if not keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def cluster():
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    try:
        c = LocalCluster(num_workers=1, cpus_per_node=1)  # shuts itself down if it fails to start
        try:
            yield c
        finally:
            c.shutdown()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        refresh_ray_auth()


def refresh_ray_auth() -> None:
    """Make this process use the auth settings now in os.environ.

    Ray caches the auth mode and token per process on first use: after an earlier test module started a
    local cluster (which loaded ~/.ray/auth_token), this cluster's private token would otherwise be ignored
    and every state-API call answered 401.
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def submit(cluster: LocalCluster, *args: str, env: dict | None = None, timeout: float = 300):
    """Run the real CLI, as a user would, from the repository root."""
    cmd = [str(BIN / "libra-ray"), "submit", "--address", cluster.dashboard, *args]
    return subprocess.run(cmd, cwd=ROOT, env={**cluster.env, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def preflight_summary(stdout: str) -> dict:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith('{"storage"')))


def job_task_nodes(cluster: LocalCluster, submission_id: str) -> set[str]:
    """Node ids of the tasks and actors that ran for one job (Ray's state API)."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_tasks

    job_id = JobSubmissionClient(cluster.dashboard).get_job_info(submission_id).job_id
    tasks = list_tasks(address=cluster.dashboard, filters=[("job_id", "=", job_id)], limit=10000,
                       raise_on_missing_output=False, detail=True)
    return {t.node_id for t in tasks if t.node_id and t.type != "DRIVER_TASK"}


def test_preflight_job_runs_on_every_node(cluster, tmp_path):
    storage = tmp_path / "runs"
    sid = f"preflight-{secrets.token_hex(4)}"
    proc = submit(cluster, "--stage", "preflight", "--config", "jobs/quickstart.yaml", "--submission-id", sid,
                  "--set", f"storage={storage}", "--set", "name=mn")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"job {sid} finished: SUCCEEDED" in proc.stdout
    summary = preflight_summary(proc.stdout)
    assert summary["num_nodes"] == 2 and summary["ok"]
    assert len({n["node_id"] for n in summary["nodes"]}) == 2
    assert len(list((storage / "mn" / "preflight").glob("*.json"))) == 2
    assert len(job_task_nodes(cluster, sid)) == 2


def test_failing_job_makes_submit_exit_nonzero(cluster):
    # Valid config, but its storage is not writable on the cluster: the job fails remotely.
    proc = submit(cluster, "--stage", "preflight", "--config", "jobs/quickstart.yaml",
                  "--set", "storage=/proc/libra_ray_not_writable")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "finished: FAILED" in proc.stdout
    assert "cannot write" in proc.stdout + proc.stderr


def test_secret_passed_by_reference_is_never_echoed(cluster, tmp_path):
    secret = "sk-test-" + secrets.token_hex(16)
    sid = f"secret-{secrets.token_hex(4)}"
    proc = submit(cluster, "--stage", "preflight", "--config", "jobs/quickstart.yaml", "--submission-id", sid,
                  "--env-from", "LIBRA_RAY_TEST_KEY", "--set", "synth.teacher.api_key_env=LIBRA_RAY_TEST_KEY",
                  "--set", f"storage=file://{tmp_path / 'runs'}",  # a pyarrow URI, as s3:// would be
                  env={"LIBRA_RAY_TEST_KEY": secret})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = preflight_summary(proc.stdout)
    # The key reached the driver and every node (reported by name only) ...
    assert all(n["secrets_present"]["LIBRA_RAY_TEST_KEY"] for n in summary["nodes"])
    assert summary["driver_secrets_present"]["LIBRA_RAY_TEST_KEY"] is True
    assert summary["ok"] and len(list((tmp_path / "runs").rglob("preflight/*.json"))) == 2
    # ... and its value is in no output: submit's own, the job's info and logs, the files written, and
    # no log of any Ray node (Ray logs runtime_envs, which is why the key is not an env var there).
    from ray.job_submission import JobSubmissionClient

    assert secret not in proc.stdout + proc.stderr
    assert "LIBRA_RAY_TEST_KEY" in proc.stdout  # the runtime_env line names it
    client = JobSubmissionClient(cluster.dashboard)
    assert secret not in client.get_job_logs(sid)
    assert secret not in json.dumps(client.get_job_info(sid).runtime_env)
    node_logs = [p for p in Path(cluster.temp_dir).glob("n*/session_*/logs/**/*") if p.is_file()]
    assert node_logs
    files = node_logs + [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    leaked = [str(p) for p in files if secret in p.read_text(errors="replace")]
    assert not leaked


def test_no_wait_attach_status_and_stop(cluster):
    from ray.job_submission import JobSubmissionClient

    proc = submit(cluster, "--stage", "preflight", "--config", "jobs/quickstart.yaml", "--no-wait",
                  "--set", "storage=/proc/libra_ray_not_writable")
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().splitlines()[-1]
    attached = submit(cluster, "--attach", job_id)
    assert attached.returncode == 1 and "finished: FAILED" in attached.stdout
    assert submit(cluster, "--status", job_id).returncode == 1

    # A long job (any entrypoint) is stopped through the CLI.
    client = JobSubmissionClient(cluster.dashboard)
    long_id = client.submit_job(entrypoint="sleep 300", entrypoint_num_cpus=0)
    status = submit(cluster, "--status", long_id)
    assert status.returncode == 0 and status.stdout.strip() in ("PENDING", "RUNNING")
    assert submit(cluster, "--stop", long_id).returncode == 0
    deadline = time.monotonic() + 60
    while client.get_job_status(long_id).value != "STOPPED" and time.monotonic() < deadline:
        time.sleep(1)
    stopped = submit(cluster, "--status", long_id)
    assert stopped.stdout.strip() == "STOPPED" and stopped.returncode == 1

    unknown = submit(cluster, "--status", "no-such-job")
    assert unknown.returncode == 2 and "no-such-job" in unknown.stderr


def test_quickstart_pipeline_on_two_nodes(cluster, tmp_path):
    """The contract: the quickstart pipeline, submitted to a 2-node cluster, writes all its outputs."""
    from libra_ray.config import load_config

    # Small on purpose: the machinery is under test here; each stage has its own e2e tests.
    overrides = [f"storage={tmp_path / 'runs'}", f"cache_dir={CACHE}", "name=multinode",
                 "synth.num_legitimate=3", "synth.num_illegitimate=3", "synth.forms=[TEXT]", "synth.n_prompt=1",
                 "synth.n_chosen=1", "synth.n_rejected=1", "synth.teacher.max_tokens=48",
                 "train.model=tiny", "train.sft.enabled=false", "train.max_steps=1", "train.save_steps=1",
                 "train.per_device_train_batch_size=2",  # a handful of triplets: below the quickstart's global batch
                 "bench.models=[{name: aligned, engine: transformers, path: trained}]",
                 "bench.max_tokens=8", "bench.judge.max_tokens=8",
                 "bench.attack.prompts_per_class=1", "bench.capability.questions_per_type=1"]
    sid = f"pipeline-{secrets.token_hex(4)}"
    args = ["--stage", "run", "--config", "jobs/quickstart.yaml", "--submission-id", sid]
    for item in overrides:
        args += ["--set", item]
    try:
        proc = submit(cluster, *args, timeout=PIPELINE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        from ray.job_submission import JobSubmissionClient

        logs = JobSubmissionClient(cluster.dashboard).get_job_logs(sid)
        pytest.fail(f"pipeline job still running after {PIPELINE_TIMEOUT_S}s; last logs:\n{logs[-4000:]}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    cfg = load_config(ROOT / "jobs" / "quickstart.yaml", overrides)
    for out in (cfg.dataset_dir, cfg.checkpoint_dir):
        assert any(p.is_file() for p in Path(out).rglob("*")), f"no output under {out}"
    assert (Path(cfg.bench_dir) / "report.json").is_file()
    assert len(job_task_nodes(cluster, sid)) >= 2
