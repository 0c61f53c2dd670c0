"""One decoding precision rule for bench and serve, both engines: `dtype` auto = bfloat16 on CUDA, float32 on
CPU; vLLM is always given the resolved dtype (its own `auto` loads bfloat16 on CPU); the report states it."""

from __future__ import annotations

import pytest

from libra_ray.config import ConfigError, load_config
from libra_ray.engines.identity import resolve_dtype

pytestmark = pytest.mark.filterwarnings("ignore:coroutine 'LLMServer.__del__' was never awaited:RuntimeWarning")


def test_the_rule():
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda") == resolve_dtype("auto", "cuda:1") == "bfloat16"
    assert resolve_dtype("float16", "cpu") == "float16" and resolve_dtype("float32", "cuda") == "float32"
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("fp8", "cpu")


@pytest.mark.parametrize("gpus, expected", [(0, "float32"), (1, "bfloat16")])
def test_serve_and_bench_resolve_alike_and_vllm_never_gets_auto(gpus, expected):
    from libra_ray.bench.fingerprint import model_dtype
    from libra_ray.serve.ray_llm import llm_config
    from libra_ray.serve.config import ServedModelConfig

    spec = ServedModelConfig(name="policy", path="/models/x", engine="vllm", num_gpus=gpus)
    assert spec.resolved_dtype == expected
    assert llm_config(spec).engine_kwargs["dtype"] == expected  # Ray Serve LLM path
    cfg = load_config(None, [f"bench.num_gpus={gpus}"])
    for model in cfg.bench.models:
        assert model_dtype(cfg, model) == expected


def test_bench_passes_the_resolved_dtype_to_every_local_engine_and_keys_on_it(tmp_path):
    from libra_ray.bench.fingerprint import generation_fingerprint
    from libra_ray.bench.generate import _engine_args

    models = "[{name: v, engine: vllm, path: org/m}, {name: t, engine: transformers, path: org/m}]"  # hub ids
    cfg = load_config(None, [f"bench.models={models}", f"storage={tmp_path}"])
    for model in cfg.bench.models:
        assert _engine_args(cfg, model, None)[1]["dtype"] == "float32"
    half = load_config(None, [f"bench.models={models}", "bench.dtype=bfloat16", f"storage={tmp_path}"])
    assert _engine_args(half, half.bench.models[0], None)[1]["dtype"] == "bfloat16"
    # Another precision is another generation: stored answers are not reused across it.
    assert generation_fingerprint(cfg, cfg.bench.models[0])["hash"] != \
        generation_fingerprint(half, half.bench.models[0])["hash"]


def test_engine_kwargs_may_not_set_the_dtype():
    with pytest.raises(ConfigError, match="set dtype instead"):
        load_config(None, ["serve.policy.engine=vllm", "serve.policy.engine_kwargs={dtype: bfloat16}"])
    with pytest.raises(ConfigError, match="set dtype instead"):
        load_config(None, ["bench.models=[{name: a, engine: vllm, engine_kwargs: {dtype: auto}}]"])


@pytest.mark.parametrize("dtype, expected", [("auto", "float32"), ("bfloat16", "bfloat16")])
def test_transformers_engine_loads_the_resolved_dtype(tiny_model_path, dtype, expected):
    import torch

    from libra_ray.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(tiny_model_path), max_model_len=128, dtype=dtype)
    assert engine.dtype == expected and next(engine.model.parameters()).dtype == getattr(torch, expected)
