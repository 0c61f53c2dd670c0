"""`libra-ray submit`: run a libra-ray command as a Ray Job through the Job Submission API.

The job's runtime_env ships the working tree and passes secrets *by name*: `--env-from NAME` sends the
submitter's environment variable with the job as a private credentials package (see
`libra_ray.credentials`), never as a runtime_env env var, which Ray would show and log.

`python -m libra_ray.submit preflight --config X` is itself a Ray Job entrypoint: it runs one task on
every alive node and checks that each node can write the run's storage and that the driver sees it
(the contract that lets stages run on different nodes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from libra_ray.credentials import CREDENTIALS_PACKAGE, has_credential, write_credentials_package

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# Never shipped to the cluster: environments, VCS data, run outputs, caches, test debris.
DEFAULT_EXCLUDES = [".venv", ".git", "runs", ".cache", "**/__pycache__", "test-results", "*.egg-info"]
STAGE_CHOICES = ["run", "synth", "train", "bench", "serve", "preflight"]


class SubmitError(RuntimeError):
    """A submit problem the user can fix (bad flag, unreachable cluster, unknown job)."""


def add_submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray dashboard address, e.g. http://head:8265 (default: RAY_ADDRESS)")
    p.add_argument("--stage", default="run", choices=STAGE_CHOICES,
                   help="libra-ray command the job runs (default: run = all stages; "
                        "preflight = check every node sees the run's storage)")
    p.add_argument("--runtime-env", help="YAML file with a Ray runtime_env (pip, image_uri, env_vars, ...)")
    p.add_argument("--working-dir", help="folder shipped to the cluster (default: the runtime_env's, else ., "
                                          "else nothing when the runtime_env names an image_uri)")
    p.add_argument("--env-from", action="append", default=[], metavar="NAME",
                   help="send this environment variable of yours (an API key) with the job, as a private "
                        "package, not an env var Ray would show (repeatable), e.g. OPENAI_API_KEY")
    p.add_argument("--entrypoint-num-cpus", type=float, default=0.0,
                   help="CPUs reserved for the driver (default 0: it only coordinates)")
    p.add_argument("--submission-id", help="job id to use (default: generated)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument("--stop", metavar="JOB_ID", help="stop a running job and exit")
    p.add_argument("--status", metavar="JOB_ID", help="print a job's status and exit (non-zero if it failed)")
    p.add_argument("--attach", metavar="JOB_ID", help="stream an existing job's logs until it ends")


def build_entrypoint(stage: str, config: str | None, overrides: list[str]) -> str:
    """The job's shell command: the thin CLI itself (or the preflight module).

    `python -m libra_ray.cli` rather than the `libra-ray` script: it works wherever the package is
    importable, including from a shipped working_dir on nodes where the project is not installed."""
    if stage == "preflight":
        parts = ["python", "-m", "libra_ray.submit", "preflight"]
    else:
        parts = ["python", "-m", "libra_ray.cli", stage]
    if config:
        parts += ["--config", config]
    for item in overrides:
        parts += ["--set", item]
    return shlex.join(parts)


def job_config_path(config: str | None, working_dir: str | None) -> str | None:
    """The config path as the job sees it: relative to the shipped working_dir.

    A config outside the working_dir would not exist on the cluster, so refuse it here rather than
    let the job fail on a remote node with a confusing 'does not exist'."""
    if not config or "://" in config:
        return config
    if not working_dir or "://" in working_dir:
        return config  # the user ships code another way (image, remote zip): trust the path
    cfg_path = Path(config).resolve()
    root = Path(working_dir).resolve()
    try:
        rel = cfg_path.relative_to(root)
    except ValueError:
        raise SubmitError(f"--config {config} is outside the working dir {root}; the job could not read it. "
                          "Put it under the working dir or pass --working-dir") from None
    if any(part in (".venv", ".git", "runs", ".cache", "test-results") for part in rel.parts):
        raise SubmitError(f"--config {config} lies in {rel.parts[0]}/, which is not shipped to the cluster")
    return rel.as_posix()


def build_runtime_env(args: argparse.Namespace, credentials_dir: Path | None = None) -> dict:
    """runtime_env = --runtime-env YAML + working_dir (with excludes) + --env-from credentials.

    --env-from values are written under `credentials_dir` (a temporary folder that must outlive the
    upload in `submit_job`) and shipped as a py_modules package.
    """
    env: dict = {}
    if args.runtime_env:
        path = Path(args.runtime_env)
        if not path.is_file():
            raise SubmitError(f"--runtime-env {args.runtime_env}: no such file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise SubmitError(f"--runtime-env {args.runtime_env} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise SubmitError(f"--runtime-env {args.runtime_env} must hold a mapping")
        env.update(loaded)
    if args.working_dir:  # an explicit flag beats the file
        env["working_dir"] = args.working_dir
    elif "working_dir" not in env and "image_uri" not in env:
        env["working_dir"] = "."  # ship this tree, unless the code comes in an image
    if env.get("working_dir") and "excludes" not in env:
        env["excludes"] = DEFAULT_EXCLUDES
    if env.get("env_vars"):  # Ray wants strings; YAML gives ints and bools too
        env["env_vars"] = {str(k): str(v) for k, v in env["env_vars"].items()}
    missing = [name for name in args.env_from if not os.environ.get(name)]
    if missing:
        raise SubmitError(f"--env-from {', '.join(missing)}: not set in your environment")
    if args.env_from and "image_uri" in env:
        raise SubmitError(f"--env-from {', '.join(args.env_from)} cannot ship with an image_uri runtime_env: Ray allows "
                          "only env_vars beside image_uri, and it shows and logs those. Set the key on the nodes "
                          "instead (KubeRay secretKeyRef, the VMs' environment); the config names it by api_key_env")
    if args.env_from:
        if credentials_dir is None:
            raise SubmitError("--env-from needs a folder for the credentials package")
        try:
            package = write_credentials_package(credentials_dir, {n: os.environ[n] for n in args.env_from})
        except ValueError as err:
            raise SubmitError(f"--env-from: {err}") from None
        env["py_modules"] = [*env.get("py_modules", []), str(package)]
    return env


def describe_runtime_env(env: dict, credential_names: Sequence[str] = ()) -> str:
    """One log line about the runtime_env: env var names only, credentials by name, no temp paths."""
    shown = {k: v for k, v in env.items() if k not in ("env_vars", "excludes", "py_modules")}
    if env.get("env_vars"):
        shown["env_vars"] = sorted(env["env_vars"])
    modules = [m for m in env.get("py_modules", []) if not str(m).endswith(CREDENTIALS_PACKAGE)]
    if modules:
        shown["py_modules"] = modules
    if credential_names:
        shown["credentials"] = sorted(credential_names)
    return json.dumps(shown, sort_keys=True)


def storage_warning(cfg) -> str | None:
    """Outputs under a relative local path would land in the job's temporary working dir."""
    if cfg is None or "://" in cfg.storage or os.path.isabs(cfg.storage):
        return None
    return (f"storage {cfg.storage!r} is a relative local path: on the cluster it resolves inside the job's "
            "temporary working dir and is lost with it, and other nodes cannot see it. Use a shared URI "
            "(s3://..., gs://...) or a path on a shared filesystem, e.g. --set storage=/mnt/shared/runs")


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmitError("give --address http://HEAD:8265 or set RAY_ADDRESS")
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SubmitError(f"cannot reach the Ray dashboard at {address}: {err}") from None


