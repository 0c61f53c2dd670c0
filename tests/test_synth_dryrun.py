"""`libra-ray synth --dry-run`: counts, teacher calls, tokens and cost from the pipeline's own request
builder, for every shipped config, with nothing started (no Ray, no teacher, no server)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from libra_ray.cli import main
from libra_ray.config import load_config
from libra_ray.synth.dryrun import synth_plan
from libra_ray.synth.pipeline import phase1_rows, teacher_requests
from libra_ray.synth.prices import teacher_prices

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted(p for p in (REPO / "jobs").glob("*.yaml"))
# Configs the shipped catalogue can already sample (full_scale needs the expanded catalogue).
RUNNABLE = [p for p in JOBS if p.name != "full_scale.yaml"]


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.name)
def test_dry_run_every_shipped_config(path, capsys):
    cfg = load_config(path)
    assert main(["synth", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    s = cfg.synth
    seeds = len(phase1_rows(s))  # TEXT-only compounds (mixtures, polymers) give no SMILES seed
    assert f"seeds: {seeds} = ({s.num_legitimate} legitimate + {s.num_illegitimate} illegitimate compounds)" in out
    assert f"{3 * seeds} calls" in out
    assert "by category:" in out and "cost: ~$" in out


def test_dry_run_full_scale_samples_632_632(capsys):
    assert main(["synth", "--config", str(REPO / "jobs" / "full_scale.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = phase1_rows(load_config(REPO / "jobs" / "full_scale.yaml").synth)
    smiles = sum(r["form"] == "SMILES" for r in rows)
    assert f"seeds: {len(rows)} = (632 legitimate + 632 illegitimate compounds) x 2 forms TEXT/SMILES" in out
    assert f"({2528 - len(rows)} TEXT-only compounds have no SMILES seed)" in out
    assert f"by form:     SMILES {smiles}, TEXT 1264" in out and smiles > 1200


def test_full_scale_teacher_at_the_scale_the_catalogue_allows():
    """full_scale's teacher (gpt-4o, 5-5-5, max_tokens 1024) priced from the table; counts from the builder."""
    cfg = load_config(REPO / "jobs" / "full_scale.yaml", ["synth.num_legitimate=300", "synth.num_illegitimate=300"])
    plan = synth_plan(cfg)
    rows = phase1_rows(cfg.synth)
    n = len(rows)  # 1200 less one per TEXT-only compound sampled (no SMILES seed)
    assert plan["seeds"] == n and 1150 < n <= 1200
    assert sum(plan["by_class"].values()) == n and plan["by_form"]["TEXT"] == 600
    assert plan["teacher"]["calls"] == sum(len(teacher_requests(r, cfg.synth)) for r in rows) == 3 * n
    assert plan["tokens"]["completion_max"] == 3 * n * 1024
    assert 0 < plan["tokens"]["completion_expected"] < plan["tokens"]["completion_max"]
    assert plan["cost_usd"]["prices"] == "price table (gpt-4o)"
    assert 0 < plan["cost_usd"]["expected"] < plan["cost_usd"]["max"]
    assert plan["split_compounds"]["train"] + plan["split_compounds"]["test"] == 600


def test_dry_run_too_many_compounds_is_one_line_exit_2(capsys):
    assert main(["synth", "--dry-run", "--set", "synth.num_illegitimate=100000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_illegitimate=100000" in err


def test_price_override_from_config_wins():
    cfg = load_config(None, ["synth.teacher.model=gpt-4o", "synth.teacher.price_prompt_per_m=1",
                             "synth.teacher.price_completion_per_m=2"])
    assert teacher_prices(cfg.synth.teacher) == (1, 2, "config")
    assert teacher_prices(load_config(None, ["synth.teacher.model=gpt-4o-mini-2024-07-18"]).synth.teacher)[:2] == (0.15, 0.60)
    assert teacher_prices(load_config(None, ["synth.teacher.model=some-model"]).synth.teacher)[2].startswith("unknown model")
    plan = synth_plan(cfg)
    assert plan["cost_usd"]["expected"] == round((plan["tokens"]["prompt"] * 1 + plan["tokens"]["completion_expected"] * 2) / 1e6, 2)


@pytest.mark.parametrize("command", ["synth", "run"])
def test_dry_run_starts_nothing(command):
    """In a fresh interpreter: Ray is never imported (so no cluster, Serve or Ray Data), nor the embedded
    teacher server; no thread or child process is left; and it takes a fraction of a second of work."""
    code = (
        "import sys, threading, multiprocessing\n"
        "from libra_ray.cli import main\n"
        f"rc = main([{command!r}, '--config', {str(REPO / 'jobs' / 'quickstart.yaml')!r}, '--dry-run'])\n"
        "mods = [m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'libra_ray.llm.endpoint', "
        "'libra_ray.llm.testserver', 'libra_ray.serve.app', 'libra_ray.serve.server', 'libra_ray.endpoints', 'libra_ray.serve.engines', 'vllm', 'uvicorn', 'fastapi'))]\n"
        "print('RESULT', rc, mods, threading.active_count(), len(multiprocessing.active_children()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    result = [line for line in out.stdout.splitlines() if line.startswith("RESULT")][0]
    assert result == "RESULT 0 [] 1 0", result
    assert "nothing started" in out.stdout


def test_plan_is_json_able():
    json.dumps(synth_plan(load_config(None)))


def test_dry_run_counts_the_gate_judge_when_configured(capsys):
    cfg = load_config(None, ["synth.gate_judge.model=gpt-4o-mini"])
    plan = synth_plan(cfg)
    s = cfg.synth
    illegitimate_seeds = plan["by_class"]["illegitimate"]
    assert plan["gate_judge"]["calls_at_most"] == illegitimate_seeds * (s.n_prompt + s.n_chosen + s.n_rejected)
    assert plan["gate_judge"]["prices"] == "price table (gpt-4o-mini)"
    assert synth_plan(load_config(None))["gate_judge"] is None
