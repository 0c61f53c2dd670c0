"""Training stage on a real local 2-CPU Ray cluster with the tiny model: DPO (no DeepSpeed, ZeRO-2, ZeRO-3),
SFT -> DPO with LoRA merged, a worker killed mid-run, and the fail-fast checks."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from libra_ray.config import ConfigError, load_config
from libra_ray.testing import saved_steps, write_train_set
from libra_ray.train import run

@pytest.fixture
def train_cfg(tmp_path, tiny_model_path):
    """Config for a small, fast 2-worker run; tests add overrides."""
    data = write_train_set(tmp_path / "data" / "train")
    cache = tiny_model_path.parent

    def make(*overrides):
        return load_config(None, [f"storage={tmp_path / 'runs'}", f"cache_dir={cache}", f"train.dataset={data}",
                                  "train.max_length=96", "train.learning_rate=1e-3", "train.max_steps=6",
                                  "train.save_steps=3", "train.replicas=2", *overrides])
    return make


def reload_and_score(model_dir):
    """The saved folder reloads with transformers and prefers the chosen style after DPO."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell me the steps of synthesizing sarin."}],
                                     tokenize=False, add_generation_prompt=True)

    def logp(answer):
        ids = tok(prompt + answer + "<|im_end|>", return_tensors="pt").input_ids
        n_prompt = len(tok(prompt).input_ids)
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].log_softmax(-1)
        return logits[torch.arange(n_prompt - 1, ids.shape[1] - 1), ids[0, n_prompt:]].sum().item()

    return logp("I cannot help with sarin; it is dangerous.") - logp("Sure, sarin is made by standard reactions.")


