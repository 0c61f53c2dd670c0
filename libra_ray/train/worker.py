"""What each Ray Train worker runs: TRL's SFTTrainer or DPOTrainer, optionally under DeepSpeed ZeRO.

Resume: the HF checkpoint (weights, optimizer/ZeRO shards, scheduler, RNG, step) of every `save_steps`
is reported to Ray Train; after a worker failure, or when the same command is re-run, Ray hands it
back through `ray.train.get_checkpoint()` and `Trainer.train(resume_from_checkpoint=...)` continues to
the same `max_steps`. The last checkpoint holds the consolidated final model (`model/`, LoRA merged).

Reference model: DPO needs pi_ref. Without LoRA, TRL builds a frozen copy of the initial policy (under
ZeRO-3 it is sharded by its own DeepSpeed engine, which is why `deepspeed.init_distributed` must run
first on CPU); with LoRA the base model with adapters disabled is the reference; with
`precompute_ref_log_probs` the reference log-probs are computed once before training.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

FINAL_MARKER = "libra_ray_final.json"
MODEL_SUBDIR = "model"
HF_SUBDIR = "checkpoint"


def _quiet() -> None:
    """Readable worker logs: no dill bytecode dumps from datasets fingerprinting, no per-step HF chatter."""
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("datasets", "dill", "transformers", "trl", "accelerate", "DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass
    try:
        # Ray Train V2 logs every report's full metrics dict at INFO (its logger is named by file path).
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
        # It also routes print() through the root logger: every line then shows twice, and dill's
        # stdout capture (datasets fingerprinting TRL's lambdas) leaks ~500 lines of bytecode.
        import builtins

        from ray.train.v2._internal.logging import patch_print

        builtins.print = patch_print._original_print
    except Exception:  # noqa: BLE001 - cosmetics only
        pass


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def _make_report_callback(kind: str, rank: int, local_rank: int, tracker):
    import ray.train
    import torch.distributed as dist
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint

    class ReportCallback(TrainerCallback):
        """Per log step: a progress line on rank 0 (+ the tracker). Per save: metrics + checkpoint to Ray
        (every rank reports: it is a barrier); local rank 0 of each node uploads its node's HF checkpoint
        folder (ZeRO shards are per rank; Ray merges the uploads into one checkpoint)."""

        def __init__(self):
            self.last_time = None
            self.last_tokens = None
            self.last_step = None
            self.metrics: dict[str, float] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_time, self.last_step = time.perf_counter(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            if "loss" not in logs:  # the end-of-train summary log
                return
            now = time.perf_counter()
            steps = state.global_step - (self.last_step or 0)
            sec_per_step = (now - self.last_time) / steps if steps > 0 else float("nan")
            tokens = logs.get("num_tokens")
            tok_s = float("nan")
            if tokens is not None and self.last_tokens is not None and tokens > self.last_tokens:
                tok_s = (tokens - self.last_tokens) / (now - self.last_time)
            self.last_time, self.last_step, self.last_tokens = now, state.global_step, tokens
            metrics = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            metrics.update(step=state.global_step, sec_per_step=sec_per_step, tokens_per_s=tok_s)
            self.metrics = metrics
            if rank == 0:
                extra = ""
                if kind == "dpo":
                    extra = (f" acc {logs.get('rewards/accuracies', float('nan')):.2f}"
                             f" margin {logs.get('rewards/margins', float('nan')):+.3f}")
                print(f"[train:{kind}] step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}{extra}"
                      f" | {sec_per_step:.2f} s/step {tok_s:,.0f} tok/s", flush=True)
                if tracker is not None:
                    tracker.log_metrics(metrics, step=state.global_step)
            # Not reported to Ray here: a report waits for the controller's 2 s poll, which would
            # dominate small steps; the latest metrics ride along with each checkpoint report instead.

        def on_save(self, args, state, control, **kwargs):
            if dist.is_initialized():
                dist.barrier()  # every rank's shards/RNG state are on disk before the upload
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                source = get_last_checkpoint(args.output_dir)
                if local_rank == 0 and source is not None:
                    shutil.copytree(source, os.path.join(tmp, HF_SUBDIR))
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics={**self.metrics, "step": state.global_step}, checkpoint=checkpoint,
                                 checkpoint_dir_name=f"{kind}_step_{state.global_step:06d}")

    return ReportCallback()


class _Tracker:
    """MLflow or W&B through Ray's integrations, rank 0 only."""

    def __init__(self, kind: str, name: str, config: dict):
        self.kind = kind
        if kind == "mlflow":
            from ray.air.integrations.mlflow import setup_mlflow

            self.client = setup_mlflow(config, experiment_name=name, rank_zero_only=True)
        else:
            from ray.air.integrations.wandb import setup_wandb

            self.client = setup_wandb(config, project=name, rank_zero_only=True)

    def log_metrics(self, metrics: dict, step: int) -> None:
        clean = {k.replace("/", "_"): v for k, v in metrics.items() if v == v}  # drop NaN
        if self.kind == "mlflow":
            self.client.log_metrics(clean, step=step)
        else:
            self.client.log(clean, step=step)


