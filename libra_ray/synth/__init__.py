"""Stage 1, synth: balanced seed -> LibraChemQA-style (prompt, chosen, rejected) triplets on Ray Data."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig
    from libra_ray.llm.endpoint import EndpointOpener


def run(cfg: "PipelineConfig", *, open_endpoint: "EndpointOpener") -> dict:
    """Build {dataset_dir}/train, test and the dataset card with the configured teacher, reached through
    `open_endpoint` (`libra_ray.endpoints.open_endpoint`: it starts the embedded local server when
    `synth.teacher.base_url` is None). Call inside `libra_ray.runtime.ray_session`."""
    from libra_ray.synth.pipeline import build_dataset

    with open_endpoint(cfg.synth.teacher, cfg) as base_url:
        return build_dataset(cfg, base_url)


def load_dpo_dataset(dataset_dir: str, split: str = "train", conversational: bool = False):
    from libra_ray.synth.pipeline import load_dpo_dataset as _load

    return _load(dataset_dir, split, conversational)


__all__ = ["run", "load_dpo_dataset"]
