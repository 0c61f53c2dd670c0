"""The one place that starts or joins Ray. Every stage calls `ray_session(cfg)`.

Resolution order: `cfg.ray.address`, then `RAY_ADDRESS`, then an embedded local cluster. Inside a
Ray Job (or a test that already called `ray.init`) the existing connection is reused and left open.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig

log = logging.getLogger(__name__)

# Quiet, deterministic workers: no tokenizer thread pools fighting over 2 cores, no hub calls.
WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


def resolve_address(cfg: "PipelineConfig") -> str | None:
    return cfg.ray.address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(cfg: "PipelineConfig") -> Iterator[None]:
    """Connect to Ray for the duration of a stage; shut down only what this call started."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = resolve_address(cfg)
    env_vars = {**WORKER_ENV, **cfg.ray.runtime_env.get("env_vars", {})}
    # The working tree must ship to remote nodes only when joining a cluster from outside a job.
    runtime_env = {**cfg.ray.runtime_env, "env_vars": env_vars}
    kwargs: dict = {"namespace": cfg.ray.namespace, "runtime_env": runtime_env, "log_to_driver": True}
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(
            num_cpus=cfg.ray.num_cpus,
            num_gpus=cfg.ray.num_gpus,
            include_dashboard=cfg.ray.include_dashboard,
            **kwargs,
        )
    try:
        yield
    finally:
        ray.shutdown()
