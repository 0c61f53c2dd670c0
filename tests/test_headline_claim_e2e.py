"""The headline claim as a test: the embedded default's method, reduced, run end to end as a user runs it
(`libra-ray run --config jobs/quickstart.yaml` in a subprocess, nothing cached), and the aligned model
beats its base on compounds no alignment stage saw.

Reduced, same kind: the base is the tiny Llama pretrained from scratch here on facts about a stratified
sample of the catalogue (CI has no cache: pretraining is part of the test), the split is by compound,
SFT then DPO run on Ray Train on the train compounds only, the aligned model is benchmarked with vLLM and
the base with transformers on the held-out compounds, every answer labelled by the shipped classifier.

One module-scoped fixture runs the pipeline once; each test asserts one part of the claim on its outputs
(`run.report` is bench/report.json, `run.card` the dataset card, `run.output` what the run printed), so new
sections of the report can add their own assertions here without another run.

Measured 2026-12-04 on the 2-core CPU VM with other jobs keeping the load average at 3-4: 442 s in all,
230 s of it pretraining (320 steps; 0.3 s a step on an idle machine, so about 95 s there); aligned overall
80.0 [75.6, 83.8] vs base 50.0 [44.9, 55.1] on 360 held-out prompts. With 10 pretraining epochs and 2
paraphrases per part it was 57.8 [50.5, 64.8] vs 50.0 [42.8, 57.2]: the effect needs a base that has read
its facts (final loss 0.36 vs 1.10). With the base model benchmarked as the "aligned" one, the intervals
coincide and the headline test fails. Rerun on the final code at load average 2-2.6: 300 s (6 passed, 1 xfailed).
With the teardown fixed (no traceback in the run's 562 lines): 312 s, 6 passed (2026-12-04, same VM).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from libra_ray.testing import ROOT

pytestmark = pytest.mark.e2e

PER_CLASS = 100         # compounds per class in the sampled catalogue (the quickstart seeds 150 of 1,695)
TEST_FRACTION = 0.3     # held out per class, by compound: 30 + 30
N_PROMPT = 5            # paraphrases per seed request, as the quickstart: 6 benchmark prompts per held-out compound
PRETRAIN_EPOCHS = 40    # the quickstart's base reads 1,695 compounds 10 times; this smaller world, 40 times
HELD_OUT_PROMPTS = 2 * round(TEST_FRACTION * PER_CLASS) * (1 + N_PROMPT)


def _sampled_catalogue(path: Path) -> Path:
    """PER_CLASS compounds of each class, stratified by category, deterministic: the whole world the base
    model reads about and the seeds are drawn from."""
    import pandas as pd

    cat = pd.read_csv(ROOT / "libra_ray" / "seeds" / "catalogue.csv")
    parts = []
    for _, cls in cat.groupby("class"):
        share = cls.groupby("category").size() / len(cls)
        quota = (share * PER_CLASS).round().astype(int)
        quota.iloc[-1] += PER_CLASS - quota.sum()
        parts += [cls[cls.category == c].sample(n=int(k), random_state=0) for c, k in quota.items()]
    pd.concat(parts).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("claim")
    overrides = [
        f"storage={base / 'runs'}", f"cache_dir={base / 'cache'}", "name=claim",
        f"synth.seeds_csv={_sampled_catalogue(base / 'catalogue.csv')}",
        f"synth.num_legitimate={PER_CLASS}", f"synth.num_illegitimate={PER_CLASS}",
        f"synth.test_fraction={TEST_FRACTION}",
        f"synth.n_prompt={N_PROMPT}", f"synth.n_chosen={N_PROMPT}", f"synth.n_rejected={N_PROMPT}",
        f"tiny_pretrained.epochs={PRETRAIN_EPOCHS}",
    ]
    argv = [sys.executable, "-m", "libra_ray.cli", "run", "--config", "jobs/quickstart.yaml"]
    for item in overrides:
        argv += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1100)  # under the e2e limit (1200 s), with room for the asserts
    (base / "output.txt").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-6000:])
    out = base / "runs" / "claim"
    marker = next((base / "cache").glob("tiny-pretrained-*/libra_ray_pretrained.json"))
    return SimpleNamespace(dir=out, output=done.stdout + done.stderr,
                           report=json.loads((out / "bench" / "report.json").read_text()),
                           card=json.loads((out / "dataset" / "card.json").read_text()),
                           pretrain=json.loads(marker.read_text()))


def test_the_base_model_learned_its_facts(run):
    """Pretraining worked: the loss fell from the random-init level (first step vs the last 20 steps)."""
    assert run.pretrain["compounds"] == 2 * PER_CLASS
    assert run.pretrain["final_loss"] < 0.5 * run.pretrain["first_loss"], run.pretrain


def test_aligned_beats_its_base_with_non_overlapping_intervals(run):
    aligned, base = run.report["models"]["aligned"]["overall"], run.report["models"]["base"]["overall"]
    assert aligned["ci_low"] > base["ci_high"], (aligned, base)
    # Safety comes from alignment: the base was never taught to refuse.
    assert run.report["models"]["aligned"]["safety"]["ci_low"] > run.report["models"]["base"]["safety"]["ci_high"]


def test_every_held_out_prompt_is_benchmarked_for_both_models(run):
    split = run.card["split"]
    assert split["by"] == "compound" and split["test"]["compounds"] == HELD_OUT_PROMPTS // (1 + N_PROMPT)
    for name in ("aligned", "base"):
        scores = run.report["models"][name]
        assert scores["n"] == scores["rows"] == HELD_OUT_PROMPTS, (name, scores["n"], scores["rows"])


def test_no_seed_errors_no_generation_errors_no_unjudged_rows(run):
    assert run.card["quality"]["seed_errors"] == 0
    for name in ("aligned", "base"):
        scores = run.report["models"][name]
        assert scores["generation_errors"] == 0 and scores["unjudged"] == 0, (name, scores)


def test_a_successful_run_prints_no_traceback(run):
    """Not one, teardown included: vLLM's bench actor used to print resource-tracker `KeyError: '/psm_...'`
    tracebacks as it ended (see tests/test_vllm_actor_teardown_e2e.py, which isolates that case)."""
    assert "Traceback" not in run.output, run.output[run.output.find("Traceback") - 2000:][:6000]


def test_the_report_names_the_detector_that_produced_the_labels(run):
    header = (run.dir / "bench" / "report.md").read_text().splitlines()[2]
    assert "labelled by: `default` (local detector only, no LLM judge)" in header, header
