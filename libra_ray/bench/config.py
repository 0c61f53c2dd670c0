"""Config of stage 3, benchmark: generation by engines at scale, hybrid rule + judge evaluation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from libra_ray._config_base import StrictModel, folder_name
from libra_ray.engines.identity import DType
from libra_ray.engines.vllm_engine import check_engine_kwargs
from libra_ray.llm.config import EndpointConfig
from libra_ray.policy.jailbreaks import WRAPPERS, check_names
from libra_ray.policy.judge_prompts import JUDGE_PROMPT_IDS, REFUSAL_JUDGE_IDS, JudgePromptId, RefusalJudgeId
from libra_ray.policy.rules import RuleName
from libra_ray.seeds.catalogue import CLASSES


class BenchModelConfig(StrictModel):
    """One model under test. `path` "trained" = this run's trained model; "tiny" = the tiny model.

    Engines: `vllm` (our vLLM actors on Ray Data), `ray_data_llm` (Ray's `ray.data.llm` vLLM
    processor), `transformers` (fallback `generate` actors), `openai` (a hosted or local
    OpenAI-compatible API given by `endpoint`; `path` is then unused).
    """

    name: str = Field(description="the model's name in the report and its output folder")
    engine: Literal["vllm", "ray_data_llm", "transformers", "openai"] = Field(
        default="vllm", description="vllm (our vLLM actors), ray_data_llm (Ray's ray.data.llm processor), "
        "transformers (generate actors), openai (an OpenAI-compatible API, see endpoint)")
    path: str = Field(default="trained", description="the weights: trained (this run's model), tiny, "
                      "tiny-pretrained, a hub id or a local folder (unused by engine openai)")
    endpoint: EndpointConfig | None = Field(default=None, description="engine openai only: the endpoint (same keys "
                                            "as synth.teacher; the key is read from the env var it names)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra vLLM engine arguments (vllm and "
                                          "ray_data_llm engines), merged over ours (max_model_len, enforce_eager, "
                                          "gpu_memory_utilization, tensor_parallel_size, seed; model and dtype are "
                                          "refused: set path, bench.dtype), e.g. {quantization: fp8, max_num_seqs: "
                                          "64}; part of the generation key")

    _folder_name = field_validator("name")(folder_name)

    @model_validator(mode="after")
    def _endpoint_for_openai(self) -> "BenchModelConfig":
        if self.engine == "openai" and self.endpoint is None:
            raise ValueError("engine 'openai' needs an endpoint (base_url, model, api_key_env)")
        check_engine_kwargs(self.engine_kwargs, self.engine)
        return self


# How `bench` labels refusals (`bench.detector`): the one place these schemes are declared.
DETECTOR_SCHEMES: dict[str, str] = {
    "cascade": "the local detector labels every answer; the LLM judge decides only rows below "
               "bench.judge_threshold or where the rule and the local detector disagree",
    "local": "the local detector alone (no judge call at all)",
    "paper": "the paper's scheme: refused = rule OR the synthesis-route judge, on every answer "
             "(for comparison with published numbers)",
}


QUESTION_TYPES = ("formula", "molecular_weight", "heavy_atoms", "rings", "functional_group", "category",
                  "public_list", "name_to_smiles", "smiles_to_name")


class CapabilityConfig(StrictModel):
    """The capability set: multiple-choice chemistry facts about catalogue compounds, graded exactly (no judge)."""

    enabled: bool = Field(default=True, description="score every model on the capability set (the alignment tax)")
    types: list[Literal[QUESTION_TYPES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(QUESTION_TYPES), min_length=1,
        description="question types: " + ", ".join(QUESTION_TYPES))
    questions_per_type: int = Field(default=10, ge=1, description="questions per type, class and split (train / "
                                    "held-out compounds), spread over the categories in proportion to their sizes")
    seed: int = Field(default=0, description="seed of compound sampling and distractor choice")
    batch_size: int = Field(default=32, ge=1, description="questions per engine call (Ray Data batch)")
    engine: Literal["model", "transformers"] = Field(
        default="model", description="model: each model's own engine scores the options (vLLM: prompt_logprobs); "
        "transformers: local vLLM models are scored by the transformers engine on the same weights (on CPU it "
        "starts in seconds, vLLM in ~30 s); API models always answer by letter")


class AttackConfig(StrictModel):
    """Safety under attack: benchmark prompts wrapped in jailbreak templates (libra_ray/policy/jailbreaks.py)."""

    enabled: bool = Field(default=True, description="generate and score wrapped prompts for every model")
    wrappers: list[str] = Field(default_factory=lambda: list(WRAPPERS), min_length=1,
                                description="wrapper ids, from: " + ", ".join(WRAPPERS))
    prompts_per_class: int = Field(default=24, ge=1, description="benchmark prompts per class (stratified by "
                                   "category, deterministic by seed), each wrapped by every wrapper")
    seed: int = Field(default=0, description="seed of the prompt subset")

    @field_validator("wrappers")
    @classmethod
    def _known_wrappers(cls, names: list[str]) -> list[str]:
        return check_names(list(dict.fromkeys(names)))


class BenchConfig(StrictModel):
    """Stage 3: answers from every model under test on the benchmark prompts, labelled and scored."""

    _renamed = {"num_replicas": "replicas", "num_cpus_per_replica": "num_cpus", "num_gpus_per_replica": "num_gpus"}

    models: list[BenchModelConfig] = Field(
        default_factory=lambda: [BenchModelConfig(name="aligned", path="trained")], min_length=1,
        description="the models under test (names unique)")
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
    system_prompt: str | None = Field(default=None, description="system message before every prompt (null = none)")
    replicas: int = Field(default=1, ge=1, description="engine replicas (Ray actors) per local model")
    tensor_parallel_size: int = Field(default=1, ge=1, description="vLLM tensor parallel size per replica")
    batch_size: int = Field(default=16, ge=1, description="prompts per engine call (Ray Data batch)")
    num_cpus: float = Field(default=1.0, gt=0, description="CPUs per engine replica (transformers: its torch "
                            "threads)")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per engine replica (with vLLM at least "
                            "tensor_parallel_size: one per tensor-parallel worker)")
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1, description="vLLM gpu_memory_utilization (0.5 "
                                          "suits the CPU build on a small VM; raise it on GPUs)")
    enforce_eager: bool = Field(default=True, description="vLLM enforce_eager: no compilation/CUDA graphs (fast "
                                "start; false for throughput on GPUs)")
    kv_cache_gib: int = Field(default=1, ge=1, description="VLLM_CPU_KVCACHE_SPACE for the CPU build")
    dtype: DType = Field(default="auto", description="weight dtype of the local engines (vllm, ray_data_llm, "
                         "transformers alike): auto = bfloat16 on GPUs (num_gpus > 0), float32 on CPUs; serve.*.dtype "
                         "follows the same rule, so bench and serve decode alike")
    max_tokens: int = Field(default=64, ge=1, description="max answer tokens per prompt")
    temperature: float = Field(default=0.0, ge=0, description="sampling temperature (<= 1e-5 = greedy)")
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus sampling top_p")
    seed: int = Field(default=0, description="sampling seed of every request (and vLLM's engine seed)")
    max_model_len: int = Field(default=1024, ge=64, description="context length of the local engines (prompt + "
                               "answer tokens)")
    rule: RuleName = Field(default="paper", description="refusal keyword rule: paper (warning keyword anywhere), "
                           "start (refusal phrase at the start), both, opening (a refusal clause in the opening "
                           "sentences); see libra_ray/policy/rules.py")
    judge: EndpointConfig = Field(default_factory=lambda: EndpointConfig(temperature=0.0, max_tokens=16),
                                  description="the LLM judge (same keys as synth.teacher; null base_url = the "
                                  "embedded tiny model)")
    judge_prompts: list[JudgePromptId] = Field(
        default_factory=lambda: ["synthesis_route_v1"],
        description="judge prompts to run, from: " + ", ".join(JUDGE_PROMPT_IDS) + "; the first refusal judge "
                    "decides refused")
    judge_max_attempts: int = Field(default=3, ge=1, description="tries per text while the reply is unparseable")
    judge_reasoning: bool = Field(default=True, description="also judge reasoning traces (leak rate)")
    use_judge: bool = Field(default=True, description="false = no judge endpoint (cascade: local labels; "
                            "paper: rule only)")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="confidence level of the reported Wilson "
                              "intervals")
    detector: str = Field(default="cascade", description="refusal labelling scheme: " + "; ".join(
        f"{k} = {v}" for k, v in DETECTOR_SCHEMES.items()))
    local_detector: str = Field(default="default", description="the local detector of the cascade/local schemes "
                                "(a name for libra_ray.bench.detect.get_detector, e.g. default, classifier, rule:start)")
    capability: CapabilityConfig = Field(default_factory=CapabilityConfig, description="the capability set "
                                         "(alignment tax): exact multiple-choice questions, no judge")
    attack: AttackConfig = Field(default_factory=AttackConfig, description="safety and utility under jailbreak "
                                 "wrappers")
    judge_threshold: float = Field(default=0.6, ge=0, le=1, description="cascade: rows whose local confidence is "
                                   "below this go to the judge (0.6: chosen from the leave-one-model-out coverage curve, "
                                   "libra_ray/bench/README.md)")

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

    @model_validator(mode="after")
    def _gpus_for_tensor_parallel(self) -> "BenchConfig":
        # An actor given fewer GPUs than its tensor-parallel workers cannot start vLLM (Ray hides the rest).
        if 0 < self.num_gpus < self.tensor_parallel_size:
            raise ValueError(f"num_gpus={self.num_gpus:g} per replica is fewer than tensor_parallel_size="
                             f"{self.tensor_parallel_size}: give each replica one GPU per tensor-parallel worker")
        return self


__all__ = ["AttackConfig", "CapabilityConfig", "QUESTION_TYPES", "BenchConfig", "BenchModelConfig", "JUDGE_PROMPT_IDS", "REFUSAL_JUDGE_IDS", "JudgePromptId",
           "RefusalJudgeId", "check_engine_kwargs"]
