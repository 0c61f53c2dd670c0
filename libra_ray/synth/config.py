"""Config of stage 1, synthesis: balanced seed -> LibraChemQA-style triplets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from libra_ray._config_base import StrictModel
from libra_ray.llm.config import EndpointConfig
from libra_ray.policy.jailbreaks import FAMILIES, check_names

# Trained against by default under attack_augment; the rest (fiction, educational, prefix_injection,
# payload_splitting, leetspeak) stay held out: each seen family has an unseen relative.
ATTACK_TRAIN_FAMILIES = ("roleplay", "hypothetical", "refusal_suppression", "base64")


class SynthConfig(StrictModel):
    """Stage 1: a balanced seed of compounds, paraphrased by a teacher on Ray Data actors, into triplets."""

    _renamed = {"concurrency": "replicas", "worker_num_cpus": "num_cpus"}

    seeds_csv: str | None = Field(default=None, description="seed catalogue CSV with the shipped catalogue's columns "
                                  "(null = the shipped libra_ray/seeds/catalogue.csv)")
    num_legitimate: int = Field(default=24, ge=0, description="legitimate seed compounds; the seed ratio is exactly "
                                "num_legitimate:num_illegitimate")
    num_illegitimate: int = Field(default=24, ge=0, description="illegitimate seed compounds")
    forms: list[Literal["TEXT", "SMILES"]] = Field(default_factory=lambda: ["TEXT", "SMILES"], min_length=1,
                                                   description="surface forms of each seed: compound name (TEXT) "
                                                   "and/or SMILES")
    n_prompt: int = Field(default=5, ge=1, le=50, description="paraphrases per seed request (published 5); the "
                          "seed text is kept as item #0")
    n_chosen: int = Field(default=5, ge=1, le=50, description="paraphrases of the chosen response (published 5)")
    n_rejected: int = Field(default=5, ge=1, le=50, description="paraphrases of the rejected response (published 5)")
    combination: Literal["paired", "product"] = Field(
        default="paired", description="paired: triplet i = (prompt[i], chosen[i], rejected[i]), cycling the shorter "
        "lists -> max(P, C, R) per seed; product: every prompt x chosen x rejected -> P*C*R per seed")
    test_fraction: float = Field(default=0.2, ge=0, lt=1, description="fraction of compounds (per class) held out "
                                 "for the test split; split by compound, never by prompt")
    seed: int = Field(default=0, description="random seed of seed sampling and the train/test split")
    teacher: EndpointConfig = Field(default_factory=EndpointConfig, description="the teacher that paraphrases "
                                    "(any OpenAI-compatible endpoint)")
    prompt_version: Literal["v1"] = Field(default="v1", description="version of the teacher's paraphrase prompts")
    replicas: int = Field(default=2, ge=1, description="teacher workers (Ray Data actors), each with its own client")
    num_cpus: float = Field(default=0.25, gt=0, description="CPU share per teacher worker: they mostly wait on "
                            "HTTP, and a full CPU each deadlocks small clusters")
    batch_size: int = Field(default=8, ge=1, description="seeds per Ray Data batch of a teacher worker")
    near_duplicate_jaccard: float | None = Field(default=None, gt=0, le=1, description="also drop a paraphrase "
                                                 "whose word-trigram Jaccard to an earlier one is >= this (null = off)")
    semantic_dedup_threshold: float | None = Field(
        default=None, gt=0, le=1,
        description="drop a paraphrase whose sentence-embedding cosine to an earlier one of the same list is >= this "
                    "(None = off; 0.95 removes near-verbatim restatements but keeps real rewordings, see "
                    "libra_ray/synth/dedup.py). Off by default: it loads the embedding model in every teacher actor")
    gate_judge: EndpointConfig | None = Field(
        default=None,
        description="optional second safety check: an LLM judge asked (prompt actionable_v1, cached) whether each "
                    "paraphrase of an illegitimate seed is actionable; drops counted apart from the rule gate. "
                    "None = off; base_url null = the teacher's endpoint (same keys as synth.teacher)")
    attack_augment: bool = Field(default=False, description="add jailbreak-wrapped prompts to the train triplets "
                                 "(wrappers of synth.attack_train_families only; the others stay unseen, so the "
                                 "bench can compare seen vs unseen wrappers); test prompts are never wrapped")
    attack_train_families: list[str] = Field(
        default_factory=lambda: list(ATTACK_TRAIN_FAMILIES),
        description="wrapper families used in training when attack_augment is on, from: " + ", ".join(FAMILIES))
    attack_per_seed: int = Field(default=2, ge=1, le=50, description="wrapped triplets added per train seed "
                                 "(attack_augment): a seeded wrapper of the trained families around one of the "
                                 "seed's paraphrased prompts, with the seed's chosen and rejected answers")
    rows_per_shard: int = Field(default=5000, ge=1, description="max rows per Parquet file")

    @field_validator("attack_train_families")
    @classmethod
    def _known_families(cls, names: list[str]) -> list[str]:
        names = check_names(list(dict.fromkeys(names)), families=True)
        if len(names) == len(FAMILIES):
            raise ValueError("attack_train_families must leave at least one family unseen (held out)")
        return names

    @model_validator(mode="after")
    def _some_seeds(self) -> "SynthConfig":
        if self.num_legitimate + self.num_illegitimate == 0:
            raise ValueError("num_legitimate + num_illegitimate must be at least 1")
        if len(set(self.forms)) != len(self.forms):
            raise ValueError("forms must not repeat")
        return self
