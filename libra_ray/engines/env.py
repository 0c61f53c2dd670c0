"""Process environment for the engines: the one place vLLM's CPU settings are chosen."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
from collections.abc import Iterator


def vllm_env(kv_cache_gib: int = 1) -> dict[str, str]:
    """Environment variables vLLM needs here (CPU build: a small KV cache, no OpenMP thread pinning).

    Harmless on GPU (the CUDA build ignores both). Also passed as a Ray runtime_env to remote workers.
    """
    return {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def apply_vllm_env(kv_cache_gib: int = 1) -> None:
    """Set `vllm_env` in this process before vLLM is imported (values the user exported win)."""
    for key, value in vllm_env(kv_cache_gib).items():
        os.environ.setdefault(key, value)


# The Ray `runtime_env` of an actor that runs vLLM (bench's Ray Data actors). Ray's graceful actor exit
# SIGKILLs the actor's direct children (`kill_child_processes_on_worker_exit`) before `__ray_shutdown__` and
# atexit hooks run: the multiprocessing resource tracker and vLLM's EngineCore died first; vLLM's worker (a
# grandchild) survived, cleaned up its shared memory and semaphores, and unregistered them with a freshly
# relaunched tracker that had never seen them (`KeyError: '/psm_...'`, `'/loky-...'` tracebacks), while
# EngineCore's segments stayed in /dev/shm. With it off for this actor, `VLLMEngine.shutdown` (atexit) stops
# vLLM in order while the tracker lives; Ray's per-worker process-group cleanup still kills what is left.
VLLM_ACTOR_RUNTIME_ENV = {"env_vars": {"RAY_kill_child_processes_on_worker_exit": "false"}}


def _memory_handlers() -> list[logging.handlers.MemoryHandler]:
    loggers = [logging.getLogger(), *(lg for lg in logging.getLogger().manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    return [h for lg in loggers for h in lg.handlers if isinstance(h, logging.handlers.MemoryHandler)]


@contextlib.contextmanager
def log_handlers_kept() -> Iterator[None]:
    """Start a vLLM engine without losing this process's buffered log handlers.

    vLLM configures its logger with `logging.config.dictConfig` when an engine is built, and dictConfig closes
    every handler in the process. A closed `MemoryHandler` has no target: it still takes every record and
    never lets one go. In a Ray Serve replica that is Serve's request-log handler, so the replica kept each
    request's log records (~3 KB per request, measured) and its log file got nothing after the engine started.
    The targets are put back here; a closed file handler reopens by itself on the next record."""
    targets = [(h, h.target) for h in _memory_handlers()]
    try:
        yield
    finally:
        for handler, target in targets:
            if handler.target is None and target is not None:
                handler.setTarget(target)
