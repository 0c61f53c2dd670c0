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
    """LoRA adapters (PEFT's LoraConfig; its field names). Merged into the final model."""

    _renamed = {"alpha": "lora_alpha", "dropout": "lora_dropout"}

    enabled: bool = Field(default=False, description="train LoRA adapters instead of the full model")
    r: int = Field(default=16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA scaling alpha")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="dropout on the LoRA layers")
    target_modules: list[str] | str = Field(default="all-linear", description="modules that get adapters "
                                            "(PEFT's names, or all-linear)")


class SFTStageConfig(StrictModel):
    """The paper's first step: SFT on the chosen responses; DPO then starts from (and refers to) it."""

    enabled: bool = Field(default=False, description="run SFT on the chosen responses before DPO")
    max_steps: int = Field(default=8, ge=1, description="SFT optimizer steps (TRL SFTConfig.max_steps)")
    learning_rate: float = Field(default=5e-5, gt=0, description="SFT peak learning rate (TRL SFTConfig.learning_rate)")


class TrainConfig(StrictModel):
    """Stage 2: TRL's DPO (optional SFT first) on Ray Train workers. Values passed straight to TRL keep TRL's
    names (DPOConfig/SFTConfig); the worker group uses the pipeline's resource names (replicas, num_cpus,
    num_gpus)."""

    _renamed = {"num_workers": "replicas", "cpus_per_worker": "num_cpus", "gpus_per_worker": "num_gpus",
                "resources_per_worker": "resources", "lr_scheduler": "lr_scheduler_type",
                "num_epochs": "num_train_epochs", "per_device_batch_size": "per_device_train_batch_size",
                "warmup_ratio": "warmup_steps"}

    model: str = Field(default="tiny", description="the starting policy: a hub id, a local folder, tiny (the "
                       "locally built tiny model) or tiny-pretrained (see tiny_pretrained)")
    dataset: str | None = Field(default=None, description="preference dataset folder (null = this run's synth "
                                "output, {dataset_dir}/train); only a train split is read")
    replicas: int = Field(default=2, ge=1, description="Ray Train workers (data-parallel ranks)")
    use_gpu: bool = Field(default=False, description="train on GPUs (NCCL); false = CPU (gloo)")
    num_cpus: float = Field(default=1, gt=0, description="CPUs per worker (also its torch threads on CPU)")
    num_gpus: float = Field(default=0, ge=0, description="GPUs per worker (0 with use_gpu = 1 GPU per worker)")
    resources: dict[str, float] = Field(default_factory=dict, description="extra custom Ray resources per worker, "
                                        "e.g. {\"accelerator_type:H100\": 0.001}")
    deepspeed: str | None = Field(default=None, description="DeepSpeed: null (off), a shipped config (zero2, zero3, "
                                  "zero3_offload) or a path to a DeepSpeed JSON")
    precision: Literal["fp32", "bf16", "fp16"] = Field(default="fp32", description="training precision (TRL's "
                                                       "bf16/fp16 flags); fp16 needs a GPU")
    pure_bf16: bool = Field(default=False, description="with precision bf16 and no DeepSpeed: load and optimize the "
                            "weights in bf16 (no fp32 master copy; small updates are rounded away). Default false: "
                            "fp32 master weights + bf16 autocast. DeepSpeed always keeps its own fp32 master weights")
    peak_flops: float | None = Field(default=None, gt=0, description="peak FLOP/s of one device for the MFU figure "
                                     "(dense bf16); null = from the table in libra_ray/train/metrics.py by GPU "
                                     "name (H200, H100, A100, L40S, L4, B200); on CPU MFU is null unless set")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters (off by default)")
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig, description="optional SFT stage before DPO")
    beta: float = Field(default=0.1, gt=0, description="DPO beta (TRL DPOConfig.beta; published 0.1)")
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"], min_length=1, description="DPO loss(es) "
                                 "(TRL DPOConfig.loss_type; several are summed): " + ", ".join(DPO_LOSSES))
    max_length: int = Field(default=256, ge=16, description="max tokens of prompt + response (TRL max_length)")
    learning_rate: float = Field(default=5e-5, gt=0, description="DPO peak learning rate (TRL learning_rate)")
    lr_scheduler_type: str = Field(default="linear", description="learning-rate schedule (TRL lr_scheduler_type: "
                                   "linear, cosine, constant, ...)")
    warmup_steps: float = Field(default=0.0, ge=0, description="linear warmup (TRL warmup_steps): a float in [0, 1) "
                                "is a ratio of the total steps, a whole number >= 1 a step count")
    max_steps: int = Field(default=8, ge=-1, description="DPO optimizer steps (TRL max_steps); -1 = run "
                           "num_train_epochs")
    num_train_epochs: float = Field(default=1.0, gt=0, description="epochs over the triplets when max_steps is -1 "
                                    "(TRL num_train_epochs)")
    per_device_train_batch_size: int = Field(default=2, ge=1, description="pairs per worker per step (TRL "
                                             "per_device_train_batch_size)")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="steps accumulated per optimizer step "
                                             "(TRL gradient_accumulation_steps)")
    gradient_checkpointing: bool = Field(default=False, description="recompute activations to save memory "
                                         "(TRL gradient_checkpointing)")
    precompute_ref_log_probs: bool = Field(default=False, description="compute the reference log-probs once before "
                                           "training, so no reference model is held (TRL precompute_ref_log_probs)")
    save_steps: int = Field(default=4, ge=1, description="checkpoint every N optimizer steps (TRL save_steps)")
    num_to_keep: int = Field(default=2, ge=1, description="checkpoints kept in storage (Ray CheckpointConfig)")
    max_failures: int = Field(default=2, ge=-1, description="worker-group restarts from the last checkpoint (Ray "
                              "FailureConfig); -1 = retry forever")
    seed: int = Field(default=0, description="training and data-order seed (TRL seed, data_seed)")
    logging_steps: int = Field(default=1, ge=1, description="log metrics every N steps (TRL logging_steps)")
    progress_lines: int = Field(default=20, ge=0, description="progress lines printed per training phase: the "
                                "first step, about this many evenly spaced and the last (0: every logged step); "
                                "the tracker still gets every logged step")
    tracker: Literal["mlflow", "wandb"] | None = Field(default=None, description="optional experiment tracking via "
                                                       "Ray's integrations (the package must be installed)")

    @field_validator("warmup_steps")
    @classmethod
    def _ratio_or_steps(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError("must be a ratio in [0, 1) or a whole number of steps")
        return value

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
            raise ValueError("must be >= 1, or -1 to train for num_train_epochs")
        return steps

    @model_validator(mode="after")
    def _gpu_consistency(self) -> "TrainConfig":
        if self.num_gpus > 0 and not self.use_gpu:
            raise ValueError("train.num_gpus > 0 needs train.use_gpu: true")
        if self.pure_bf16 and self.precision != "bf16":
            raise ValueError("train.pure_bf16 needs train.precision: bf16")
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("train.precision fp16 needs a GPU (use fp32 or bf16 on CPU)")
        return self