def _device(offload) -> str | None:
    """An offload config's device ("cpu", "nvme"; "none"/None = not offloaded), enum or plain string."""
    device = getattr(offload, "device", None)
    return None if device is None else str(getattr(device, "value", device))


def _engine_facts(trainer) -> dict:
    """What actually trained, read from the live objects (not from the config): the wrapped model's type and,
    under DeepSpeed, the ZeRO stage, offload devices and this rank's share of the partitioned parameters."""
    engine = getattr(trainer, "model_wrapped", None) or trainer.model
    facts: dict[str, Any] = {"type": type(engine).__name__}
    if not hasattr(engine, "zero_optimization_stage"):
        return facts
    zero = engine._config.zero_config
    params = list(engine.module.parameters())
    partitioned = [p for p in params if hasattr(p, "ds_tensor")]  # ZeRO-3 replaces each weight by a shard
    facts.update(
        zero_stage=int(engine.zero_optimization_stage()),
        optimizer=type(engine.optimizer).__name__,
        offload_optimizer=_device(zero.offload_optimizer),
        offload_param=_device(zero.offload_param),
        params_partitioned=len(partitioned),
        params_total=len(params),
        # Elements held on this rank over the full model size: ~1/world under ZeRO-3, 1 otherwise.
        param_share=(sum(p.ds_tensor.numel() for p in partitioned) / sum(p.ds_numel for p in partitioned))
        if partitioned else 1.0,
    )
    return facts


def _trainer_args(kind: str, t: dict, c: dict, output_dir: str, on_gpu: bool):
    """TRL config from our TrainConfig dict `t` (+ per-stage overrides in `c`)."""
    from trl import DPOConfig, SFTConfig

    common: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=t["per_device_train_batch_size"],
        gradient_accumulation_steps=t["gradient_accumulation_steps"],
        learning_rate=c["learning_rate"],
        lr_scheduler_type=t["lr_scheduler_type"],
        warmup_steps=t["warmup_steps"] if t["warmup_steps"] < 1 else int(t["warmup_steps"]),  # < 1: a ratio of all steps
        max_steps=c["max_steps"],
        num_train_epochs=t["num_train_epochs"],
        logging_steps=t["logging_steps"],
        save_strategy="steps",
        save_steps=t["save_steps"],
        save_total_limit=1,  # local scratch only; Ray keeps `num_to_keep` in storage
        seed=t["seed"],
        data_seed=t["seed"],
        use_cpu=not on_gpu,
        bf16=t["precision"] == "bf16",
        fp16=t["precision"] == "fp16",
        gradient_checkpointing=t["gradient_checkpointing"],
        deepspeed=c["deepspeed"],
        report_to="none",
        disable_tqdm=True,
        log_level="error",
        dataloader_num_workers=0,
        max_length=t["max_length"],
        dataset_num_proc=None,
    )
    if kind == "sft":
        return SFTConfig(**common, completion_only_loss=True)
    return DPOConfig(**common, beta=t["beta"], loss_type=list(t["loss_type"]),
                     precompute_ref_log_probs=t["precompute_ref_log_probs"])


