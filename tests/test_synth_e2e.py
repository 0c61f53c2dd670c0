"""Synthesis end to end: 1,000+ triplets on a local Ray cluster, a killed CLI run that resumes without
repeated calls, and the embedded default teacher (Serve + tiny model)."""

from __future__ import annotations

import collections
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from libra_ray.config import load_config
from libra_ray.llm.client import cache_key
from libra_ray.llm.testserver import TestOpenAIServer
from libra_ray.synth.pipeline import phase1_rows
from libra_ray.synth.testing import scripted_teacher
from libra_ray.testing import rate_excess, wait_server_idle

pytestmark = pytest.mark.e2e
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rows(dataset_dir: str, split: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in glob.glob(f"{dataset_dir}/{split}/*.parquet")])


def test_thousand_triplets_with_faults_and_a_cluster_budget(ray_local, tmp_path):
    from libra_ray.synth.pipeline import build_dataset

    with TestOpenAIServer(responder=scripted_teacher, latency_s=0.05, rate_limit_rate=0.03, error_rate=0.03,
                          malformed_rate=0.02, retry_after_s=0.05, seed=7) as server:
        cfg = load_config(None, [f"storage={tmp_path}", f"synth.teacher.base_url={server.base_url}",
                                 "synth.num_legitimate=43", "synth.num_illegitimate=43", "synth.batch_size=16",
                                 "synth.teacher.api_key_env=null", "synth.teacher.backoff_base_s=0.02",
                                 "synth.teacher.requests_per_minute=3000"])
        start = time.monotonic()
        summary = build_dataset(cfg, server.base_url, progress=False)
        elapsed = time.monotonic() - start
        arrivals = [e["t_in"] for e in server.log]
    train, test = rows(cfg.dataset_dir, "train"), rows(cfg.dataset_dir, "test")
    assert len(train) + len(test) >= 1000 and summary["seeds"] == len(phase1_rows(cfg.synth)) > 168  # 86 x 2 forms less TEXT-only
    assert not set(train["compound_id"]) & set(test["compound_id"])
    card = json.loads(open(f"{cfg.dataset_dir}/card.json").read())
    assert card["teacher"]["this_run"]["rate_limited"] > 0 and card["teacher"]["this_run"]["server_errors"] > 0
    # The cluster-wide budget held, measured at the server by arrival times: no window of any length got
    # more than 50/s x its length plus the budget's burst (0.5 s = 25), with 0.5 s of budget for transit jitter.
    excess = rate_excess(arrivals, 50.0)
    assert excess <= 25 + 25, f"{excess:.0f} requests beyond 50/s in some window"
    print(f"\n1000-triplet build: {len(train) + len(test)} triplets, {elapsed:.1f} s, {len(arrivals)} requests, "
          f"peak excess over 50/s: {excess:.1f}, {card['teacher']['this_run']}")


def test_killed_cli_run_resumes_without_repeated_calls(tmp_path):
    with TestOpenAIServer(responder=scripted_teacher, latency_s=0.3) as server:
        overrides = [f"storage={tmp_path}", f"synth.teacher.base_url={server.base_url}", "synth.num_legitimate=20",
                     "synth.num_illegitimate=20", "synth.replicas=1", "synth.batch_size=4",
                     "synth.teacher.max_concurrency=4", "synth.teacher.api_key_env=null", "ray.num_cpus=2"]
        n_seeds = len(phase1_rows(load_config(None, overrides).synth))  # 40 x 2 forms, less TEXT-only SMILES
        cmd = [sys.executable, "-m", "libra_ray.cli", "--log-level", "WARNING", "synth"]
        for o in overrides:
            cmd += ["--set", o]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_default_sigint)
        deadline = time.monotonic() + 240
        while server.counts["ok"] < n_seeds and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the driver stops mid-run
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        wait_server_idle(server)  # answers in flight at the interrupt are recorded before we count
        served_before, cached_before = _served_keys(server), _cached_keys(load_config(None, overrides))
        assert 0 < len(served_before) < 3 * n_seeds, "the interrupt must land mid-run"
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stderr[-3000:]
        served = _served_keys(server)
    _check_resume(served_before, cached_before, served, 3 * n_seeds, in_flight_bound=4)  # max_concurrency
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["synth"]["train_rows"] > 0


def _synth_cmd(overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "libra_ray.cli", "--log-level", "WARNING", "synth"]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def _served_keys(server: TestOpenAIServer) -> collections.Counter:
    """Paid (ok) answers per request content, as the server saw them."""
    return collections.Counter(cache_key(e["params"]["model"], e["messages"],
                                         {k: v for k, v in e["params"].items() if k != "model"})
                               for e in server.log if e["outcome"] == "ok")


def _cached_keys(cfg) -> set[str]:
    """The teacher answers the run flushed to its content-addressed cache."""
    return {os.path.basename(f)[:-5] for f in glob.glob(f"{cfg.run_dir}/teacher_cache/*/*.json")}


