"""Config of stage 2, training: optional SFT then DPO (TRL) on Ray Train, DeepSpeed optional."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from libra_ray._config_base import StrictModel

# DeepSpeed configs shipped in libra_ray/train/deepspeed/<name>.json.
SHIPPED_DEEPSPEED = ("zero2", "zero3", "zero3_offload")
# DPO losses TRL 1.16 implements (several may be combined, see `loss_weights` in TRL).
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


class LoraConfig(StrictModel):
    enabled: bool = False
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class SFTStageConfig(StrictModel):
    """The paper's first step: SFT on the chosen responses; DPO then starts from (and refers to) it."""

    enabled: bool = False
    max_steps: int = Field(default=8, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0)


class TrainConfig(StrictModel):
    # "tiny" = the locally built tiny model; otherwise a hub id or a local path.
    model: str = "tiny"
    # Dataset: None = the synth stage's output of this run (`{dataset_dir}/train`). Only a train split is read.
    dataset: str | None = None
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1, gt=0)
    gpus_per_worker: float = Field(default=0, ge=0, description="0 with use_gpu = 1 GPU per worker")
    # Extra custom resources per worker, e.g. {"accelerator_type:H100": 0.001}.
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    # None, a shipped name (zero2, zero3, zero3_offload) or a path to a DeepSpeed JSON.
    deepspeed: str | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    beta: float = Field(default=0.1, gt=0)
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"], min_length=1)
    max_length: int = Field(default=256, ge=16)
    learning_rate: float = Field(default=5e-5, gt=0)
    lr_scheduler: str = "linear"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    max_steps: int = Field(default=8, ge=-1, description="-1 = run num_epochs")
    num_epochs: float = Field(default=1.0, gt=0)
    per_device_batch_size: int = Field(default=2, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = False
    # Reference log-probs computed once before training (no reference model held during training).
    precompute_ref_log_probs: bool = False
    save_steps: int = Field(default=4, ge=1)
    num_to_keep: int = Field(default=2, ge=1)
    max_failures: int = Field(default=2, ge=-1, description="-1 = retry forever")
    seed: int = 0
    logging_steps: int = Field(default=1, ge=1)
    # Optional experiment tracking via Ray's integrations: "mlflow" or "wandb" (package must be installed).
    tracker: Literal["mlflow", "wandb"] | None = None

    @field_validator("loss_type")
    @classmethod
    def _known_losses(cls, losses: list[str]) -> list[str]:
        unknown = [loss for loss in losses if loss not in DPO_LOSSES]
        if unknown:
            raise ValueError(f"unknown DPO loss {unknown}; choose from {', '.join(DPO_LOSSES)}")
        return losses

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed_name_or_json(cls, value: str | None) -> str | None:
        if value in (None, "", "none", "null"):
            return None
        if value not in SHIPPED_DEEPSPEED and not value.endswith(".json"):
            raise ValueError(f"use one of {', '.join(SHIPPED_DEEPSPEED)} or a path to a DeepSpeed .json file")
        return value

    @field_validator("max_steps")
    @classmethod
    def _not_zero(cls, steps: int) -> int:
        if steps == 0:
            raise ValueError("must be >= 1, or -1 to train for num_epochs")
        return steps

    @model_validator(mode="after")
    def _gpu_consistency(self) -> "TrainConfig":
        if self.gpus_per_worker > 0 and not self.use_gpu:
            raise ValueError("train.gpus_per_worker > 0 needs train.use_gpu: true")
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("train.precision fp16 needs a GPU (use fp32 or bf16 on CPU)")
        return self
