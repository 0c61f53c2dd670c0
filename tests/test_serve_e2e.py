"""Serving stage, heavier end-to-end checks (`-m e2e`): autoscaling under a bounded local load,
scale to zero, `serve deploy` of the YAML on a separately started local cluster, the vLLM engine."""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from libra_ray.testing import CACHE, ROOT, free_port, serve_replica_log, serve_replica_log_files, wait_for

pytestmark = pytest.mark.e2e


def test_autoscaling_adds_a_replica_under_load_and_removes_it_when_idle(ray_local, tmp_path):
    from libra_ray.config import load_config
    from libra_ray.serve import serving
    from libra_ray.serve.server import replica_counts

    fast = ("upscale_delay_s=0.5", "downscale_delay_s=3", "metrics_interval_s=0.5", "look_back_period_s=2",
            "target_ongoing_requests=1")
    cfg = load_config(None, [
        f"storage={tmp_path}", f"cache_dir={CACHE}", "serve.port=0", "serve.policy.path=tiny",
        "serve.policy.num_cpus=0.25", "serve.judge.num_cpus=0.25", "serve.ingress.num_cpus=0.1",
        "serve.policy.autoscaling.min_replicas=1", "serve.policy.autoscaling.max_replicas=2",
        # The judge scales to zero when idle and back up on demand.
        "serve.judge.autoscaling.min_replicas=0", "serve.judge.autoscaling.max_replicas=1",
        *(f"serve.policy.autoscaling.{kv}" for kv in fast), *(f"serve.judge.autoscaling.{kv}" for kv in fast),
    ])
    with serving(cfg) as app:
        policy = "model-policy"
        assert replica_counts(app.name)[policy] == 1
        client = openai.OpenAI(base_url=app.base_url, api_key="none", max_retries=2, timeout=60)
        stop = threading.Event()
        sent = []

        def load():  # bounded: stops on scale-out, after 60 s, or after 400 requests per worker
            t0 = time.monotonic()
            for _ in range(400):
                if stop.is_set() or time.monotonic() - t0 > 60:
                    return
                client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=64, temperature=1.0)
                sent.append(1)

        with cf.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(load) for _ in range(6)]
            try:
                t_load = time.monotonic()
                wait_for(lambda: replica_counts(app.name).get(policy) == 2, 60, "policy to scale 1 -> 2")
                scale_out_s = time.monotonic() - t_load
            finally:
                stop.set()
                for f in futures:
                    f.result()
        print(f"scaled out after {scale_out_s:.1f} s, {len(sent)} requests")
        wait_for(lambda: replica_counts(app.name).get(policy) == 1, 90, "policy to scale back 2 -> 1")
        # Scale to zero: the idle judge went to 0 replicas; a request brings one back.
        wait_for(lambda: replica_counts(app.name).get("model-judge", 1) == 0, 60, "judge to scale to zero")
        out = client.chat.completions.create(model="judge", messages=[{"role": "user", "content": "x"}], max_tokens=2)
        assert out.usage.completion_tokens <= 2
        assert replica_counts(app.name)["model-judge"] == 1


def test_serve_deploy_yaml_on_a_running_local_cluster(tmp_path):
    """`ray start --head` (own ports, own temp dir, own process group) -> `serve deploy` -> query -> shutdown."""
    gcs, dash, http = free_port(), free_port(), free_port()
    # Token auth off for this loopback-only test cluster: Ray 2.60 enables it by default and the CLI
    # would otherwise need the shared ~/.ray/auth_token, which other engineers' clusters use too.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths have a length limit
    bin_dir = Path(sys.executable).parent
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--temp-dir={temp_dir}", "--disable-usage-stats", f"--ray-client-server-port={free_port()}",
         f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--node-manager-port={free_port()}",
         f"--object-manager-port={free_port()}", f"--min-worker-port={free_port()}", "--max-worker-port=0"],
        env=env, cwd=ROOT, start_new_session=True, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dash}"
    serve_bin = str(bin_dir / "serve")
    config = tmp_path / "app.yaml"
    # The shipped YAML with this test's free HTTP port (and the tiny policy: no trained model here).
    text = (ROOT / "serve" / "tiny.yaml").read_text().replace("port: 8000", f"port: {http}")
    config.write_text(text)
    try:
        # Any answer means the dashboard is up (401: Ray's token auth; the `serve` CLI sends the token).
        wait_for(lambda: _ok(f"{address}/api/version", any_status=True), 120, "the Ray dashboard", step=1)
        deploy = subprocess.run([serve_bin, "deploy", str(config), "--address", address], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert deploy.returncode == 0, deploy.stderr[-2000:]
        base = f"http://127.0.0.1:{http}/v1"
        wait_for(lambda: _ok(f"http://127.0.0.1:{http}/health"), 240, "the deployed app", step=2)
        client = openai.OpenAI(base_url=base, api_key="none", max_retries=2, timeout=60)
        assert sorted(m.id for m in client.models.list()) == ["judge", "policy"]
        out = client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert out.usage.completion_tokens <= 4
        status = subprocess.run([serve_bin, "status", "--address", address], env=env, capture_output=True, text=True,
                                timeout=60)
        assert "RUNNING" in status.stdout, status.stdout
    finally:
        subprocess.run([serve_bin, "shutdown", "-y", "--address", address], env=env, capture_output=True, timeout=120)
        # Stop only the cluster this test started: its own process group (`ray start --block` children).
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(head.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ok(url: str, any_status: bool = False) -> bool:
    try:
        status = httpx.get(url, timeout=5).status_code
        return status < 500 if any_status else status == 200
    except httpx.HTTPError:
        return False


def test_vllm_engine_behind_the_same_api(ray_local, tmp_path):
    """The production engine: vLLM's AsyncLLM (CPU build) in a Serve replica, same routes and errors."""
    import vllm  # noqa: F401  (the cpu/gpu extra: without vLLM this fails, never skips)
    from libra_ray.config import load_config
    from libra_ray.serve import serving

    cfg = load_config(None, [
        f"storage={tmp_path}", f"cache_dir={CACHE}", "serve.port=0", "serve.policy.path=tiny",
        "serve.policy.engine=vllm", "serve.policy.num_cpus=0.5", "serve.policy.max_model_len=256",
        # dtype auto (the default): float32 on CPU for both engines, so greedy answers match the transformers judge
        "serve.judge.num_cpus=0.25", "serve.policy.autoscaling.max_replicas=1",
        "serve.policy.vllm_server=libra",  # our ModelServer + AsyncLLM (Ray Serve LLM's: test_serve_ray_llm.py)
    ])
    earlier = serve_replica_log_files(cfg.serve.app_name, "model-policy")  # an earlier test's app of this name
    with serving(cfg) as app:
        client = openai.OpenAI(base_url=app.base_url, api_key="none", max_retries=0, timeout=120)
        msgs = [{"role": "user", "content": "Tell me about aspirin"}]
        full = client.chat.completions.create(model="policy", messages=msgs, max_tokens=12, temperature=0)
        assert 0 < full.usage.completion_tokens <= 12
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="policy", messages=msgs, max_tokens=12, temperature=0, stream=True) if c.choices)
        assert streamed == full.choices[0].message.content
        # Greedy vLLM and greedy transformers agree token for token on the same weights.
        hf = client.chat.completions.create(model="judge", messages=msgs, max_tokens=12, temperature=0)
        assert hf.choices[0].message.content == full.choices[0].message.content
        resp = httpx.post(app.base_url + "/chat/completions", timeout=60, json={
            "model": "policy", "messages": [{"role": "user", "content": "aspirin " * 300}], "max_tokens": 8})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded"
        # Issue #25: vLLM's logging set-up closed Serve's request-log handler, which then kept every record in
        # memory (~3 KB per request) and wrote none: the replica's log file must get the requests' lines.
        wait_for(lambda: "CALL generate OK" in serve_replica_log(app.name, "model-policy", earlier)
                 and "CALL stream OK" in serve_replica_log(app.name, "model-policy", earlier), 10,
                 "the policy replica's request log lines in its Serve log file")


