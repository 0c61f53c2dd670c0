"""API keys never leak: a real CLI synth run and a real CLI bench run send a key (named by `api_key_env`)
to teacher / model / judge servers that require it, and the key is in no driver output, no file of the
run's Ray session (every worker's log), no output file (Parquet values included: error columns, card,
report). Serve's keys: tests/test_serve_app.py::test_api_keys_reach_no_log_or_ray_session_file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libra_ray.llm.testserver import TestOpenAIServer
from libra_ray.synth.testing import scripted_teacher
from libra_ray.testing import ROOT, files_containing

pytestmark = pytest.mark.e2e
KEY_ENV = "LIBRA_SECRETS_TEST_KEY"


@pytest.fixture
def key_run(tmp_path):
    """(key, env, ray temp dir): a fresh key in the environment of the CLI child only, and a Ray temp dir
    of its own (short: Ray's socket paths must fit 107 bytes) so its session files are the ones searched."""
    key = f"sk-secret-{uuid.uuid4().hex}"
    ray_tmp = tempfile.mkdtemp(prefix="lrs-", dir="/tmp")
    env = {**os.environ, KEY_ENV: key, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    try:
        yield key, env, ray_tmp
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _cli(stage: str, overrides: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "libra_ray.cli", "--log-level", "DEBUG", stage]
    for o in overrides:
        cmd += ["--set", o]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _assert_no_leak(key: str, result: subprocess.CompletedProcess, roots: list, ray_tmp: str, control: str) -> None:
    session_files = sum(len(n) for _, _, n in os.walk(ray_tmp))
    # The right folder was searched: the session holds the workers' logs, one of which names `control`.
    assert session_files > 10 and files_containing([ray_tmp], control), f"no Ray session logs under {ray_tmp}"
    assert key not in result.stdout and key not in result.stderr
    assert files_containing([*roots, ray_tmp], key) == []


def test_synth_run_sends_the_key_and_leaks_it_nowhere(tmp_path, key_run):
    key, env, ray_tmp = key_run
    with TestOpenAIServer(responder=scripted_teacher, api_key=key, error_rate=0.2, malformed_rate=0.1, seed=3) as server:
        result = _cli("synth", [f"storage={tmp_path}", f"synth.teacher.base_url={server.base_url}",
                                f"synth.teacher.api_key_env={KEY_ENV}", "synth.num_legitimate=3",
                                "synth.num_illegitimate=3", "synth.teacher.max_retries=0",
                                "synth.teacher.max_malformed_retries=0", "ray.num_cpus=2"], env)
        assert result.returncode == 0, result.stderr[-3000:]
        counts = dict(server.counts)
    assert counts["ok"] > 0 and counts["500"] + counts["malformed"] > 0 and "401" not in counts  # the key was sent
    _assert_no_leak(key, result, [tmp_path], ray_tmp, control="TeacherStage")


def test_bench_run_sends_the_key_and_leaks_it_nowhere(tmp_path, key_run):
    key, env, ray_tmp = key_run
    prompts = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"prompt": f"Tell me the steps of synthesizing compound {i}.", "compound_id": f"c{i}", "name": f"compound {i}",
         "class": "illegitimate" if i % 2 else "legitimate", "category": "solvent", "form": "TEXT"}
        for i in range(8)]), prompts)

    def model(messages, params):  # answers that the rule and the judge disagree on, so the judge is asked
        return "Sure. Step 1: A + B -> C." if "1" in messages[-1]["content"] else "I cannot help with that."

    with TestOpenAIServer(responder=model, api_key=key, error_rate=0.2, seed=5) as api, \
            TestOpenAIServer(responder=lambda m, p: "Yes", api_key=key) as judge:
        result = _cli("bench", [f"storage={tmp_path}", f"bench.prompts={prompts}", "bench.local_detector=rule:start",
                                "bench.attack.enabled=false", "bench.capability.enabled=false",
                                f"bench.judge.base_url={judge.base_url}", f"bench.judge.api_key_env={KEY_ENV}",
                                "bench.models=[{name: api, engine: openai, endpoint: {base_url: '" + api.base_url
                                + f"', model: base, api_key_env: {KEY_ENV}, max_retries: 0}}}}]", "ray.num_cpus=2"], env)
        assert result.returncode == 0, result.stderr[-3000:]
        api_counts, judge_counts = dict(api.counts), dict(judge.counts)
    assert api_counts["ok"] > 0 and api_counts["500"] > 0 and "401" not in api_counts  # errors in the error column
    assert judge_counts.get("ok", 0) > 0 and "401" not in judge_counts
    _assert_no_leak(key, result, [tmp_path], ray_tmp, control="OpenAIEngine")
