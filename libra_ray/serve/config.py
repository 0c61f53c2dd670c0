"""Config of stage 4, serving: the policy and the judge in one OpenAI-compatible Serve app."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from libra_ray._config_base import StrictModel
from libra_ray.engines.identity import DType, device_of, resolve_dtype
from libra_ray.engines.vllm_engine import check_engine_kwargs
from libra_ray.policy.judge_prompts import RefusalJudgeId
from libra_ray.policy.rules import RuleName


class AutoscalingConfig(StrictModel):
    """Serve autoscaling of one engine deployment (replicas scale on ongoing requests per replica)."""

    min_replicas: int = Field(default=1, ge=0, description="fewest replicas; 0 = scale to zero when idle")
    max_replicas: int = Field(default=2, ge=1, description="most replicas")
    initial_replicas: int | None = Field(default=None, ge=0, description="replicas at start (null = min_replicas, "
                                         "or 1 when min_replicas is 0)")
    # Serve LLM's default is 1e9, which never scales: always set explicitly.
    target_ongoing_requests: float = Field(default=2.0, gt=0, description="ongoing requests per replica the "
                                           "autoscaler aims for")
    upscale_delay_s: float = Field(default=2.0, ge=0, description="seconds of high load before adding replicas")
    downscale_delay_s: float = Field(default=10.0, ge=0, description="seconds of low load before removing replicas")
    metrics_interval_s: float = Field(default=1.0, gt=0, description="how often replicas report their load")
    look_back_period_s: float = Field(default=5.0, gt=0, description="window the load is averaged over")

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

    _renamed = {"vllm_kv_cache_gib": "kv_cache_gib", "vllm_enforce_eager": "enforce_eager", "vllm_dtype": "dtype",
                "torch_threads": "num_cpus"}

    name: str = Field(description="the served model name (the request's model field)")
    path: str = Field(default="tiny", description="the weights: trained (this run's model), tiny, tiny-pretrained, "
                      "a hub id or a local folder")
    engine: Literal["vllm", "transformers"] = Field(default="transformers", description="vllm (AsyncLLM, continuous "
                                                    "batching) or transformers (starts in seconds on CPUs)")
    num_cpus: float = Field(default=0.5, gt=0, description="CPUs per replica (transformers: its torch threads, "
                            "at least 1)")
    num_gpus: float = Field(default=0, ge=0, description="GPUs per replica")
    max_model_len: int = Field(default=1024, ge=64, description="context length (prompt + answer tokens)")
    max_tokens_limit: int = Field(default=512, ge=1, description="largest max_tokens a request may ask for")
    max_ongoing_requests: int = Field(default=16, ge=1, description="per replica; more queue in the router")
    max_batch_size: int = Field(default=8, ge=1, description="transformers: non-streaming requests batched together")
    batch_wait_timeout_s: float = Field(default=0.01, ge=0, description="transformers: how long a batch waits to "
                                        "fill")
    kv_cache_gib: int = Field(default=1, ge=1, description="vllm: VLLM_CPU_KVCACHE_SPACE for the CPU build")
    enforce_eager: bool = Field(default=True, description="vllm: enforce_eager, no compilation/CUDA graphs (fast "
                                "start; false for throughput on GPUs)")
    dtype: DType = Field(default="auto", description="weight dtype of either engine: auto = bfloat16 on GPUs (num_gpus "
                         "> 0), float32 on CPUs, the rule bench.dtype follows, so serve decodes as bench measured")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="vllm: extra vLLM engine arguments "
                                          "(AsyncEngineArgs), merged over ours (max_model_len, enforce_eager, "
                                          "gpu_memory_utilization, tensor_parallel_size, seed; model and dtype "
                                          "are refused: set path, dtype), e.g. {max_num_seqs: 64}")
    vllm_server: Literal["ray_serve_llm", "libra"] = Field(
        default="ray_serve_llm",
        description="engine 'vllm' only: the deployment that runs vLLM. 'ray_serve_llm' = Ray Serve LLM's "
                    "LLMServer (ray.serve.llm) behind our ingress; 'libra' = our ModelServer with vLLM's AsyncLLM")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig, description="Serve autoscaling of "
                                           "this model's replicas (Serve's own field names)")

    @property
    def resolved_dtype(self) -> str:
        """The dtype the engine loads (`engines.identity.resolve_dtype` on this replica's device)."""
        return resolve_dtype(self.dtype, device_of(self.num_gpus))

    @model_validator(mode="after")
    def _engine_kwargs_for_vllm(self) -> "ServedModelConfig":
        check_engine_kwargs(self.engine_kwargs, self.engine)
        return self

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not name or not all(c.isalnum() or c in "-_.:/" for c in name):
            raise ValueError("must be non-empty: letters, digits, '-', '_', '.', ':' or '/' only")
        return name


class IngressConfig(StrictModel):
    """The OpenAI-compatible ingress deployment (routing, auth, guard; no model)."""

    replicas: int = Field(default=1, ge=1, description="ingress replicas")
    num_cpus: float = Field(default=0.25, gt=0, description="CPUs per ingress replica")


class ServeConfig(StrictModel):
    """Stage 4: the policy and the judge in one OpenAI-compatible Serve app."""

    _renamed = {"ingress_num_cpus": "ingress.num_cpus", "ingress_replicas": "ingress.replicas"}

    policy: ServedModelConfig = Field(default_factory=lambda: ServedModelConfig(name="policy", path="trained"),
                                      description="the served policy (default: this run's trained model)")
    judge: ServedModelConfig = Field(default_factory=lambda: ServedModelConfig(name="judge", path="tiny"),
                                     description="the served judge (guard mode asks it)")
    host: str = Field(default="127.0.0.1", description="HTTP host (0.0.0.0 = every interface)")
    port: int = Field(default=8000, ge=0, le=65535, description="0 = a free port")
    route_prefix: str = Field(default="/", description="URL prefix of the app")
    app_name: str = Field(default="libra_ray", description="Serve application name")
    ingress: IngressConfig = Field(default_factory=IngressConfig, description="the ingress deployment")
    api_keys_env: str | None = Field(default=None, description="env var holding accepted API keys, comma-separated "
                                     "(null and no api_keys_file = an open endpoint, fine on 127.0.0.1)")
    api_keys_file: str | None = Field(default=None, description="secret file with one accepted API key per line")
    guard: Literal["off", "flag", "block"] = Field(default="off", description="the judge screens the policy's answers "
                                                   "with the benchmark's judge prompt + rule: flag adds a libra_guard "
                                                   "verdict, block replaces a flagged answer")
    guard_prompt: RefusalJudgeId = Field(default="synthesis_route_v1", description="the guard's judge prompt (a "
                                         "refusal judge id, as bench.judge_prompts)")
    guard_rule: RuleName = Field(default="paper", description="the guard's refusal rule (as bench.rule): an answer "
                                 "the rule sees as a refusal is never flagged")
    guard_fail_closed: bool = Field(default=True, description="block mode: also block answers the judge left unjudged")
    guard_models: list[str] = Field(default_factory=lambda: ["policy"], description="served names screened")
    guard_refusal: str = Field(default="I can't help with that request.", description="block mode: the answer that "
                               "replaces a blocked one")
    max_request_bytes: int = Field(default=1_000_000, ge=1024, description="largest request body accepted (413 "
                                   "beyond); once every served model's prompt bound is known, a body larger than "
                                   "any request whose prompt fits every served model is also a 413, from its "
                                   "declared size")
    body_timeout_s: float = Field(default=5.0, gt=0, description="seconds a client has to send the whole request "
                                  "body (408 beyond): a truncated or stalled upload does not hold its connection")
    health_timeout_s: float = Field(default=5.0, gt=0, description="seconds each model has to answer the readiness "
                                    "probe of GET /health (503 when any does not)")
    access_log: bool = Field(default=True, description="per-request access log lines of every replica (off for the "
                             "embedded local endpoint, whose thousands of calls would bury progress bars)")

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
