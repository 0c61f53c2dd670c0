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
                                 "synth.teacher.requests_per_minute=6000"])
        start = time.monotonic()
        summary = build_dataset(cfg, server.base_url, progress=False)
        elapsed = time.monotonic() - start
    train, test = rows(cfg.dataset_dir, "train"), rows(cfg.dataset_dir, "test")
    assert len(train) + len(test) >= 1000 and summary["seeds"] == len(phase1_rows(cfg.synth)) > 168  # 86 x 2 forms less TEXT-only
    assert not set(train["compound_id"]) & set(test["compound_id"])
    card = json.loads(open(f"{cfg.dataset_dir}/card.json").read())
    assert card["teacher"]["this_run"]["rate_limited"] > 0 and card["teacher"]["this_run"]["server_errors"] > 0
    # The cluster-wide budget held: 6000 rpm = 100/s (+ one second of burst).
    assert card["teacher"]["this_run"]["requests"] <= 100 * elapsed + 100
    print(f"\n1000-triplet build: {len(train) + len(test)} triplets, {elapsed:.1f} s, {card['teacher']['this_run']}")


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
        first = server.counts["ok"]
        assert 0 < first < 3 * n_seeds
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert result.returncode == 0, result.stderr[-3000:]
        served = collections.Counter(cache_key(e["params"]["model"], e["messages"],
                                               {k: v for k, v in e["params"].items() if k != "model"})
                                     for e in server.log if e["outcome"] == "ok")
    assert len(served) == 3 * n_seeds  # every call answered once overall ...
    repeated = sum(c - 1 for c in served.values())
    assert repeated <= 4  # ... except those in flight at the kill (max_concurrency), never the cached ones
    assert server.counts["ok"] - first <= 3 * n_seeds - first + repeated
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["synth"]["train_rows"] > 0


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
