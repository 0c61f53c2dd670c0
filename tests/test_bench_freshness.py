"""No stale results: a stored answer is reused only while prompt, weights, engine and sampling are the same.

The engine pipeline is replaced by a counting fake (no Ray): what is tested is which rows get
(re)generated and which stored rows are read back. The real engine runs in the e2e test at the end.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libra_ray.bench import generate as gen
from libra_ray.bench import store
from libra_ray.bench.fingerprint import generation_fingerprint, weights_fingerprint


def _prompts(path, n=6) -> str:
    rows = [{"prompt": f"Tell me about compound {i}.", "compound_id": f"c{i}", "name": f"compound {i}",
             "class": "illegitimate" if i % 2 else "legitimate", "category": "x", "form": "TEXT"} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _model_folder(path, weights: bytes = b"weights-v1"):
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(weights)
    return path


class FakePipeline:
    """Stands in for the Ray Data engine pipeline: answers each row, counting what it was asked."""

    def __init__(self):
        self.calls = 0
        self.rows = 0

    def __call__(self, todo, cfg, model, base_url):
        self.calls += 1
        self.rows += todo.num_rows
        n = self.calls
        yield todo.append_column("raw_text", pa.array([f"answer run {n}"] * todo.num_rows)).append_column(
            "answer", pa.array([f"answer run {n}"] * todo.num_rows)).append_column(
            "completion_tokens", pa.array([3] * todo.num_rows, pa.int64()))


@pytest.fixture
def setup(tmp_path, monkeypatch):
    from libra_ray.config import load_config

    fake = FakePipeline()
    monkeypatch.setattr(gen, "_generated_blocks", fake)
    folder = _model_folder(tmp_path / "ckpt")
    prompts = _prompts(tmp_path / "p.parquet")

    def cfg(*overrides):
        return load_config(None, [f"storage={tmp_path / 'runs'}", f"bench.prompts={prompts}",
                                  f"bench.models=[{{name: m, engine: transformers, path: '{folder}'}}]", *overrides])

    return cfg, fake, folder


def _answers(cfg):
    return sorted(gen.read_generations(cfg, "m")["answer"].to_pylist())


def test_same_everything_reuses(setup):
    cfg, fake, _ = setup
    c = cfg()
    assert gen.generate(c, c.bench.models[0])["generated"] == 6
    again = gen.generate(c, c.bench.models[0])
    assert again["generated"] == 0 and again["resumed"] == 6 and again["stale"] == 0 and fake.rows == 6
    assert _answers(c) == ["answer run 1"] * 6


def test_new_weights_under_the_same_name_regenerate(setup):
    cfg, fake, folder = setup
    c = cfg()
    gen.generate(c, c.bench.models[0])
    _model_folder(folder, b"weights-v2")  # a new checkpoint written over the old one
    out = gen.generate(c, c.bench.models[0])
    assert out["generated"] == 6 and out["stale"] == 6 and out["resumed"] == 0
    assert _answers(c) == ["answer run 2"] * 6  # the old answers are never read back


@pytest.mark.parametrize("override", ["bench.temperature=0.7", "bench.top_p=0.9", "bench.seed=1",
                                      "bench.max_tokens=32", "bench.system_prompt=Be brief.",
                                      "bench.max_model_len=512"])
def test_changed_sampling_regenerates(setup, override):
    cfg, fake, _ = setup
    c = cfg()
    gen.generate(c, c.bench.models[0])
    changed = cfg(override)
    out = gen.generate(changed, changed.bench.models[0])
    assert out["generated"] == 6 and out["stale"] == 6
    assert _answers(changed) == ["answer run 2"] * 6
    # Back to the first settings: its rows are still there, nothing to generate.
    assert gen.generate(c, c.bench.models[0])["generated"] == 0 and _answers(c) == ["answer run 1"] * 6


def test_new_prompt_and_partial_resume(setup, tmp_path):
    cfg, fake, _ = setup
    c = cfg("bench.max_prompts=4")
    gen.generate(c, c.bench.models[0])
    out = gen.generate(cfg(), cfg().bench.models[0])
    assert out["generated"] == 2 and out["resumed"] == 4 and out["stale"] == 0


def test_rows_from_before_generation_keys_are_regenerated(setup):
    cfg, fake, _ = setup
    c = cfg()
    prompts = gen.load_benchmark_prompts(c)
    old = prompts.append_column("answer", pa.array(["old"] * prompts.num_rows))  # no gen_key column
    store.write_shard(gen.generations_dir(c, "m"), old)
    out = gen.generate(c, c.bench.models[0])
    assert out["stale"] == 6 and out["generated"] == 6 and _answers(c) == ["answer run 1"] * 6


def test_fingerprints(tmp_path):
    from libra_ray.config import load_config

    folder = _model_folder(tmp_path / "w")
    a = weights_fingerprint(str(folder))
    assert a == weights_fingerprint(str(folder)) and a["n_files"] == 2
    (folder / "model.safetensors").write_bytes(b"weights-v1!")
    assert weights_fingerprint(str(folder))["files"] != a["files"]
    hub = weights_fingerprint("some-org/some-model-not-cached")
    assert hub == {"hub_id": "some-org/some-model-not-cached", "revision": None}

    def fp(*o):
        c = load_config(None, [f"storage={tmp_path}", *o])
        return generation_fingerprint(c, c.bench.models[0])["hash"]

    api = "bench.models=[{name: a, engine: openai, endpoint: {base_url: 'http://h:1/v1', model: %s}}]"
    assert fp(api % "x") == fp(api % "x") != fp(api % "y")
    assert fp(api % "x") != fp(api.replace("h:1", "h:2") % "x")
    local = "bench.models=[{name: a, engine: %s, path: '" + str(folder) + "'}]"
    assert fp(local % "vllm") != fp(local % "transformers")


@pytest.mark.e2e
def test_real_engine_regenerates_after_a_new_checkpoint(ray_local, tmp_path, tiny_model_path):
    """The tiny model on the transformers engine: new weights in the same folder -> new answers."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from libra_ray.config import load_config

    from libra_ray.testing import CACHE

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_model_path, folder)
    cfg = load_config(None, [f"storage={tmp_path / 'runs'}", f"cache_dir={CACHE}",
                             f"bench.prompts={_prompts(tmp_path / 'p.parquet', 8)}", "bench.max_tokens=8",
                             "bench.max_model_len=256", "bench.batch_size=8",
                             f"bench.models=[{{name: m, engine: transformers, path: '{folder}'}}]"])
    model = cfg.bench.models[0]
    assert gen.generate(cfg, model)["generated"] == 8
    first = gen.read_generations(cfg, "m").to_pylist()
    assert gen.generate(cfg, model)["generated"] == 0
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    torch.manual_seed(1)
    save_file({k: torch.randn_like(v) if v.is_floating_point() else v for k, v in tensors.items()}, str(weights),
              metadata={"format": "pt"})
    out = gen.generate(cfg, model)
    assert out["stale"] == 8 and out["generated"] == 8
    second = gen.read_generations(cfg, "m").to_pylist()
    assert {r["gen_key"] for r in first}.isdisjoint(r["gen_key"] for r in second)
    assert [r["raw_text"] for r in first] != [r["raw_text"] for r in second]
    assert len(os.listdir(gen.generations_dir(cfg, "m"))) >= 2


def test_new_decoding_version_regenerates(setup, monkeypatch):
    """Answers made by an older decoding (stop set, padding, sampling) under the same model are stale."""
    import libra_ray.engines as engines

    cfg, fake, _ = setup
    c = cfg()
    gen.generate(c, c.bench.models[0])
    monkeypatch.setattr(engines, "DECODING_VERSION", engines.DECODING_VERSION + 1)
    out = gen.generate(c, c.bench.models[0])
    assert out["generated"] == 6 and out["stale"] == 6
