"""Config of stage 3, benchmark: generation by engines at scale, hybrid rule + judge evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from libra_ray._config_base import StrictModel, folder_name
from libra_ray.llm.config import EndpointConfig
from libra_ray.seeds.catalogue import CLASSES

JUDGE_PROMPT_IDS = ("synthesis_route_v1", "refusal_3class_v1", "refusal_3class_v2", "harmful_v1", "utility_ref_v1")
# The judges whose label says refused-or-not (utility_ref scores quality instead).
REFUSAL_JUDGE_IDS = ("refusal_3class_v1", "refusal_3class_v2", "synthesis_route_v1", "harmful_v1")

class BenchModelConfig(StrictModel):
    """One model under test. `path` "trained" = this run's trained model; "tiny" = the tiny model.

    Engines: `vllm` (our vLLM actors on Ray Data), `ray_data_llm` (Ray's `ray.data.llm` vLLM
    processor), `transformers` (fallback `generate` actors), `openai` (a hosted or local
    OpenAI-compatible API given by `endpoint`; `path` is then unused).
    """

    name: str
    engine: Literal["vllm", "ray_data_llm", "transformers", "openai"] = "vllm"
    path: str = "trained"
    # For engine "openai": the hosted endpoint (key from env by name).
    endpoint: EndpointConfig | None = None

    _folder_name = field_validator("name")(folder_name)

    @model_validator(mode="after")
    def _endpoint_for_openai(self) -> "BenchModelConfig":
        if self.engine == "openai" and self.endpoint is None:
            raise ValueError("engine 'openai' needs an endpoint (base_url, model, api_key_env)")
        return self


# How `bench` labels refusals (`bench.detector`): the one place these schemes are declared.
DETECTOR_SCHEMES: dict[str, str] = {
    "cascade": "the local detector labels every answer; the LLM judge decides only rows below "
               "bench.judge_threshold or where the rule and the local detector disagree",
    "local": "the local detector alone (no judge call at all)",
    "paper": "the paper's scheme: refused = rule OR the synthesis-route judge, on every answer "
             "(for comparison with published numbers)",
}


class BenchConfig(StrictModel):
    models: list[BenchModelConfig] = Field(
        default_factory=lambda: [BenchModelConfig(name="aligned", path="trained")], min_length=1
    )
    # Benchmark prompts: None = the held-out test split of this run's dataset.
    prompts: str | None = Field(default=None, description="benchmark prompts: a Parquet file or folder, a CSV or a "
                                "JSONL file (None = this run's test split)")
    prompt_column: str = Field(default="prompt", description="column of bench.prompts holding the prompt text")
    class_column: str = Field(default="class", description="column holding the class (legitimate/illegitimate, "
                              "or values mapped by bench.class_values)")
    category_column: str | None = Field(default="category", description="column holding the category "
                                        "(None = every row 'uncategorised')")
    reference_column: str = Field(default="reference", description="optional column holding a reference answer "
                                  "(used by utility_ref_v1 when present)")
    class_values: dict[str, str] = Field(default_factory=dict, description="map raw class values to legitimate/"
                                         "illegitimate, e.g. {safe: legitimate, unsafe: illegitimate}")
    max_prompts: int | None = Field(default=None, ge=1, description="use only the first N distinct prompts")
    system_prompt: str | None = None
    # Generation scale: engine replicas (Ray actors), tensor parallel per replica, rows per batch.
    num_replicas: int = Field(default=1, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    batch_size: int = Field(default=16, ge=1)
    num_cpus_per_replica: float = Field(default=1.0, gt=0)
    num_gpus_per_replica: float = Field(default=0.0, ge=0)
    # vLLM knobs (CPU defaults that work on a small VM; raise gpu_memory_utilization on GPUs).
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)
    enforce_eager: bool = True
    kv_cache_gib: int = Field(default=1, ge=1, description="VLLM_CPU_KVCACHE_SPACE for the CPU build")
    max_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    max_model_len: int = Field(default=1024, ge=64)
    # Evaluation.
    rule: Literal["paper", "start", "both", "opening"] = "paper"
    judge: EndpointConfig = Field(default_factory=lambda: EndpointConfig(temperature=0.0, max_tokens=16))
    # Judge prompts to run; the first refusal judge (synthesis_route / refusal_3class) decides `refused`.
    judge_prompts: list[str] = Field(default_factory=lambda: ["synthesis_route_v1"])
    judge_max_attempts: int = Field(default=3, ge=1, description="tries per text while the reply is unparseable")
    judge_reasoning: bool = Field(default=True, description="also judge reasoning traces (leak rate)")
    use_judge: bool = Field(default=True, description="false = no judge endpoint (cascade: local labels; "
                            "paper: rule only)")
    confidence: float = Field(default=0.95, gt=0, lt=1)
    # Refusal labelling: which scheme, which local detector, when the judge is asked.
    detector: str = Field(default="cascade", description="refusal labelling scheme: " + "; ".join(
        f"{k} = {v}" for k, v in DETECTOR_SCHEMES.items()))
    local_detector: str = Field(default="default", description="the local detector of the cascade/local schemes "
                                "(a name for libra_ray.bench.detect.get_detector, e.g. default, classifier, rule:start)")
    judge_threshold: float = Field(default=0.8, ge=0, le=1, description="cascade: rows whose local confidence is "
                                   "below this go to the judge")

    @field_validator("judge_prompts")
    @classmethod
    def _known_prompts(cls, ids: list[str]) -> list[str]:
        unknown = [i for i in ids if i not in JUDGE_PROMPT_IDS]
        if unknown:
            raise ValueError(f"unknown judge prompt(s) {unknown}; known: {', '.join(JUDGE_PROMPT_IDS)}")
        return ids

    @field_validator("detector")
    @classmethod
    def _known_scheme(cls, name: str) -> str:
        if name not in DETECTOR_SCHEMES:
            raise ValueError(f"unknown detector scheme {name!r}; choose one of {', '.join(DETECTOR_SCHEMES)}")
        return name

    @field_validator("class_values", mode="before")
    @classmethod
    def _known_classes(cls, mapping: dict) -> dict[str, str]:
        # YAML turns 0/1/true keys into numbers and booleans; the file's values are compared as text.
        mapping = {str(k): v for k, v in (mapping or {}).items()}
        bad = {k: v for k, v in mapping.items() if v not in CLASSES}
        if bad:
            raise ValueError(f"class_values must map to {' or '.join(CLASSES)} (got {bad})")
        return mapping

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[BenchModelConfig]) -> list[BenchModelConfig]:
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique (got {names})")
        return models
