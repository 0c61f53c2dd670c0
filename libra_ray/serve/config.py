"""Config of stage 4, serving: the policy and the judge in one OpenAI-compatible Serve app."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from libra_ray._config_base import StrictModel


class AutoscalingConfig(StrictModel):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    # Serve LLM's default is 1e9, which never scales: always set explicitly.
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=2.0, ge=0)
    downscale_delay_s: float = Field(default=10.0, ge=0)


class ServedModelConfig(StrictModel):
    """One served model. `path` "trained" = this run's trained model; "tiny" = the tiny model."""

    name: str
    path: str = "tiny"
    engine: Literal["vllm", "transformers"] = "transformers"
    num_cpus: float = Field(default=0.5, gt=0)
    num_gpus: float = Field(default=0, ge=0)
    max_model_len: int = Field(default=1024, ge=64)
    max_tokens_limit: int = Field(default=512, ge=1)
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)


class ServeConfig(StrictModel):
    policy: ServedModelConfig = Field(default_factory=lambda: ServedModelConfig(name="policy", path="trained"))
    judge: ServedModelConfig = Field(default_factory=lambda: ServedModelConfig(name="judge", path="tiny"))
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    route_prefix: str = "/"
    # Optional API-key auth: keys from this env var (comma-separated) and/or a secret file.
    api_keys_env: str | None = None
    api_keys_file: str | None = None
    guard: Literal["off", "flag", "block"] = "off"
