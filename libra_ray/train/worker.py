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


def _make_report_callback(kind: str, rank: int, local_rank: int, tracker, figures: dict | None = None,
                          progress_lines: int = 0):
    """`figures`: model facts for the MFU on the progress line (flops_per_token, peak_flops, devices);
    `progress_lines`: how many progress lines to print (`metrics.shows_progress`; 0: every logged step)."""
    import ray.train
    import torch.distributed as dist
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint

    from libra_ray.train.metrics import StepTimer, mfu, shows_progress

    figures = figures or {}

    class ReportCallback(TrainerCallback):
        """Per step: a clock reading only (no device sync, no `.item()`). Per log step: a progress line on
        rank 0 (+ the tracker). Per save: metrics + checkpoint to Ray (every rank reports: it is a barrier);
        local rank 0 of each node uploads its node's HF checkpoint folder (ZeRO shards are per rank; Ray
        merges the uploads into one checkpoint)."""

        def __init__(self):
            self.timer = StepTimer()
            self.metrics: dict[str, float] = {}
            self.gpu_util: list[float] = []  # % busy, sampled at log steps after the warm-up (NVML)

        def on_train_begin(self, args, state, control, **kwargs):
            self.timer.begin(time.perf_counter(), state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            self.timer.step_end(state.global_step, time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            if "loss" not in logs:  # the end-of-train summary log
                return
            sec_per_step, tok_s = self.timer.logged(state.global_step, logs.get("num_tokens"))
            metrics = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            metrics.update(step=state.global_step, sec_per_step=sec_per_step, tokens_per_s=tok_s)
            self.metrics = metrics
            util = _gpu_utilization() if figures.get("on_gpu") else None
            if util is not None and len(self.timer.steps) > self.timer.warmup_steps:
                self.gpu_util.append(util)
            if rank == 0 and shows_progress(state.global_step, state.max_steps, progress_lines):
                extra = ""
                if kind == "dpo":
                    extra = (f" acc {logs.get('rewards/accuracies', float('nan')):.2f}"
                             f" margin {logs.get('rewards/margins', float('nan')):+.3f}")
                rate = mfu(tok_s if tok_s == tok_s else None, figures.get("flops_per_token"),
                           figures.get("devices", 1), figures.get("peak_flops"))
                print(f"[train:{kind}] step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}{extra}"
                      f" | {sec_per_step:.2f} s/step {tok_s:,.0f} tok/s"
                      + (f" MFU {100 * rate:.1f}%" if rate is not None else "")
                      + (f" GPU {util:.0f}%" if util is not None else ""), flush=True)
            if rank == 0 and tracker is not None:
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
            self.timer.saved(time.perf_counter())  # the save and its upload: outside every step's time

    return ReportCallback()


def _gpu_utilization() -> float | None:
    """This device's % busy over NVML's last sample period (torch.cuda.utilization needs pynvml); None without."""
    try:
        import torch

        return float(torch.cuda.utilization())
    except Exception:  # noqa: BLE001 - pynvml missing or NVML unavailable: the figure is simply absent
        return None


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


def load_dtype(precision: str, deepspeed: bool, pure_bf16: bool = False) -> str:
    """The dtype the weights are loaded (and, without DeepSpeed, optimized) in. Mixed precision keeps fp32
    master weights: without DeepSpeed the model is loaded in fp32 and the HF Trainer runs the forward and
    backward under bf16/fp16 autocast (its `bf16`/`fp16` flags), so AdamW updates fp32 weights; DeepSpeed
    loads the low-precision weights and keeps its own fp32 master copy in the optimizer. Pure bf16 (bf16
    weights stepped by AdamW, small updates rounded away) only when asked by `train.pure_bf16`."""
    if precision == "bf16" and (deepspeed or pure_bf16):
        return "bfloat16"
    if precision == "fp16" and deepspeed:
        return "float16"
    return "float32"


def _trainer_args(kind: str, t: dict, c: dict, output_dir: str, on_gpu: bool):
    """TRL config from our TrainConfig dict `t` (+ per-stage overrides in `c`)."""
    import torch
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
    dtype = getattr(torch, load_dtype(t["precision"], c["deepspeed"] is not None, t.get("pure_bf16", False)))
    common["model_init_kwargs"] = {"dtype": dtype}
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


def _peak_memory(on_gpu: bool) -> tuple[float, float | None]:
    """(peak RSS GiB, peak GPU memory GiB or None on CPU): the largest worker's, reduced on the process
    group's device (NCCL refuses CPU tensors)."""
    import torch

    from libra_ray.train.distributed import max_over_ranks

    rss, gpu = max_over_ranks([_peak_rss_gib(), torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0])
    return rss, (gpu if on_gpu else None)


def _model_figures(kind: str, t: dict, model_path: str, on_gpu: bool, world: int) -> dict:
    """What MFU needs: N (linear weights, from the model config), FLOPs per token, the device's peak."""
    import torch
    from transformers import AutoConfig

    from libra_ray.train.metrics import device_peak_flops, flops_per_token_factor, linear_params

    try:
        n = linear_params(AutoConfig.from_pretrained(model_path).to_dict())
    except Exception:  # noqa: BLE001 - an unusual config: MFU is then simply absent
        n = None
    lora = bool(t["lora"]["enabled"])
    k = flops_per_token_factor(kind, lora=lora, reference_forward=not t["precompute_ref_log_probs"])
    name = torch.cuda.get_device_name() if on_gpu else None
    return {"linear_params": n, "flops_per_token": k * n if n else None, "devices": world, "on_gpu": on_gpu,
            "device_name": name, "peak_flops": device_peak_flops(name, t.get("peak_flops")) if on_gpu or t.get("peak_flops") else None,
            "formula": f"MFU = tokens/s x {k}N / ({world} x peak FLOP/s), N = linear weights incl. lm_head"}


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. `config`: kind ("sft"|"dpo"), model, dataset, train (TrainConfig dict),
    stage (learning_rate, max_steps, deepspeed dict or None), run_name, cache_dir."""
    worker_start = time.perf_counter()
    _quiet()
    import ray.train
    import torch
    import torch.distributed as dist

    from libra_ray.train.data import localize, read_train_table, to_conversational
    from libra_ray.train.metrics import mfu

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
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[t["precision"]]  # saved model
    peft_config = None
    if t["lora"]["enabled"]:
        from peft import LoraConfig

        lora = t["lora"]
        peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
                                 target_modules=lora["target_modules"], task_type="CAUSAL_LM")

    tracker = None
    if t["tracker"] and rank == 0:
        tracker = _Tracker(t["tracker"], config["run_name"], {"kind": kind, **t})
    figures = _model_figures(kind, t, model_path, on_gpu, world)
    callback = _make_report_callback(kind, rank, local_rank, tracker, figures, t["progress_lines"])
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
    final_start = time.perf_counter()
    final_dir = os.path.join(scratch, "final")
    raw_dir = os.path.join(scratch, "raw_final")
    trainer.save_model(raw_dir)
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # else rank 0's from_pretrained below would enter a ZeRO-3 collective alone
    if rank == 0:
        model_out = os.path.join(final_dir, MODEL_SUBDIR)
        _write_final_model(raw_dir, model_path, model_out, tokenizer, lora=peft_config is not None, dtype=dtype)
    final_save_s = time.perf_counter() - final_start
    peak_rss, peak_gpu = _peak_memory(on_gpu)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    timer = callback.timer.figures()
    tokens_per_s = timer["steady_tokens_per_s"]
    rate = mfu(tokens_per_s, figures["flops_per_token"], world, figures["peak_flops"])
    summary = {
        "kind": kind,
        "steps": trainer.state.global_step,
        "resumed_from_step": resumed_step,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        # Steady state: medians over the steps after the warm-up, checkpoint saves excluded (train/metrics.py).
        "sec_per_step": timer["steady_sec_per_step"],
        "tokens_per_s": tokens_per_s,  # global (all ranks), TRL's non-padding tokens
        "steady_steps": timer["steady_steps"],
        "tokens_per_step": timer["tokens_per_step"],
        "mean_sec_per_step_incl_warmup_and_saves": elapsed / steps_run if steps_run else None,
        "wall": {"startup_s": (callback.timer.train_begin or start) - worker_start,
                 "first_step_s": timer["first_step_s"], "steps_s": timer["steps_s"],
                 "checkpoint_s": timer["checkpoint_s"], "checkpoints": timer["checkpoints"],
                 "final_save_s": final_save_s, "total_s": time.perf_counter() - worker_start},
        "train_seconds": elapsed,
        "steps_this_attempt": steps_run,
        "num_tokens": callback.metrics.get("num_tokens"),  # global, all ranks (TRL counts non-pad tokens)
        "world_size": world,
        "rows_dropped_too_long": dropped,  # prompt alone fills max_length: TRL drops the row
        "deepspeed": stage["deepspeed_name"],
        "engine": engine,  # rank 0's observed engine (type, ZeRO stage, offload, parameter share)
        "device": "cuda" if on_gpu else "cpu",
        "device_name": figures["device_name"],
        "weights_dtype": str(args.model_init_kwargs["dtype"]).replace("torch.", ""),
        "peak_rss_gib_max_worker": peak_rss,
        "peak_gpu_mem_gib_max_worker": peak_gpu,  # torch.cuda.max_memory_allocated, max over ranks; null on CPU
        "gpu_util_pct": (sum(callback.gpu_util) / len(callback.gpu_util)) if callback.gpu_util else None,
        "mfu": rate,
        "mfu_formula": figures["formula"],
        "flops_per_token": figures["flops_per_token"],
        "linear_params": figures["linear_params"],
        "peak_flops_per_device": figures["peak_flops"],
        **{k: callback.metrics[k] for k in ("rewards/accuracies", "rewards/margins") if k in callback.metrics},
    }
    checkpoint_out = None
    if rank == 0:
        with open(os.path.join(final_dir, FINAL_MARKER), "w") as f:
            json.dump(summary, f, indent=2)
        checkpoint_out = ray.train.Checkpoint.from_directory(final_dir)
        mfu_text = f", MFU {100 * rate:.1f}%" if rate is not None else ""
        print(f"[train:{kind}] done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> "
              f"{summary['final_loss']:.4f}, steady {summary['sec_per_step'] or float('nan'):.2f} s/step "
              f"{tokens_per_s or float('nan'):,.0f} tok/s{mfu_text} (steps {summary['steady_steps']})", flush=True)
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
