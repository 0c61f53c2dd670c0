"""Config of stage 1, synthesis: balanced seed -> LibraChemQA-style triplets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from libra_ray._config_base import StrictModel
from libra_ray.llm.config import EndpointConfig


class SynthConfig(StrictModel):
    # Seed catalogue: None = the shipped catalogue; or a path to a user CSV with the same columns.
    seeds_csv: str | None = None
    # Seed counts per class; the ratio legitimate:illegitimate is exactly num_legitimate:num_illegitimate.
    num_legitimate: int = Field(default=24, ge=0)
    num_illegitimate: int = Field(default=24, ge=0)
    forms: list[Literal["TEXT", "SMILES"]] = Field(default_factory=lambda: ["TEXT", "SMILES"], min_length=1)
    # Rephrasings per seed: prompt, chosen, rejected (published 5-5-5). The seed text is kept as item #0.
    n_prompt: int = Field(default=5, ge=1, le=50)
    n_chosen: int = Field(default=5, ge=1, le=50)
    n_rejected: int = Field(default=5, ge=1, le=50)
    # paired: triplet i = (prompt[i], chosen[i], rejected[i]) cycling the shorter lists -> max(P, C, R) per seed;
    # product: every prompt x chosen x rejected -> P * C * R per seed (P, C, R include the seed text).
    combination: Literal["paired", "product"] = "paired"
    # Fraction of compounds (per class) held out for test; the split is by compound, never by prompt.
    test_fraction: float = Field(default=0.2, ge=0, lt=1)
    seed: int = 0
    teacher: EndpointConfig = Field(default_factory=EndpointConfig)
    prompt_version: Literal["v1"] = "v1"
    # Ray Data parallelism: concurrent teacher workers (actors) and seeds per batch.
    concurrency: int = Field(default=2, ge=1)
    batch_size: int = Field(default=8, ge=1)
    # CPU share of each teacher actor: they mostly wait on HTTP, and a full CPU each deadlocks small clusters.
    worker_num_cpus: float = Field(default=0.25, gt=0)
    # Near-duplicate removal beyond exact/normalised text: word-trigram Jaccard >= this drops a paraphrase.
    near_duplicate_jaccard: float | None = Field(default=None, gt=0, le=1)
    semantic_dedup_threshold: float | None = Field(
        default=None, gt=0, le=1,
        description="drop a paraphrase whose sentence-embedding cosine to an earlier one of the same list is >= this "
                    "(None = off; 0.95 removes near-verbatim restatements but keeps real rewordings, see "
                    "libra_ray/synth/dedup.py). Off by default: it loads the embedding model in every teacher actor")
    gate_judge: EndpointConfig | None = Field(
        default=None,
        description="optional second safety check: an LLM judge asked (prompt actionable_v1, cached) whether each "
                    "paraphrase of an illegitimate seed is actionable; drops counted apart from the rule gate. "
                    "None = off; base_url null = the teacher's endpoint")
    rows_per_shard: int = Field(default=5000, ge=1, description="max rows per Parquet file")

    @model_validator(mode="after")
    def _some_seeds(self) -> "SynthConfig":
        if self.num_legitimate + self.num_illegitimate == 0:
            raise ValueError("num_legitimate + num_illegitimate must be at least 1")
        if len(set(self.forms)) != len(self.forms):
            raise ValueError("forms must not repeat")
        return self
