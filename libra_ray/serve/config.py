"""Config of stage 4, serving: the policy and the judge in one OpenAI-compatible Serve app."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from libra_ray._config_base import StrictModel


class AutoscalingConfig(StrictModel):
    """Serve autoscaling of one engine deployment (replicas scale on ongoing requests per replica)."""

    min_replicas: int = Field(default=1, ge=0, description="0 = scale to zero when idle")
    max_replicas: int = Field(default=2, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    # Serve LLM's default is 1e9, which never scales: always set explicitly.
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=2.0, ge=0)
    downscale_delay_s: float = Field(default=10.0, ge=0)
    metrics_interval_s: float = Field(default=1.0, gt=0)
    look_back_period_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} < min_replicas {self.min_replicas}")
        return self

    def to_serve(self) -> dict:
        """The dict `@serve.deployment(autoscaling_config=...)` and the Serve YAML accept."""
        out = self.model_dump(exclude_none=True)
        if self.min_replicas == 0 and self.initial_replicas is None:
            out["initial_replicas"] = 1  # ready to answer at start; scales to zero when idle
        return out


class ServedModelConfig(StrictModel):
    """One served model. `path` "trained" = this run's trained model; "tiny" = the tiny model.

    `engine` "vllm" = vLLM's AsyncLLM in the replica (the production engine); "transformers" = a
    light `generate` engine that starts in seconds (tests, the embedded default on 2 CPUs).
    """

    name: str
    path: str = "tiny"
    engine: Literal["vllm", "transformers"] = "transformers"
    num_cpus: float = Field(default=0.5, gt=0)
    num_gpus: float = Field(default=0, ge=0)
    max_model_len: int = Field(default=1024, ge=64)
    max_tokens_limit: int = Field(default=512, ge=1, description="largest max_tokens a request may ask for")
    max_ongoing_requests: int = Field(default=16, ge=1, description="per replica; more queue in the router")
    # Dynamic batching of non-streaming requests (transformers engine).
    max_batch_size: int = Field(default=8, ge=1)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)
    torch_threads: int = Field(default=1, ge=1, description="intra-op threads per replica (transformers)")
    # vLLM on CPU (see ENVIRONMENT.md): KV cache GiB and eager mode for a fast start.
    vllm_kv_cache_gib: int = Field(default=1, ge=1)
    vllm_enforce_eager: bool = True
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    vllm_server: Literal["ray_serve_llm", "libra"] = Field(
        default="ray_serve_llm",
        description="engine 'vllm' only: the deployment that runs vLLM. 'ray_serve_llm' = Ray Serve LLM's "
                    "LLMServer (ray.serve.llm) behind our ingress; 'libra' = our ModelServer with vLLM's AsyncLLM")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not name or not all(c.isalnum() or c in "-_.:/" for c in name):
            raise ValueError("must be non-empty: letters, digits, '-', '_', '.', ':' or '/' only")
        return name


class ServeConfig(StrictModel):
    policy: ServedModelConfig = Field(default_factory=lambda: ServedModelConfig(name="policy", path="trained"))
    judge: ServedModelConfig = Field(default_factory=lambda: ServedModelConfig(name="judge", path="tiny"))
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535, description="0 = a free port")
    route_prefix: str = "/"
    app_name: str = "libra_ray"
    ingress_num_cpus: float = Field(default=0.25, gt=0)
    ingress_replicas: int = Field(default=1, ge=1)
    # Optional API-key auth: keys from this env var (comma-separated) and/or a secret file
    # (one key per line). Unset both for an open endpoint (fine on 127.0.0.1).
    api_keys_env: str | None = None
    api_keys_file: str | None = None
    # Guard: the judge screens the policy's answer with the benchmark's judge prompt + rule.
    # "flag" adds a `libra_guard` verdict to the response; "block" replaces a flagged answer.
    guard: Literal["off", "flag", "block"] = "off"
    guard_prompt: str = "synthesis_route_v1"
    guard_rule: Literal["paper", "start", "both"] = "paper"
    guard_fail_closed: bool = Field(default=True, description="block mode: also block answers the judge left unjudged")
    guard_models: list[str] = Field(default_factory=lambda: ["policy"], description="served names screened")
    guard_refusal: str = "I can't help with that request."
    max_request_bytes: int = Field(default=1_000_000, ge=1024)
    # Per-request access log lines of every replica (off for the embedded local endpoint: a synth run
    # makes thousands of calls and the lines would bury its progress bar).
    access_log: bool = True

    @field_validator("policy", "judge", mode="before")
    @classmethod
    def _default_names(cls, value, info):
        # `serve.policy.path=...` alone must not require restating the served name.
        if isinstance(value, dict) and "name" not in value:
            value = {"name": info.field_name, **value}
        return value

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        if not prefix.startswith("/"):
            raise ValueError("must start with '/'")
        return prefix

    @model_validator(mode="after")
    def _distinct_names(self) -> "ServeConfig":
        if self.policy.name == self.judge.name:
            raise ValueError(f"policy and judge need distinct names (both {self.policy.name!r})")
        return self
