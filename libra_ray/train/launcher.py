"""Driver side of stage 2: validate inputs, launch Ray Train `TorchTrainer`s (SFT, then DPO), publish the model.

Layout (all under the run's storage, local or URI):
  {checkpoint_dir}/{name}-{sft|dpo}-{hash}   Ray Train runs (checkpoints, `num_to_keep`); the hash is of
                                             the train config + model + data: same command = resume
  {checkpoint_dir}/sft_model                 the SFT model DPO starts from (and refers to)
  {model_dir}                                the final consolidated HF model + libra_ray_train.json
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from typing import TYPE_CHECKING

from libra_ray._config_base import ConfigError, join_uri
from libra_ray.train.data import copy_tree, read_text, read_train_table, train_split_uri, write_text

if TYPE_CHECKING:
    import pyarrow as pa

    from libra_ray.config import PipelineConfig

log = logging.getLogger(__name__)

SUMMARY_FILE = "libra_ray_train.json"


def load_deepspeed_config(ref: str | None) -> dict | None:
    """A shipped DeepSpeed config by name (zero2, zero3, zero3_offload) or a JSON file by path."""
    if ref is None:
        return None
    if ref.endswith(".json"):
        if not os.path.isfile(ref):
            raise ConfigError(f"train.deepspeed: {ref} does not exist")
        text = open(ref).read()
    else:
        text = resources.files("libra_ray.train").joinpath("deepspeed", f"{ref}.json").read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"train.deepspeed: {ref} is not valid JSON ({err})") from None


def check_model(ref: str) -> None:
    """Fail before any worker starts when the model cannot be found (local folder or hub/cached id)."""
    from libra_ray.tiny import check_local_model

    if "://" in ref or check_local_model(ref, "train.model"):
        return  # a remote folder (workers download it) or a checked local folder
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(ref)
    except (OSError, ValueError) as err:
        raise ConfigError(f"train.model: {ref!r} is neither a local folder nor a loadable hub model ({err})") from None


def check_resources(cfg: "PipelineConfig") -> None:
    """Fail fast when the cluster can never host the workers (Ray would otherwise wait forever)."""
    import ray

    t = cfg.train
    need = {"CPU": t.replicas * t.num_cpus}
    if t.use_gpu:
        need["GPU"] = t.replicas * (t.num_gpus or 1)
    for key, per_worker in t.resources.items():
        need[key] = t.replicas * per_worker
    have = ray.cluster_resources()
    short = [f"{k}: need {v:g} ({t.replicas} workers), cluster has {have.get(k, 0):g}"
             for k, v in need.items() if v > have.get(k, 0) + 1e-9]
    if short:
        raise ConfigError("train: more than the Ray cluster can ever provide; lower train.replicas or "
                          "per-worker resources. " + "; ".join(short))


def _fingerprint(cfg: "PipelineConfig", model: str, dataset: str) -> dict:
    """What the final model depends on: a finished run with the same one is not trained again (how much of
    the progress is printed is not part of it)."""
    return {"model": model, "dataset": dataset, "train": cfg.train.model_dump(mode="json", exclude={"progress_lines"})}


def run_name(cfg: "PipelineConfig", kind: str, fingerprint: dict) -> str:
    """The Ray Train run name: same config -> same name -> resume; a changed config trains afresh."""
    import hashlib

    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.name}-{kind}-{digest}"


def fit_stage(cfg: "PipelineConfig", kind: str, model: str, dataset: str, destination: str) -> dict:
    """One Ray Train run (`kind` "sft" or "dpo") that ends with the consolidated model copied to `destination`."""
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from libra_ray.train.worker import FINAL_MARKER, MODEL_SUBDIR, train_loop_per_worker

    t = cfg.train
    name = run_name(cfg, kind, _fingerprint(cfg, model, dataset))
    stage = {
        "learning_rate": t.sft.learning_rate if kind == "sft" else t.learning_rate,
        "max_steps": t.sft.max_steps if kind == "sft" else t.max_steps,
        "deepspeed": load_deepspeed_config(t.deepspeed),
        "deepspeed_name": t.deepspeed,
    }
    resources_per_worker = {"CPU": t.num_cpus, **t.resources}
    if t.use_gpu:
        resources_per_worker["GPU"] = t.num_gpus or 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "kind": kind, "model": model, "dataset": dataset, "train": t.model_dump(mode="json"), "stage": stage,
            "run_name": name, "cache_dir": os.path.abspath(cfg.cache_dir),
        },
        scaling_config=ScalingConfig(num_workers=t.replicas, use_gpu=t.use_gpu,
                                     resources_per_worker=resources_per_worker),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=cfg.checkpoint_dir,
            checkpoint_config=CheckpointConfig(num_to_keep=t.num_to_keep),
            failure_config=FailureConfig(max_failures=t.max_failures),
        ),
    )
    print(f"[libra-ray] train/{kind}: {t.replicas} workers, deepspeed={t.deepspeed or 'off'}, "
          f"model={model}, checkpoints in {join_uri(cfg.checkpoint_dir, name)}", flush=True)
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"train/{kind}: Ray Train finished without a checkpoint")
    with result.checkpoint.as_directory() as final:  # local storage: in place; remote: downloaded
        if not os.path.isfile(os.path.join(final, FINAL_MARKER)):
            raise RuntimeError(f"train/{kind}: the last checkpoint {result.checkpoint.path} holds no final model")
        with open(os.path.join(final, FINAL_MARKER)) as f:
            summary = json.load(f)
        copy_tree(os.path.join(final, MODEL_SUBDIR), destination)
    summary["checkpoint"] = result.checkpoint.path
    return summary


def check_inputs(cfg: "PipelineConfig", dataset: str) -> "pa.Table":
    """The train split (columns, at least one global batch of rows), the DeepSpeed config and the tracker:
    checks that need no Ray. Returns the train table."""
    t = cfg.train
    table = read_train_table(dataset)  # validates columns before any worker starts
    batch = t.replicas * t.per_device_train_batch_size
    if table.num_rows < batch:
        raise ConfigError(f"train.dataset: {table.num_rows} rows is fewer than one global batch "
                          f"({t.replicas} workers x {t.per_device_train_batch_size})")
    load_deepspeed_config(t.deepspeed)  # a bad path or JSON fails here, not on a worker
    if t.tracker:
        import importlib.util

        if importlib.util.find_spec(t.tracker) is None:
            raise ConfigError(f"train.tracker: {t.tracker} is not installed (pip install {t.tracker}), or unset it")
    return table


def preflight(cfg: "PipelineConfig") -> None:
    """Before Ray starts (CLI): an explicit `train.dataset` is checked now; this run's synthesis output
    (the default) may not exist yet, so it is checked when the stage starts."""
    if cfg.train.dataset:
        check_inputs(cfg, cfg.train.dataset)


def run(cfg: "PipelineConfig") -> dict:
    """Stage 2: (SFT on chosen ->) DPO; the final model lands in `cfg.model_dir`. Re-running resumes."""
    from libra_ray.tiny import resolve_model

    t = cfg.train
    model = resolve_model(t.model, cfg, key="train.model")
    check_model(model)
    dataset = train_split_uri(cfg)
    table = check_inputs(cfg, dataset)
    check_resources(cfg)

    fingerprint = _fingerprint(cfg, model, dataset)
    done = read_text(join_uri(cfg.model_dir, SUMMARY_FILE))
    if done and json.loads(done).get("fingerprint") == fingerprint:
        summary = json.loads(done)["summary"]
        print(f"[libra-ray] train: {cfg.model_dir} is already trained with this config; skipping", flush=True)
        return {**summary, "skipped": True}

    summary: dict = {"rows": table.num_rows, "dataset": dataset}
    dpo_start = model
    if t.sft.enabled:
        sft_model = join_uri(cfg.checkpoint_dir, "sft_model")
        summary["sft"] = fit_stage(cfg, "sft", model, dataset, sft_model)
        dpo_start = sft_model
    dpo = fit_stage(cfg, "dpo", dpo_start, dataset, cfg.model_dir)
    summary.update({k: dpo.get(k) for k in ("steps", "first_loss", "final_loss", "sec_per_step", "resumed_from_step",
                                            "rewards/accuracies", "rewards/margins", "tokens_per_s",
                                            "peak_rss_gib_max_worker", "peak_gpu_mem_gib_max_worker",
                                            "deepspeed", "engine", "device", "world_size", "train_seconds", "steps_this_attempt",
                                            "rows_dropped_too_long",
                                            "num_tokens", "checkpoint", "steady_steps", "tokens_per_step",
                                            "mean_sec_per_step_incl_warmup_and_saves", "wall", "device_name",
                                            "weights_dtype", "gpu_util_pct", "mfu", "mfu_formula", "flops_per_token",
                                            "linear_params", "peak_flops_per_device")})
    summary["model_dir"] = cfg.model_dir
    write_text(join_uri(cfg.model_dir, SUMMARY_FILE), json.dumps({"fingerprint": fingerprint, "summary": summary},
                                                                  indent=2, default=str))
    return summary
