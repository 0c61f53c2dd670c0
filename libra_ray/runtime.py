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
    # Ray Train reroutes print() through its logger: every line twice, plus dill's bytecode dumps.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


def resolve_address(cfg: "PipelineConfig") -> str | None:
    return cfg.ray.address or os.environ.get("RAY_ADDRESS") or None


def init_local_ray(attempts: int = 3, **init_kwargs) -> None:
    """Start an embedded local Ray cluster, retrying a slow start.

    Ray gives a new raylet a fixed 30 s to register with the GCS; on a saturated small machine (CI,
    a laptop running tests) that window is sometimes missed. A retry from scratch then succeeds.
    """
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(**init_kwargs)
            return
        except Exception as err:  # Ray raises a bare Exception for the registration timeout
            if "timed out during startup" not in str(err) or attempt == attempts:
                raise
            log.warning("local Ray start timed out (attempt %d/%d); retrying", attempt, attempts)
            ray.shutdown()
            _kill_orphaned_ray_children()


def _kill_orphaned_ray_children() -> None:
    """A failed `ray.init` leaves its GCS/raylet children running without a handle: stop them."""
    import psutil

    def is_ray(proc: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return "ray" in " ".join(proc.cmdline())
        return False

    children = [p for p in psutil.Process().children(recursive=True) if is_ray(p)]
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


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
        init_local_ray(
            num_cpus=cfg.ray.num_cpus,
            num_gpus=cfg.ray.num_gpus,
            include_dashboard=cfg.ray.include_dashboard,
            **kwargs,
        )
    try:
        yield
    finally:
        ray.shutdown()