async def _stream_logs(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def wait_for_job(client, job_id: str, stream: bool = True, poll_s: float = 1.0) -> str:
    """Stream logs until the job ends; return its final status name."""
    if stream:
        try:
            asyncio.run(_stream_logs(client, job_id))
        except Exception as err:  # log streaming is best effort; the status poll is the truth
            print(f"[libra-ray submit] log stream ended: {err}", file=sys.stderr)
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def _finish(client, job_id: str) -> int:
    """Wait for a job and turn its outcome into an exit code (the driver's own code when known)."""
    try:
        status = wait_for_job(client, job_id)
    except KeyboardInterrupt:
        print(f"\n[libra-ray submit] detached; the job goes on. Stop it with: libra-ray submit --stop {job_id}",
              file=sys.stderr)
        return 130
    print(f"[libra-ray submit] job {job_id} finished: {status}", flush=True)
    if status == "SUCCEEDED":
        return 0
    info = client.get_job_info(job_id)
    if info.message:
        # The message repeats the log tail; its first line says why.
        print(f"[libra-ray submit] {info.message.splitlines()[0]}", file=sys.stderr)
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else 1


def submit_from_args(args: argparse.Namespace, cfg=None) -> int:
    try:
        return _submit(args, cfg)
    except SubmitError as err:
        print(f"libra-ray submit: {err}", file=sys.stderr)
        return 2


def _submit(args: argparse.Namespace, cfg) -> int:
    if args.stop or args.status or args.attach:
        return _manage(args)
    # Everything that can be checked locally is checked before contacting the cluster.
    with tempfile.TemporaryDirectory(prefix="libra-ray-submit-") as credentials_dir:
        runtime_env = build_runtime_env(args, Path(credentials_dir))
        config = job_config_path(args.config, runtime_env.get("working_dir"))
        entrypoint = build_entrypoint(args.stage, config, args.overrides)
        if cfg is None:  # the CLI validated the config already; reload it for the storage check
            from libra_ray.config import load_config

            cfg = load_config(args.config, args.overrides)
        if args.stage in ("synth", "run"):  # the seeds CSV travels in the working dir: check it here
            from libra_ray.seeds.plan import SeedsError, plan_seeds

            try:
                plan_seeds(cfg.synth)
            except SeedsError as err:
                raise SubmitError(str(err)) from None
        warning = storage_warning(cfg)
        if warning:
            print(f"[libra-ray submit] warning: {warning}", file=sys.stderr)
        described = describe_runtime_env(runtime_env, args.env_from)  # submit_job rewrites paths to URIs
        client = _client(args.address)
        try:  # submit_job uploads the packages (credentials too); after it the folder may go
            job_id = client.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                submission_id=args.submission_id,
                entrypoint_num_cpus=args.entrypoint_num_cpus,
            )
        except RuntimeError as err:  # e.g. a submission id already in use
            raise SubmitError(str(err)) from None
    print(f"[libra-ray submit] job {job_id}: {entrypoint}", flush=True)
    print(f"[libra-ray submit] runtime_env: {described}", flush=True)
    if args.no_wait:
        print(job_id)
        return 0
    return _finish(client, job_id)


