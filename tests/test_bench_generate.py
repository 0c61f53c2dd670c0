"""Generation on a real local Ray cluster with the transformers engine: per-row errors, crash + resume.

(The vLLM engines run in tests/test_bench_e2e.py, marked e2e: each vLLM start costs ~30-70 s here.)
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libra_ray.bench import generate as gen
from libra_ray.bench.engines import TransformersEngine
from libra_ray.bench.store import load_prompts, row_id
from libra_ray.testing import wait_for, write_bench_prompts


def write_prompts(path, n: int, long_prompt: bool = True) -> str:
    """A small benchmark split: triplet-style duplicates, both classes and forms, one over-long prompt."""
    return write_bench_prompts(path, n, duplicates=3, long_prompt=long_prompt)


def test_load_prompts_dedupes_and_validates(tmp_path):
    t = load_prompts(write_prompts(tmp_path / "p.parquet", 10))
    assert t.num_rows == 11 and len(set(t["id"].to_pylist())) == 11
    assert t["id"][0].as_py() == row_id(t["prompt"][0].as_py())
    pq.write_table(pa.table({"prompt": ["a"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="lack column"):
        load_prompts(str(tmp_path / "bad.parquet"))
    with pytest.raises(FileNotFoundError, match="libra-ray synth"):
        load_prompts(str(tmp_path / "missing"))


class CrashingEngine(TransformersEngine):
    """Fails the whole run (not one row) on its third batch, once the driver has persisted an earlier one:
    what a killed engine looks like to Ray Data."""

    calls = 0
    shards_dir = ""  # the generations folder, set by the test before the class ships to the actor

    def __call__(self, batch):
        type(self).calls += 1
        if type(self).calls == 3:
            # Crash once an earlier batch has reached the driver and been written (an event, not a fixed sleep).
            wait_for(lambda: os.path.isdir(self.shards_dir) and any(
                not f.startswith(".") for f in os.listdir(self.shards_dir)), 600, "a first shard", step=0.05)
            raise RuntimeError("simulated engine crash")
        return super().__call__(batch)


@pytest.fixture
def bench_cfg(tmp_path):
    from libra_ray.config import load_config

    from libra_ray.testing import CACHE

    path = write_prompts(tmp_path / "prompts.parquet", 30)
    return load_config(None, [f"storage={tmp_path / 'runs'}", f"cache_dir={CACHE}", f"bench.prompts={path}",
                              "bench.batch_size=8", "bench.max_tokens=8", "bench.max_model_len=256",
                              "bench.models=[{name: tiny_tf, engine: transformers, path: tiny}]"])


def test_generate_crash_then_resume(ray_local, bench_cfg, monkeypatch):
    import sys

    from ray import cloudpickle

    # The crashing engine lives in this test module, which Ray workers cannot import: ship it by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    model = bench_cfg.bench.models[0]
    CrashingEngine.shards_dir = gen.generations_dir(bench_cfg, model.name)
    real = gen._engine_args
    monkeypatch.setattr(gen, "_engine_args", lambda *a: (CrashingEngine, *real(*a)[1:]))
    with pytest.raises(Exception, match="simulated engine crash"):
        gen.generate(bench_cfg, model)
    out_dir = gen.generations_dir(bench_cfg, model.name)
    shards = sorted(f for f in os.listdir(out_dir) if not f.startswith("."))
    first = pq.read_table(os.path.join(out_dir, shards[0]))
    finished = {r for s in shards for r in pq.read_table(os.path.join(out_dir, s))["id"].to_pylist()}
    assert 0 < len(finished) < 31  # the crash kept what was done and lost the rest

    monkeypatch.setattr(gen, "_engine_args", real)
    summary = gen.generate(bench_cfg, model)
    assert summary["resumed"] == len(finished) and summary["generated"] == 31 - len(finished)
    assert pq.read_table(os.path.join(out_dir, shards[0])).equals(first)  # finished shards untouched
    table = gen.read_generations(bench_cfg, model.name)
    assert table.num_rows == 31 and len(set(table["id"].to_pylist())) == 31
    errors = [r for r in table.to_pylist() if r["error"]]
    assert len(errors) == 1 and errors[0]["error"].startswith("prompt too long")
    ok = [r for r in table.to_pylist() if not r["error"]]
    assert all(r["raw_text"] is not None and r["completion_tokens"] >= 1 for r in ok)
    # A third run has nothing left to do.
    assert gen.generate(bench_cfg, model)["generated"] == 0


def test_clear_errors_for_missing_inputs(tmp_path):
    from libra_ray.config import ConfigError, load_config

    cfg = load_config(None, [f"storage={tmp_path}", f"bench.prompts={tmp_path / 'nope.parquet'}"])
    with pytest.raises(ConfigError, match="bench.prompts: .*run `libra-ray synth` first"):
        gen.load_benchmark_prompts(cfg)
    with pytest.raises(ConfigError, match="trained model is not at .*libra-ray train"):
        gen._local_model(cfg, cfg.bench.models[0])
    with pytest.raises(ConfigError, match="engine 'openai' needs an endpoint"):
        load_config(None, ["bench.models=[{name: x, engine: openai}]"])
    with pytest.raises(ConfigError, match="bench.judge_prompts.0: Input should be .synthesis_route_v1."):
        load_config(None, ["bench.judge_prompts=[synthesis_route_v9]"])
    with pytest.raises(ConfigError, match="must be unique"):
        load_config(None, ["bench.models=[{name: a, path: tiny}, {name: a, path: tiny}]"])
