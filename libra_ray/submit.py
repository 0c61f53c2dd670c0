"""`libra-ray submit`: run a libra-ray command as a Ray Job through the Job Submission API.

The job's runtime_env ships the working tree and passes secrets *by name*: `--env-from NAME` copies
the submitter's environment variable into the job at submit time (never written to a file or log).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

import yaml

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
DEFAULT_EXCLUDES = [".venv", ".git", "runs", ".cache", "**/__pycache__", "test-results"]


def add_submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray dashboard address, e.g. http://head:8265 (default: RAY_ADDRESS)")
    p.add_argument("--stage", default="run", choices=["run", "synth", "train", "bench", "serve"],
                   help="libra-ray command the job runs (default: run = all stages)")
    p.add_argument("--runtime-env", help="YAML file with a Ray runtime_env (pip, image_uri, env_vars, ...)")
    p.add_argument("--working-dir", default=".", help="folder shipped to the cluster (default: .)")
    p.add_argument("--env-from", action="append", default=[], metavar="NAME",
                   help="pass this environment variable of yours into the job (repeatable), e.g. OPENAI_API_KEY")
    p.add_argument("--entrypoint-num-cpus", type=float, default=0.0,
                   help="CPUs reserved for the driver (default 0: it only coordinates)")
    p.add_argument("--submission-id", help="job id to use (default: generated)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument("--stop", metavar="JOB_ID", help="stop a running job and exit")
    p.add_argument("--status", metavar="JOB_ID", help="print a job's status and exit (non-zero if it failed)")


def build_entrypoint(stage: str, config: str | None, overrides: list[str]) -> str:
    parts = ["libra-ray", stage]
    if config:
        parts += ["--config", config]
    for item in overrides:
        parts += ["--set", item]
    return shlex.join(parts)


def build_runtime_env(args: argparse.Namespace) -> dict:
    env: dict = {}
    if args.runtime_env:
        loaded = yaml.safe_load(Path(args.runtime_env).read_text()) or {}
        if not isinstance(loaded, dict):
            raise SystemExit(f"libra-ray submit: {args.runtime_env} must hold a mapping")
        env.update(loaded)
    env.setdefault("working_dir", args.working_dir)
    if env.get("working_dir") and "excludes" not in env:
        env["excludes"] = DEFAULT_EXCLUDES
    env_vars = dict(env.get("env_vars", {}))
    for name in args.env_from:
        if name not in os.environ:
            raise SystemExit(f"libra-ray submit: --env-from {name}: not set in your environment")
        env_vars[name] = os.environ[name]
    if env_vars:
        env["env_vars"] = env_vars
    return env


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SystemExit("libra-ray submit: give --address http://HEAD:8265 or set RAY_ADDRESS")
    return JobSubmissionClient(address)


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


def submit_from_args(args: argparse.Namespace) -> int:
    client = _client(args.address)
    if args.stop:
        stopped = client.stop_job(args.stop)
        print(f"stop requested for {args.stop}: {'ok' if stopped else 'job was not running'}")
        return 0
    if args.status:
        status = str(client.get_job_status(args.status).value)
        print(status)
        return 1 if status in ("FAILED", "STOPPED") else 0
    entrypoint = build_entrypoint(args.stage, args.config, args.overrides)
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env=build_runtime_env(args),
        submission_id=args.submission_id,
        entrypoint_num_cpus=args.entrypoint_num_cpus,
    )
    print(f"[libra-ray submit] job {job_id}: {entrypoint}", flush=True)
    if args.no_wait:
        print(job_id)
        return 0
    try:
        status = wait_for_job(client, job_id)
    except KeyboardInterrupt:
        print(f"\n[libra-ray submit] detached; the job goes on. Stop it with: libra-ray submit --stop {job_id}")
        return 130
    print(f"[libra-ray submit] job {job_id} finished: {status}", flush=True)
    if status != "SUCCEEDED":
        info = client.get_job_info(job_id)
        if info.message:
            print(f"[libra-ray submit] {info.message}", file=sys.stderr)
        return 1
    return 0