def _check_resume(served_before: collections.Counter, cached_before: set[str], served: collections.Counter,
                  n_calls: int, in_flight_bound: int) -> int:
    """After a kill and a re-run: every call answered once overall, except those whose paid answer the killed
    run never got to flush (in flight when its workers died, at most `in_flight_bound`); none that it flushed
    is asked again. Returns the number of repeated calls."""
    assert len(served) == n_calls
    assert set(served_before) >= cached_before  # the cache holds only what the server answered
    lost = set(served_before) - cached_before  # paid, never flushed: the only calls the re-run may repeat
    assert len(lost) <= in_flight_bound, f"{len(lost)} paid answers not flushed by the killed run"
    repeated = {k for k, c in served.items() if c > 1}
    assert not repeated & cached_before, f"{len(repeated & cached_before)} flushed answers asked again"
    assert repeated <= lost and all(c <= 2 for c in served.values())
    return sum(c - 1 for c in served.values())


def _wait_gone(procs: list, keep: tuple[str, ...] = (), timeout_s: float = 60) -> None:
    """Wait until the given (process, start time) pairs are gone, except those whose name is in `keep`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p, t in procs if _same_alive(p, t) and not any(k in _name(p) for k in keep)]
        if not alive:
            return
        time.sleep(0.2)


def _same_alive(proc, created: float) -> bool:
    import psutil

    try:
        return proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(proc) -> str:
    import psutil

    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def test_sigkilled_cli_run_resumes_without_repeated_calls_or_leftover_ray(tmp_path):
    """kill -9 of the driver mid-run: the re-run pays again for no answer the killed run received, the dataset
    is complete, and the killed run's local Ray processes (which outlive it, unseen by `ray status`) are
    stopped by the re-run's start."""
    import psutil

    with TestOpenAIServer(responder=scripted_teacher, latency_s=0.3) as server:
        overrides = [f"storage={tmp_path}", f"synth.teacher.base_url={server.base_url}", "synth.num_legitimate=8",
                     "synth.num_illegitimate=8", "synth.replicas=1", "synth.batch_size=2",
                     "synth.teacher.max_concurrency=4", "synth.teacher.api_key_env=null", "ray.num_cpus=2"]
        cfg = load_config(None, overrides)
        seeds = phase1_rows(cfg.synth)
        n_calls = 3 * len(seeds)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        proc = subprocess.Popen(_synth_cmd(overrides), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while server.counts["ok"] < n_calls // 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        killed = [(p, p.create_time()) for p in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Its workers die with its raylet soon after; the Ray agents stay (until the next start stops them).
        _wait_gone(killed, keep=("DashboardAgent", "RuntimeEnvAgent"))
        wait_server_idle(server)
        served_before, cached_before = _served_keys(server), _cached_keys(cfg)
        assert 0 < len(served_before) < n_calls, "the kill must land mid-run"
        left = [_name(p).strip() for p, t in killed if _same_alive(p, t)]
        result = subprocess.run(_synth_cmd(overrides), cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stderr[-3000:]
        served = _served_keys(server)
    repeated = _check_resume(served_before, cached_before, served, n_calls, in_flight_bound=4)
    print(f"\nkilled after {len(served_before)}/{n_calls} paid calls ({len(cached_before)} flushed); "
          f"{repeated} repeated; {len(left)} of its {len(killed)} processes outlived it: {left}")
    # No process of the killed run's cluster is left (same pid and start time: not a reused pid).
    alive = [_name(p).strip() for p, t in killed if _same_alive(p, t)]
    assert not alive, alive
    # The dataset is complete: every seed, each with its 1 + n_prompt triplets, none twice.
    data = pd.concat([rows(cfg.dataset_dir, "train"), rows(cfg.dataset_dir, "test")])
    assert set(zip(data["compound_id"], data["form"])) == {(s["compound_id"], s["form"]) for s in seeds}
    assert len(data) == len(seeds) * (1 + cfg.synth.n_prompt)
    assert not data.duplicated(["prompt", "chosen", "rejected", "compound_id", "form"]).any()


def test_embedded_default_teacher_with_tiny_model(ray_local, pipeline_config, tiny_model_path):
    from libra_ray.endpoints import open_endpoint
    from libra_ray.synth import run

    cfg = pipeline_config.model_copy(deep=True)
    for key, value in {"num_legitimate": 3, "num_illegitimate": 3, "n_prompt": 1, "n_chosen": 1, "n_rejected": 1,
                       "replicas": 1}.items():
        setattr(cfg.synth, key, value)
    cfg.synth.teacher.max_tokens = 32
    cfg.synth.teacher.max_malformed_retries = 0
    assert cfg.synth.teacher.base_url is None
    summary = run(cfg, open_endpoint=open_endpoint)
    # The tiny model's text is nonsense: answers are malformed and dropped, the seed triplets remain.
    assert summary["teacher_requests"] == 3 * len(phase1_rows(cfg.synth)) and summary["train_rows"] > 0 and summary["test_rows"] > 0
    card = json.loads(open(f"{cfg.dataset_dir}/card.json").read())
    assert card["teacher"]["endpoint"] == "embedded local server" and card["teacher"]["this_run"]["prompt_tokens"] > 0


def _default_sigint() -> None:
    """Child gets Python's normal Ctrl-C handling even when this runner ignores SIGINT (a shell's `cmd &`
    makes SIGINT ignored, and ignored signals survive exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
