"""Config of stage 3, benchmark: generation by engines at scale, hybrid rule + judge evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from libra_ray._config_base import StrictModel
from libra_ray.llm.config import EndpointConfig


class BenchModelConfig(StrictModel):
    """One model under test. `path` "trained" = this run's trained model; "tiny" = the tiny model."""

    name: str
    engine: Literal["vllm", "ray_data_llm", "transformers", "openai"] = "vllm"
    path: str = "trained"
    # For engine "openai": the hosted endpoint (key from env by name).
    endpoint: EndpointConfig | None = None


class BenchConfig(StrictModel):
    models: list[BenchModelConfig] = Field(
        default_factory=lambda: [BenchModelConfig(name="aligned", path="trained")], min_length=1
    )
    # Benchmark prompts: None = the held-out test split of this run's dataset.
    prompts: str | None = None
    num_replicas: int = Field(default=1, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    batch_size: int = Field(default=16, ge=1)
    max_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_model_len: int = Field(default=1024, ge=64)
    rule: Literal["paper", "start", "both"] = "paper"
    judge: EndpointConfig = Field(default_factory=lambda: EndpointConfig(temperature=0.0, max_tokens=16))
    judge_prompts: list[str] = Field(default_factory=lambda: ["synthesis_route_v1"])
    confidence: float = Field(default=0.95, gt=0, lt=1)
