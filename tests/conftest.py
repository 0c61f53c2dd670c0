"""Shared fixtures. Everything runs on this CPU machine: a real local Ray cluster, the tiny model.

Shared helpers and fakes (paths, free ports, prompt and train-set writers, scripted Serve engines, process
and polling helpers) live in `libra_ray.testing`, importable from any directory and from Ray workers: import
them from there, never from this file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from libra_ray.testing import CACHE

# e2e tests may take minutes (Ray + DeepSpeed/vLLM/Serve start-up on 2 CPUs); the fast suite's limit is
# `timeout` in pyproject.toml.
E2E_TIMEOUT_S = 1200

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(CACHE / "torch_extensions"))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("e2e") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(E2E_TIMEOUT_S))


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The default tiny model, built once and cached across test sessions."""
    from libra_ray.tiny import ensure_tiny_model

    return ensure_tiny_model(CACHE)


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray cluster (2 CPUs) for one test module; always shut down."""
    import ray

    from libra_ray.runtime import init_local_ray

    if ray.is_initialized():
        ray.shutdown()
    init_local_ray(num_cpus=2, include_dashboard=False, namespace="libra_ray_tests",
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    try:
        yield ray
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()


@pytest.fixture
def pipeline_config(tmp_path):
    """A PipelineConfig writing under tmp_path and reusing the shared tiny-model cache."""
    from libra_ray.config import load_config

    return load_config(None, [f"storage={tmp_path / 'runs'}", f"cache_dir={CACHE}"])
