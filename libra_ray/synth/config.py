"""Config of stage 1, synthesis: balanced seed -> LibraChemQA-style triplets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from libra_ray._config_base import StrictModel
from libra_ray.llm.config import EndpointConfig


class SynthConfig(StrictModel):
    # Seed catalogue: None = the shipped catalogue; or a path to a user CSV with the same columns.
    seeds_csv: str | None = None
    # Seed counts per class; the ratio legitimate:illegitimate is exactly num_legitimate:num_illegitimate.
    num_legitimate: int = Field(default=24, ge=0)
    num_illegitimate: int = Field(default=24, ge=0)
    forms: list[Literal["TEXT", "SMILES"]] = Field(default_factory=lambda: ["TEXT", "SMILES"], min_length=1)
    # Rephrasings per seed: prompt, chosen, rejected (published 5-5-5).
    n_prompt: int = Field(default=5, ge=1)
    n_chosen: int = Field(default=5, ge=1)
    n_rejected: int = Field(default=5, ge=1)
    combination: Literal["paired", "product"] = "paired"
    test_fraction: float = Field(default=0.2, ge=0, lt=1)
    seed: int = 0
    teacher: EndpointConfig = Field(default_factory=EndpointConfig)
    prompt_version: str = "v1"
    # Ray Data parallelism: concurrent teacher workers (actors) and rows per batch.
    concurrency: int = Field(default=2, ge=1)
    batch_size: int = Field(default=8, ge=1)
    dedup_embeddings: bool = False
