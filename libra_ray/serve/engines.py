"""Serve's view of the shared engines (`libra_ray.engines`): building one from a served-model spec and
turning an OpenAI request body into `GenParams`. All decoding logic lives in `libra_ray.engines`.

- transformers: Serve batches non-streaming requests (`@serve.batch`); one left-padded `generate` per
  batch, each request with its own sampling parameters and seed.
- vLLM: `AsyncLLM` (continuous batching, paged KV cache) in the replica, one `SamplingParams` per request.
"""

from __future__ import annotations

from libra_ray.engines import GenParams, RequestError, check_prompt_chars, truncate_at_stop
from libra_ray.engines.transformers_engine import TransformersEngine
from libra_ray.engines.vllm_engine import VLLMEngine


def make_engine(spec):
    """The engine for one `ServedModelConfig` (vLLM in its async mode)."""
    if spec.engine == "vllm":
        return VLLMEngine(spec.path, max_model_len=spec.max_model_len, mode="async", kv_cache_gib=spec.kv_cache_gib,
                          enforce_eager=spec.enforce_eager, dtype=spec.resolved_dtype,
                          engine_kwargs=spec.engine_kwargs)
    return TransformersEngine(spec.path, max_model_len=spec.max_model_len, num_threads=max(1, int(spec.num_cpus)),
                              dtype=spec.resolved_dtype)  # as bench


def served_identity(spec) -> dict:
    """What a served model is (path resolved): its weights' fingerprint (the benchmark's, `weights_fingerprint`),
    the dtype its engine loads and the engine; logged at start and returned by `GET /v1/models[/{id}]`."""
    from libra_ray.engines.identity import weights_fingerprint

    engine = spec.engine if spec.engine != "vllm" else f"vllm ({spec.vllm_server})"
    return {"path": spec.path, "weights": weights_fingerprint(spec.path), "dtype": spec.resolved_dtype,
            "engine": engine}


def params_from_request(req: dict, limit: int) -> GenParams:
    """GenParams from an OpenAI request body, with the served model's max_tokens limit enforced."""
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens") or min(256, limit)
    if not isinstance(max_tokens, bool) and isinstance(max_tokens, int) and max_tokens > limit:
        raise RequestError(f"max_tokens {max_tokens} exceeds this model's limit of {limit}",
                           "max_tokens_too_large", "max_tokens")
    stop = req.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    temperature = req.get("temperature")
    top_p = req.get("top_p")
    return GenParams(max_tokens=max_tokens, temperature=1.0 if temperature is None else temperature,
                     top_p=1.0 if top_p is None else top_p, stop=stop, seed=req.get("seed")).check()


__all__ = ["GenParams", "RequestError", "TransformersEngine", "VLLMEngine", "check_prompt_chars", "make_engine",
           "params_from_request", "served_identity", "truncate_at_stop"]