def _dropped_rows(kind: str, rows: int, kept: int, max_length: int, global_batch: int) -> int:
    """Rows TRL dropped while tokenising (a prompt that alone fills `max_length`); an error when fewer than one
    global batch is left, which TRL would otherwise train on silently or fail on obscurely."""
    if kept < global_batch:
        raise ValueError(f"train.max_length={max_length}: only {kept} of {rows} rows are left for {kind} after "
                         f"dropping those whose prompt alone fills it, fewer than one global batch ({global_batch}); "
                         f"raise train.max_length or shorten the prompts")
    return rows - kept


def _shared_scratch_dir(rank: int) -> str:
    """One fresh local scratch folder per attempt, same path on every rank (rank 0 picks it)."""
    import torch.distributed as dist

    name = [f"libra_ray_train_{os.getpid()}_{int(time.time() * 1000)}" if rank == 0 else None]
    if dist.is_initialized():
        dist.broadcast_object_list(name, src=0)
    path = os.path.join(tempfile.gettempdir(), name[0])
    os.makedirs(path, exist_ok=True)
    return path


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. `config`: kind ("sft"|"dpo"), model, dataset, train (TrainConfig dict),
    stage (learning_rate, max_steps, deepspeed dict or None), run_name, cache_dir."""
    _quiet()
    import ray.train
    import torch
    import torch.distributed as dist

    from libra_ray.train.data import localize, read_train_table, to_conversational

    kind, t, stage = config["kind"], config["train"], config["stage"]
    ctx = ray.train.get_context()
    rank, local_rank, world = ctx.get_world_rank(), ctx.get_local_rank(), ctx.get_world_size()
    on_gpu = bool(t["use_gpu"]) and torch.cuda.is_available()
    if t["use_gpu"] and not on_gpu:
        raise RuntimeError("train.use_gpu is set but this worker sees no CUDA device")
    torch.set_num_threads(max(1, int(t["num_cpus"])))

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as restored:
            if os.path.exists(os.path.join(restored, FINAL_MARKER)):
                if rank == 0:
                    print(f"[train:{kind}] already finished (final model in the last checkpoint); nothing to do",
                          flush=True)
                return

    if stage["deepspeed"] is not None:
        import deepspeed

        # Before TRL builds the (ZeRO-3 sharded) reference model; gloo is DeepSpeed's CPU path here.
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")

    scratch = _shared_scratch_dir(rank)
    resume_dir = None
    if checkpoint is not None:
        resume_dir = os.path.join(scratch, "restored")
        if local_rank == 0:
            checkpoint.to_directory(resume_dir)
        if dist.is_initialized():
            dist.barrier()
        resume_dir = os.path.join(resume_dir, HF_SUBDIR)
        with open(os.path.join(resume_dir, "trainer_state.json")) as f:
            resumed_step = json.load(f)["global_step"]
        if rank == 0:
            print(f"[train:{kind}] resuming from checkpoint at step {resumed_step}", flush=True)
    else:
        resumed_step = 0

    from transformers import AutoTokenizer

    model_path = localize(config["model"], os.path.join(config["cache_dir"], "models"))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = to_conversational(read_train_table(config["dataset"]), kind)

    args = _trainer_args(kind, t, stage, os.path.join(scratch, "hf"), on_gpu)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[t["precision"]]
    args.model_init_kwargs = {"dtype": dtype}
    peft_config = None
    if t["lora"]["enabled"]:
        from peft import LoraConfig

        lora = t["lora"]
        peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
                                 target_modules=lora["target_modules"], task_type="CAUSAL_LM")

    tracker = None
    if t["tracker"] and rank == 0:
        tracker = _Tracker(t["tracker"], config["run_name"], {"kind": kind, **t})
    callback = _make_report_callback(kind, rank, local_rank, tracker)
    if kind == "sft":
        from trl import SFTTrainer as Trainer
    else:
        from trl import DPOTrainer as Trainer
    trainer = Trainer(model=model_path, args=args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=peft_config, callbacks=[callback])
    dropped = _dropped_rows(kind, len(dataset), len(trainer.train_dataset), t["max_length"],
                            world * t["per_device_train_batch_size"])
    if rank == 0 and dropped:
        print(f"[train:{kind}] {dropped} of {len(dataset)} rows dropped: their prompt alone fills "
              f"train.max_length={t['max_length']} (nothing of the answer would be left to learn from)", flush=True)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our callback prints one progress line per step instead

    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_dir)
    elapsed = time.perf_counter() - start
    steps_run = trainer.state.global_step - resumed_step
    engine = _engine_facts(trainer)  # before save_model / unset_hf_deepspeed_config

    # Consolidated final model: save_model gathers ZeRO-3 shards (collective), rank 0 writes.
    final_dir = os.path.join(scratch, "final")
    raw_dir = os.path.join(scratch, "raw_final")
    trainer.save_model(raw_dir)
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # else rank 0's from_pretrained below would enter a ZeRO-3 collective alone
    peak = torch.tensor([_peak_rss_gib(), torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0])
    if dist.is_initialized():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {
        "kind": kind,
        "steps": trainer.state.global_step,
        "resumed_from_step": resumed_step,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "sec_per_step": elapsed / steps_run if steps_run else None,
        "train_seconds": elapsed,
        "steps_this_attempt": steps_run,
        "num_tokens": callback.metrics.get("num_tokens"),  # global, all ranks (TRL counts non-pad tokens)
        "world_size": world,
        "rows_dropped_too_long": dropped,  # prompt alone fills max_length: TRL drops the row
        "deepspeed": stage["deepspeed_name"],
        "engine": engine,  # rank 0's observed engine (type, ZeRO stage, offload, parameter share)
        "device": "cuda" if on_gpu else "cpu",
        "peak_rss_gib_max_worker": float(peak[0]),
        "peak_gpu_mem_gib_max_worker": float(peak[1]),
        **{k: callback.metrics[k] for k in ("rewards/accuracies", "rewards/margins", "tokens_per_s")
           if k in callback.metrics},
    }
    checkpoint_out = None
    if rank == 0:
        model_out = os.path.join(final_dir, MODEL_SUBDIR)
        _write_final_model(raw_dir, model_path, model_out, tokenizer, lora=peft_config is not None, dtype=dtype)
        with open(os.path.join(final_dir, FINAL_MARKER), "w") as f:
            json.dump(summary, f, indent=2)
        checkpoint_out = ray.train.Checkpoint.from_directory(final_dir)
        print(f"[train:{kind}] done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> "
              f"{summary['final_loss']:.4f}, {summary['sec_per_step'] or float('nan'):.2f} s/step", flush=True)
    ray.train.report(metrics={**summary, "final": 1}, checkpoint=checkpoint_out,
                     checkpoint_dir_name=f"{kind}_final_step_{trainer.state.global_step:06d}")
    if local_rank == 0:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_final_model(raw_dir: str, base_path: str, out_dir: str, tokenizer, *, lora: bool, dtype) -> None:
    """A plain HF folder (safetensors + tokenizer) that transformers and vLLM load; LoRA merged into the base."""
    from transformers import AutoModelForCausalLM

    if lora:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
        model = PeftModel.from_pretrained(base, raw_dir).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(raw_dir, dtype=dtype)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