def _manage(args: argparse.Namespace) -> int:
    """--stop / --status / --attach on an existing job."""
    client = _client(args.address)
    try:
        if args.stop:
            stopped = client.stop_job(args.stop)
            print(f"stop requested for {args.stop}: {'ok' if stopped else 'job was not running'}")
            return 0
        if args.status:
            status = str(client.get_job_status(args.status).value)
            print(status)
            return 1 if status in ("FAILED", "STOPPED") else 0
        client.get_job_status(args.attach)  # unknown id: a clear error, not a stream that never starts
    except RuntimeError as err:  # the SDK raises RuntimeError for unknown ids / HTTP errors
        raise SubmitError(str(err)) from None
    return _finish(client, args.attach)


# ---------------------------------------------------------------------------------------------------
# Preflight: a Ray Job entrypoint that proves the cluster can run stages on different nodes.


def secret_env_names(cfg) -> list[str]:
    """Names of the API-key env vars the config refers to (teacher, judge, hosted models)."""
    endpoints = [cfg.synth.teacher, cfg.bench.judge] + [m.endpoint for m in cfg.bench.models if m.endpoint]
    return sorted({e.api_key_env for e in endpoints if e.api_key_env})


def _probe(run_dir: str, secret_names: list[str]) -> dict:
    """On one node: write a marker into the run's storage and describe the node (secrets by name only)."""
    import ray
    from pyarrow import fs as pafs

    from libra_ray.config import join_uri

    node_id = ray.get_runtime_context().get_node_id()
    uri = join_uri(run_dir, "preflight", f"{node_id}.json")
    info = {"node_id": node_id, "hostname": socket.gethostname(), "pid": os.getpid(),
            "ip": ray.util.get_node_ip_address(), "marker": uri,
            "secrets_present": {name: has_credential(name) for name in secret_names}}
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as out:
            out.write(json.dumps(info).encode())
        info["write"] = "ok"
    except Exception as err:  # reported, not raised: the driver lists every failing node at once
        info["write"] = f"{type(err).__name__}: {err}"
    return info


def preflight(cfg) -> dict:
    """Run one probe task on every alive node; check each marker is visible from the driver."""
    import ray
    from pyarrow import fs as pafs
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from libra_ray.runtime import ray_session

    with ray_session(cfg):
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        probe = ray.remote(num_cpus=0)(_probe)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(cfg.run_dir, secret_env_names(cfg)) for n in nodes]
        results = ray.get(refs, timeout=300)
    problems = []
    for info in results:
        if info["write"] != "ok":
            problems.append(f"node {info['node_id'][:12]} ({info['ip']}) cannot write {info['marker']}: {info['write']}")
            continue
        try:
            filesystem, path = pafs.FileSystem.from_uri(info["marker"])
            with filesystem.open_input_stream(path) as src:
                json.loads(src.read())
        except Exception as err:
            problems.append(f"the driver cannot read {info['marker']} written by node {info['node_id'][:12]}: {err} "
                            "(storage is not shared between nodes)")
    return {"storage": cfg.run_dir, "num_nodes": len(nodes), "nodes": results, "ok": not problems,
            "problems": problems,
            "driver_secrets_present": {name: has_credential(name) for name in secret_env_names(cfg)}}


def _main(argv: list[str] | None = None) -> int:
    from libra_ray.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="python -m libra_ray.submit",
                                     description="Ray Job entrypoints that belong to submitting, not to a stage")
    parser.add_argument("command", choices=["preflight"])
    parser.add_argument("--config", "-c")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"libra-ray preflight: {err}", file=sys.stderr)
        return 2
    summary = preflight(cfg)
    for node in summary["nodes"]:
        keys = ", ".join(f"{k}={'set' if v else 'missing'}" for k, v in node["secrets_present"].items())
        print(f"[preflight] node {node['node_id'][:12]} ({node['ip']}, {node['hostname']}): "
              f"storage write {node['write']}; api keys: {keys or 'none needed'}")
    keys = ", ".join(f"{k}={'set' if v else 'missing'}" for k, v in summary["driver_secrets_present"].items())
    print(f"[preflight] driver: api keys: {keys or 'none needed'}")
    print(json.dumps(summary))  # last line: machine-readable
    for problem in summary["problems"]:
        print(f"libra-ray preflight: {problem}", file=sys.stderr)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(_main())