def test_cli_serve_blocks_until_interrupted_then_shuts_down_cleanly(tmp_path):
    """`libra-ray serve` on an embedded cluster: serves, then Ctrl-C stops it with exit 0 and no orphans."""
    port = free_port()
    marker = f"serve-cli-{os.getpid()}-{time.time_ns()}"  # inherited by every process of that session
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "LIBRA_SERVE_TEST_MARKER": marker}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(Path(sys.executable).parent / "libra-ray"), "serve", "--set", f"storage={tmp_path}",
           "--set", f"cache_dir={CACHE}", "--set", "serve.policy.path=tiny", "--set", f"serve.port={port}",
           "--set", "ray.num_cpus=2", "--set", "serve.policy.num_cpus=0.25", "--set", "serve.judge.num_cpus=0.25"]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_default_sigint)
    try:
        # Ready = the CLI announced it (a Ctrl-C before that interrupts start-up instead: exit 130).
        wait_for(lambda: "[libra-ray] serving" in (tmp_path / "serve.log").read_text() or proc.poll() is not None,
                  240, "libra-ray serve", step=1)
        assert _ok(f"http://127.0.0.1:{port}/health")
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        out = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=1).chat.completions.create(
            model="policy", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert out.usage.completion_tokens <= 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        assert "shutting down Serve" in (tmp_path / "serve.log").read_text()
        assert not _ok(f"http://127.0.0.1:{port}/health")
        # Nothing of that session survives it (driver, GCS, raylet, workers, Serve controller/proxy).
        wait_for(lambda: not _processes_with(marker), 30, f"the session's processes to exit: {_processes_with(marker)}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in _processes_with(marker):  # only processes this test started (they carry its marker)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _default_sigint() -> None:
    """Child gets Python's normal Ctrl-C handling even when this runner ignores SIGINT (a shell's `cmd &`
    makes SIGINT ignored, and ignored signals survive exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_soak_memory_per_replica_levels_off(ray_local, tmp_path):
    """Bounded soak (transformers engine, one replica per deployment): 12 rounds of 96 requests (non-streamed,
    streamed, and malformed ones) at 16 in flight; each replica's RSS after every round. The growth over the
    second half must stay under half the first half's (plus 16 MiB of allocator noise): memory levels off.
    The vLLM paths: `python -m benchmarks.serve_soak` (serve/README.md)."""
    import json

    from libra_ray.config import load_config
    from libra_ray.serve import serving
    from libra_ray.testing import pids_mentioning, soak

    cfg = load_config(None, [
        f"storage={tmp_path}", f"cache_dir={CACHE}", "serve.port=0", "serve.policy.path=tiny",
        "serve.policy.num_cpus=1", "serve.judge.num_cpus=0.25", "serve.ingress.num_cpus=0.25",
        "serve.policy.autoscaling.max_replicas=1", "serve.judge.autoscaling.max_replicas=1",
    ])
    with serving(cfg) as app:
        replicas = {name: pids_mentioning(f"ServeReplica:{app.name}:{name}") for name in ("ingress", "model-policy")}
        assert all(len(p) == 1 for p in replicas.values()), replicas
        result = soak(app.base_url, {name: p[0] for name, p in replicas.items()}, rounds=12, per_round=96)
    assert sorted(set(result.statuses)) == [200, 400]
    print("soak:", json.dumps(result.summary()))
    for name, rss in result.samples.items():
        assert result.levels_off(name), (name, rss)
