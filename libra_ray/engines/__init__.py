"""Generation engines shared by bench (Ray Data actors) and serve (Serve replicas).

    params.py               GenParams (one request's sampling settings, one greedy rule, seed range), RequestError
    base.py                 chat template, tokenisation, EOS set, padding, length checks, per-request batch isolation
    transformers_engine.py  TransformersEngine: batched left-padded `generate` with per-request sampling, streaming
    vllm_engine.py          VLLMEngine: offline `LLM` (mode="batch") or `AsyncLLM` (mode="async"), per-request SamplingParams
    env.py                  vLLM's CPU environment settings (VLLM_CPU_KVCACHE_SPACE, ...), set in one place

`bench/engines.py` and `serve/engines.py` are thin adapters over these classes. The heavy imports
(torch, transformers, vllm) happen when an engine is constructed, not on import.
"""

# Bump when decoding changes what an engine returns for the same model, prompt and settings (stop set,
# padding, sampling): bench's generation key includes it, so stored answers of older decoding regenerate.
DECODING_VERSION = 2

from libra_ray.engines.base import Engine, chat_messages, check_prompt_chars  # noqa: E402
from libra_ray.engines.env import apply_vllm_env, vllm_env  # noqa: E402
from libra_ray.engines.params import GREEDY_MAX_TEMPERATURE, GenParams, RequestError, truncate_at_stop  # noqa: E402


def __getattr__(name):  # lazy: importing the package must not import torch
    if name == "TransformersEngine":
        from libra_ray.engines.transformers_engine import TransformersEngine

        return TransformersEngine
    if name == "VLLMEngine":
        from libra_ray.engines.vllm_engine import VLLMEngine

        return VLLMEngine
    raise AttributeError(name)


__all__ = ["GREEDY_MAX_TEMPERATURE", "Engine", "GenParams", "RequestError", "TransformersEngine", "VLLMEngine",
           "apply_vllm_env", "chat_messages", "check_prompt_chars", "truncate_at_stop", "vllm_env"]
