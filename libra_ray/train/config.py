"""Config of stage 2, training: optional SFT then DPO (TRL) on Ray Train, DeepSpeed optional."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from libra_ray._config_base import StrictModel


class LoraConfig(StrictModel):
    enabled: bool = False
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class SFTStageConfig(StrictModel):
    enabled: bool = False
    max_steps: int = Field(default=8, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0)


class TrainConfig(StrictModel):
    # "tiny" = the locally built tiny model; otherwise a hub id or a local path.
    model: str = "tiny"
    # Dataset: None = the synth stage's output of this run.
    dataset: str | None = None
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1, gt=0)
    gpus_per_worker: float = Field(default=0, ge=0)
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
    warmup_ratio: float = Field(default=0.0, ge=0, le=1)
    max_steps: int = Field(default=8, description="-1 = run num_epochs")
    num_epochs: float = Field(default=1.0, gt=0)
    per_device_batch_size: int = Field(default=2, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = False
    save_steps: int = Field(default=4, ge=1)
    num_to_keep: int = Field(default=2, ge=1)
    max_failures: int = Field(default=2, ge=0)
    seed: int = 0
    logging_steps: int = Field(default=1, ge=1)
    # Optional experiment tracking via Ray's integrations: "mlflow" or "wandb".
    tracker: Literal["mlflow", "wandb"] | None = None
