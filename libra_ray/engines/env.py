"""Process environment for the engines: the one place vLLM's CPU settings are chosen."""

from __future__ import annotations

import os


def vllm_env(kv_cache_gib: int = 1) -> dict[str, str]:
    """Environment variables vLLM needs here (CPU build: a small KV cache, no OpenMP thread pinning).

    Harmless on GPU (the CUDA build ignores both). Also passed as a Ray runtime_env to remote workers.
    """
    return {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def apply_vllm_env(kv_cache_gib: int = 1) -> None:
    """Set `vllm_env` in this process before vLLM is imported (values the user exported win)."""
    for key, value in vllm_env(kv_cache_gib).items():
        os.environ.setdefault(key, value)
