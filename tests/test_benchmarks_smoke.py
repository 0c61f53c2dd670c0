"""Every benchmark script still runs: `run_all --smoke` runs bench_synth, bench_generate, bench_train and
bench_serve at tiny sizes (once, for the module), and each must exit 0, print its machine/date/load stamp
and its ratio table, and write its result file into the test's folder, never into benchmarks/results.
Smoke mode runs one vLLM path (bench_generate's vLLM direct, the reference row), one ZeRO mode (bench_train's
ZeRO-2 on Ray Train) and the Ray Serve LLM path (bench_serve), so a broken row fails here.
Smoke numbers mean nothing; what is checked is that the performance claims cannot silently rot."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks.common import RESULTS
from libra_ray.testing import CACHE, ROOT

BENCHMARKS = ["synth", "generate", "train", "serve"]

# A ratio-table row per benchmark: its reference row (ratio 1.00) and at least one compared row.
RATIO_ROWS = {
    "synth": [r"^\| 8 \| 40 \| [\d.]+ \(\d\.\d\d\) \|"],  # in flight | ideal req/s | ChatClient req/s (ratio)
    "generate": [r"^\| vllm_direct \|.*\| 1\.00x \|", r"^\| transformers_direct \|.*\| \d+\.\d\dx \|",
                 r"^\| transformers_ray_data_e2e \|.*\| \d+\.\d\dx \|"],
    "train": [r"^\| plain TRL \(1 process\) \|.*\| 1\.00x \| 1\.00x \|$", r"^\| ray train, zero2 \|.*\| \d+\.\d\dx \|$"],
    "serve": [r"^\| vllm-api-server \| 1 \|.*\| 1\.00x \|$", r"^\| serve-transformers \| 1 \|.*\| \d+\.\d\dx \|$",
              r"^\| ray-serve-llm \| 1 \|.*\| \d+\.\d\dx \|$"],
}
STAMP = re.compile(r"^\[bench_(\w+)\] (start|end): machine: .+ CPUs.+; date: \d{4}-\d\d-\d\d \d\d:\d\d UTC; "
                   r"load average: [\d.]+, [\d.]+, [\d.]+$", re.M)


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RAY_USAGE_STATS_ENABLED": "0", "TORCH_EXTENSIONS_DIR": str(CACHE / "torch_extensions")}
    env.pop("RAY_ADDRESS", None)
    env.pop("LIBRA_RAY_BENCH_SMOKE", None)
    return env


def _digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*")) if p.is_file()}


def _exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # the scripts' guard exits; run_all returns its code
        return exc.code


@pytest.mark.parametrize("script, out_flag", [("bench_synth", "--out"), ("bench_generate", "--out"),
                                              ("bench_train", "--out"), ("bench_serve", "--out"),
                                              ("run_all", "--out-dir")])
def test_smoke_refuses_to_write_into_results(script, out_flag, capsys, monkeypatch):
    """Fast: the guard answers before anything starts (exit 2, one line), with --smoke or the env variable."""
    import importlib

    main = importlib.import_module(f"benchmarks.{script}").main
    target = RESULTS if out_flag == "--out-dir" else RESULTS / "smoke.json"
    assert _exit_code(main, ["--smoke", out_flag, str(target)]) == 2
    err = capsys.readouterr().err
    assert "--smoke results never go into" in err and err.count("\n") == 1, err
    monkeypatch.setenv("LIBRA_RAY_BENCH_SMOKE", "1")
    assert _exit_code(main, [out_flag, str(target)]) == 2
    assert "--smoke results never go into" in capsys.readouterr().err
    assert not (RESULTS / "smoke.json").exists()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One `run_all --smoke` over every benchmark, output into a temporary folder."""
    out_dir = tmp_path_factory.mktemp("bench_smoke")
    before = _digest(RESULTS)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--smoke", "--out-dir", str(out_dir)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1500)
    sections = dict(re.findall(r"^## (\w+): (.*?)(?=^## \w+: |\Z)", proc.stdout, re.M | re.S))
    print("\n".join(re.findall(r"^\(\w+: \d+ s, exit -?\d+\)$", proc.stdout, re.M)))  # each benchmark's time
    yield {"proc": proc, "out_dir": out_dir, "sections": sections, "results_before": before}


@pytest.mark.e2e
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_in_smoke_mode(smoke_run, name):
    proc, out_dir = smoke_run["proc"], smoke_run["out_dir"]
    text = smoke_run["sections"].get(name)
    assert text is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"({name}: " in text and f"exit 0)" in text, text[-3000:] + proc.stderr[-3000:]
    stamps = [(b, when) for b, when in STAMP.findall(text)]
    assert (name, "start") in stamps and (name, "end") in stamps, text[-3000:]
    for pattern in RATIO_ROWS[name]:
        assert re.search(pattern, text, re.M), f"no row matching {pattern!r} in:\n{text[-3000:]}"
    result = json.loads((out_dir / f"{name}.json").read_text())
    assert result["smoke"] is True and result["stamp"]["machine"] and result["stamp"]["load_average"]
    md = (out_dir / f"{name}.md").read_text()  # run_all keeps the printed tables, stamped
    assert md.startswith(f"<!-- -m benchmarks.bench_{name} --smoke --out {out_dir / name}.json · ")
    assert "load average before the run" in md and "|---" in md


@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_run_all_smoke_leaves_benchmarks_results_alone(smoke_run):
    proc = smoke_run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert STAMP.search(proc.stdout) and "[bench_run_all] start: machine:" in proc.stdout
    assert _digest(RESULTS) == smoke_run["results_before"]
    assert sorted(p.name for p in smoke_run["out_dir"].iterdir()) == sorted(
        f"{n}.{ext}" for n in BENCHMARKS for ext in ("json", "md"))