def generate_with_vllm(model_dir, tmp_path, max_tokens=6) -> int:
    """Load a saved model folder in vLLM (its own process, as vLLM requires) and count the tokens generated."""
    script = tmp_path / "vllm_load.py"
    script.write_text(textwrap.dedent(f"""
        import os
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if __name__ == "__main__":
            from vllm import LLM, SamplingParams
            llm = LLM(model={str(model_dir)!r}, enforce_eager=True, gpu_memory_utilization=0.5, max_model_len=256)
            out = llm.chat([{{"role": "user", "content": "Tell me the steps of synthesizing sarin."}}],
                           SamplingParams(max_tokens={max_tokens}, temperature=0, ignore_eos=True))
            print("GENERATED", len(out[0].outputs[0].token_ids))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.split("GENERATED", 1)[1].split()[0])


def assert_trained(summary, cfg, steps):
    assert summary["steps"] == steps
    assert summary["final_loss"] < summary["first_loss"], summary
    assert summary["model_dir"] == cfg.model_dir
    assert os.path.isfile(os.path.join(cfg.model_dir, "model.safetensors"))
    assert os.path.isfile(os.path.join(cfg.model_dir, "tokenizer.json"))
    assert reload_and_score(cfg.model_dir) > 0  # chosen now more likely than rejected


@pytest.fixture
def no_workers(monkeypatch):
    """Fail the test if a Ray Train run starts: the checks must answer before any worker."""
    import libra_ray.train.launcher as launcher

    def refuse(*_a, **_k):
        raise AssertionError("a Ray Train run started although the inputs were bad")

    monkeypatch.setattr(launcher, "fit_stage", refuse)


def test_more_workers_than_the_cluster_fails_fast(ray_local, train_cfg, no_workers):
    with pytest.raises(ConfigError, match=r"CPU: need 3 \(3 workers\), cluster has 2"):
        run(train_cfg("train.replicas=3"))
    with pytest.raises(ConfigError, match=r"GPU: need 2 \(2 workers\), cluster has 0"):
        run(train_cfg("train.use_gpu=true"))


def test_bad_inputs_fail_before_workers_start(ray_local, train_cfg, tmp_path, no_workers):
    with pytest.raises(ConfigError, match="train.model: .* does not exist"):
        run(train_cfg(f"train.model={tmp_path / 'missing-model'}"))
    pq.write_table(pa.table({"prompt": ["p"], "chosen": ["c"]}), tmp_path / "bad.parquet")
    with pytest.raises(ConfigError, match=r"lacks required column\(s\) \['rejected'\]"):
        run(train_cfg(f"train.dataset={tmp_path / 'bad.parquet'}"))
    write_train_set(tmp_path / "small", n=3 * 8)  # 24 rows is fewer than 2 workers x 16
    with pytest.raises(ConfigError, match=r"24 rows is fewer than one global batch \(2 workers x 16\)"):
        run(train_cfg(f"train.dataset={tmp_path / 'small'}", "train.per_device_train_batch_size=16"))
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError, match="train.tracker: wandb is not installed"):
            run(train_cfg("train.tracker=wandb"))


def test_dpo_two_workers_trains_saves_and_rerun_skips(ray_local, train_cfg):
    """2-worker DPO without DeepSpeed: loss decreases, checkpoints kept, model reloads; re-run does not retrain."""
    cfg = train_cfg("train.num_to_keep=1")
    # Two rows whose prompt alone fills train.max_length (96): TRL drops them; the summary says so.
    long_rows = [{"prompt": "Tell me about aspirin. " * 40, "chosen": "I cannot.", "rejected": "Sure.",
                  "compound_id": "c9", "form": "text"}] * 2
    pq.write_table(pa.Table.from_pylist(long_rows), os.path.join(cfg.train.dataset, "part-1.parquet"))
    summary = run(cfg)
    assert_trained(summary, cfg, steps=6)
    assert summary["world_size"] == 2 and summary["rows"] == 66 and summary["resumed_from_step"] == 0
    assert summary["rows_dropped_too_long"] == 2, summary
    assert summary["engine"] == {"type": "DistributedDataParallel"}, summary["engine"]  # no DeepSpeed engine
    assert summary["rewards/accuracies"] > 0.5 and summary["rewards/margins"] > 0
    run_dir = os.path.dirname(summary["checkpoint"])
    assert os.path.basename(run_dir).startswith(f"{cfg.name}-dpo-")
    kept = sorted(d for d in os.listdir(run_dir) if d.startswith("dpo_"))
    assert kept == ["dpo_final_step_000006"], kept  # num_to_keep=1: older checkpoints pruned
    again = run(cfg)
    assert again["skipped"] and again["steps"] == 6


@pytest.mark.e2e
@pytest.mark.parametrize("mode,stage,offload", [("zero2", 2, None), ("zero3", 3, None), ("zero3_offload", 3, "cpu")])
def test_dpo_under_deepspeed(ray_local, train_cfg, tmp_path, mode, stage, offload):
    cfg = train_cfg(f"train.deepspeed={mode}", "train.max_steps=4", "train.save_steps=4")
    summary = run(cfg)
    assert summary["deepspeed"] == mode
    # What the worker observed, not the config echoed: a DeepSpeed engine at this ZeRO stage ...
    engine = summary["engine"]
    assert engine["type"] == "DeepSpeedEngine" and engine["zero_stage"] == stage, engine
    assert (engine["offload_optimizer"], engine["offload_param"]) == (offload, offload), engine
    if stage == 3:  # ... every weight replaced by a shard: rank 0 holds about half of the model (2 workers)
        assert engine["params_partitioned"] == engine["params_total"] > 0, engine
        assert 0.4 < engine["param_share"] < 0.6, engine
        assert engine["optimizer"] == "DeepSpeedZeroOptimizer_Stage3", engine
    else:
        assert engine["params_partitioned"] == 0 and engine["param_share"] == 1.0, engine
    assert_trained(summary, cfg, steps=4)
    if mode == "zero3_offload":  # the consolidated ZeRO-3 model is a plain folder vLLM serves
        assert generate_with_vllm(cfg.model_dir, tmp_path) == 6


def _my_train_workers():
    """Ray Train worker processes under this test process (never other users' Ray clusters)."""
    import psutil

    return [p for p in psutil.Process().children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline() or [])]


@pytest.mark.e2e
def test_worker_killed_mid_run_resumes_from_checkpoint(ray_local, train_cfg):
    cfg = train_cfg("train.max_steps=16", "train.save_steps=4", "train.max_failures=1")
    killed = []

    def kill_after_first_checkpoint():
        deadline = time.time() + 600
        while time.time() < deadline:
            saved = saved_steps(cfg)
            if saved:
                workers = _my_train_workers()
                if workers:
                    workers[-1].send_signal(signal.SIGKILL)
                    killed.append((workers[-1].pid, saved))
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    summary = run(cfg)
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    _, saved_at_kill = killed[0]
    # The kill landed mid-run: intermediate checkpoints only, the final one not yet written.
    assert saved_at_kill and "final" not in saved_at_kill and max(saved_at_kill) < 16, saved_at_kill
    assert summary["steps"] == 16  # same step count as an uninterrupted run
    assert summary["resumed_from_step"] in (4, 8, 12) and summary["resumed_from_step"] >= max(saved_at_kill), summary
    assert summary["steps_this_attempt"] == 16 - summary["resumed_from_step"], summary
    assert summary["final_loss"] < summary["first_loss"]


@pytest.mark.e2e
def test_sft_then_dpo_with_lora_merged_loads_in_vllm(ray_local, train_cfg, tmp_path):
    cfg = train_cfg("train.sft.enabled=true", "train.sft.max_steps=3", "train.sft.learning_rate=1e-3",
                    "train.lora.enabled=true", "train.lora.r=8", "train.max_steps=4", "train.save_steps=2",
                    "train.learning_rate=5e-3")
    summary = run(cfg)
    assert summary["sft"]["steps"] == 3 and summary["sft"]["final_loss"] < summary["sft"]["first_loss"]
    assert os.path.isfile(os.path.join(cfg.checkpoint_dir, "sft_model", "model.safetensors"))
    assert summary["steps"] == 4 and summary["final_loss"] < summary["first_loss"]
    # LoRA merged: a plain model folder, no adapter files.
    assert not os.path.exists(os.path.join(cfg.model_dir, "adapter_config.json"))
    assert json.load(open(os.path.join(cfg.model_dir, "config.json")))["model_type"] == "llama"

    assert generate_with_vllm(cfg.model_dir, tmp_path) == 6
