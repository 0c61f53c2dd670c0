"""Training on GPUs without a GPU here: collectives on the process group's device (a stand-in group that,
like NCCL, refuses CPU tensors), mixed precision with fp32 master weights, and the arithmetic of the
honest figures (steady medians, the wall split, MFU) with numbers checked by hand."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from libra_ray.config import ConfigError, load_config
from libra_ray.train import distributed
from libra_ray.train.metrics import (StepTimer, device_peak_flops, flops_per_token_factor, linear_params, mfu,
                                     shows_progress)
from libra_ray.train.worker import _peak_memory, _trainer_args, load_dtype


class Reached(Exception):
    """The stand-in collective got a tensor on the group's device (the stand-in cannot reduce one there)."""

    def __init__(self, device):
        super().__init__(str(device))
        self.device = device


@pytest.fixture
def one_rank_group():
    """A real single-rank gloo process group, destroyed afterwards."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture
def nccl_like(one_rank_group, monkeypatch):
    """The group claims NCCL and, like NCCL, refuses CPU tensors. Its device, "cuda" under NCCL, is the meta
    device here (this machine has no CUDA): a tensor that reaches the collective on it stops with `Reached`."""
    real = dist.all_reduce

    def all_reduce(tensor, *args, **kwargs):
        if tensor.device.type == "cpu":
            raise RuntimeError("No backend type associated with device type cpu")
        raise Reached(tensor.device)

    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setitem(distributed.BACKEND_DEVICE, "nccl", "meta")
    yield real


def test_the_peak_memory_reduction_reaches_an_nccl_group_on_its_device(nccl_like):
    # worker.py reduced a CPU tensor here before (the H200 run's crash after the last step).
    with pytest.raises(Reached) as reached:
        _peak_memory(on_gpu=False)
    assert reached.value.device.type == "meta"


def test_the_group_device_follows_the_backend(one_rank_group, monkeypatch):
    assert distributed.collective_device() == torch.device("cpu")  # gloo
    assert distributed.max_over_ranks([1.5, 2.0]) == [1.5, 2.0]  # a real gloo reduction
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "cpu:gloo,cuda:nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.collective_device() == torch.device("cuda", 3)


def test_no_process_group_no_collective():
    assert not dist.is_initialized()
    assert distributed.collective_device() == torch.device("cpu")
    assert distributed.max_over_ranks([1, 2]) == [1.0, 2.0]


# --- mixed precision --------------------------------------------------------------------------------------

def test_load_dtype_keeps_fp32_master_weights_unless_asked():
    assert load_dtype("bf16", deepspeed=False) == "float32"  # HF Trainer autocast over fp32 weights
    assert load_dtype("bf16", deepspeed=False, pure_bf16=True) == "bfloat16"
    assert load_dtype("bf16", deepspeed=True) == "bfloat16"  # DeepSpeed keeps its own fp32 master copy
    assert load_dtype("fp16", deepspeed=False) == "float32"  # AMP's grad scaler needs fp32 weights
    assert load_dtype("fp16", deepspeed=True) == "float16"
    assert load_dtype("fp32", deepspeed=True) == "float32"
    with pytest.raises(ConfigError, match="train.pure_bf16 needs train.precision: bf16"):
        load_config(None, ["train.pure_bf16=true"])


def _optimizer_dtypes(tmp_path, tiny_model_path, *overrides):
    import pyarrow as pa
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    from libra_ray.train.data import to_conversational

    t = load_config(None, ["train.precision=bf16", "train.max_length=32", *overrides]).train.model_dump(mode="json")
    args = _trainer_args("dpo", t, {"learning_rate": 1e-3, "max_steps": 1, "deepspeed": None}, str(tmp_path / "hf"),
                         on_gpu=False)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    tok.pad_token = tok.pad_token or tok.eos_token
    rows = [{"prompt": "Tell me about compound A.", "chosen": "I cannot.", "rejected": "Sure."}] * 2
    trainer = DPOTrainer(model=str(tiny_model_path), args=args, train_dataset=to_conversational(
        pa.Table.from_pylist(rows), "dpo"), processing_class=tok)
    optimizer = trainer.create_optimizer()
    dtypes = {p.dtype for group in optimizer.param_groups for p in group["params"]}
    return dtypes, trainer.accelerator.mixed_precision


def test_bf16_without_deepspeed_steps_fp32_weights_under_bf16_autocast(tmp_path, tiny_model_path):
    dtypes, mixed = _optimizer_dtypes(tmp_path, tiny_model_path)
    assert dtypes == {torch.float32} and mixed == "bf16"
    dtypes, mixed = _optimizer_dtypes(tmp_path, tiny_model_path, "train.pure_bf16=true")  # asked for: pure bf16
    assert dtypes == {torch.bfloat16}


# --- figures ----------------------------------------------------------------------------------------------

def test_linear_params_of_the_gpu_check_model():
    """The H200 run's 0.47B Llama: 24 x (4 x 1024^2 + 3 x 1024 x 4096) + 1024 x 32000 = 435,421,184."""
    cfg = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
           "num_key_value_heads": 16, "vocab_size": 32000}
    assert linear_params(cfg) == 24 * (4 * 1024**2 + 3 * 1024 * 4096) + 1024 * 32000 == 435_421_184
    # Grouped-query attention: k and v are narrower (2 of 16 heads): 2 x 1024^2 + 2 x 1024 x 128 per layer.
    gqa = linear_params({**cfg, "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 10})
    assert gqa == 2 * 1024**2 + 2 * 1024 * 128 + 3 * 1024 * 4096 + 1024 * 10
    assert linear_params({"hidden_size": 8}) is None


def test_mfu_formula_by_hand():
    assert flops_per_token_factor("dpo", lora=False, reference_forward=True) == 8
    assert flops_per_token_factor("dpo", lora=False, reference_forward=False) == 6  # precomputed ref log-probs
    assert flops_per_token_factor("sft", lora=False, reference_forward=True) == 6
    assert flops_per_token_factor("dpo", lora=True, reference_forward=True) == 6
    # The H200 ZeRO-2 row: 27,468 tok/s x 8 x 435,421,184 / 989e12 = 0.0967 (9.7%).
    assert mfu(27_468, 8 * 435_421_184, 1, 989e12) == pytest.approx(0.09675, abs=1e-4)
    # 2 devices, 1e12 FLOP/token, 100 tok/s in all, peak 1e15 each: 1e14 / 2e15 = 0.05.
    assert mfu(100, 1e12, 2, 1e15) == pytest.approx(0.05)
    assert mfu(100, 1e12, 1, None) is None and mfu(None, 1e12, 1, 1e15) is None


def test_peak_flops_table_and_override():
    assert device_peak_flops("NVIDIA H200") == 989e12
    assert device_peak_flops("NVIDIA H100 PCIe") == 756e12 and device_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert device_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert device_peak_flops("NVIDIA L40S") == 362e12 and device_peak_flops("NVIDIA L4") == 121e12
    assert device_peak_flops("Some GPU") is None and device_peak_flops(None) is None
    assert device_peak_flops("NVIDIA H200", override=5e14) == 5e14 and device_peak_flops(None, 1e12) == 1e12


def test_steady_figures_leave_out_warmup_and_saves():
    """8 steps, 100 tokens each, logged every 2 steps; steps 1-3 slow (warm-up); a 10 s save after step 4."""
    timer = StepTimer(warmup_steps=3)
    now = 1000.0
    timer.begin(now, 0)
    step_seconds = {1: 5.0, 2: 3.0, 3: 2.0, 4: 1.0, 5: 0.5, 6: 1.0, 7: 2.0, 8: 1.0}
    lines = {}
    for step, sec in step_seconds.items():
        now += sec
        timer.step_end(step, now)
        if step % 2 == 0:
            lines[step] = timer.logged(step, 100.0 * step)  # TRL's cumulative count
        if step == 4:
            now += 10.0
            timer.saved(now)
    f = timer.figures()
    # Steady steps 4-8: 1.0, 0.5, 1.0, 2.0, 1.0 -> median 1.0 s; the save's 10 s is in no step.
    assert f["steady_steps"] == "4-8" and f["steady_sec_per_step"] == 1.0
    # Tokens spread over each logging interval: 100 per step; rates 100, 200, 100, 50, 100 -> median 100.
    assert f["steady_tokens_per_s"] == 100.0 and f["tokens_per_step"] == 100.0
    assert (f["first_step_s"], f["steps_s"], f["checkpoint_s"], f["checkpoints"]) == (5.0, 10.5, 10.0, 1)
    # The progress line's figures for steps 5-6: 1.5 s over 2 steps, 200 tokens / 1.5 s.
    assert lines[6][0] == pytest.approx(0.75) and lines[6][1] == pytest.approx(200 / 1.5)


def test_a_short_run_still_has_one_steady_step():
    timer = StepTimer()
    timer.begin(0.0, 0)
    timer.step_end(1, 4.0)
    timer.step_end(2, 5.0)
    timer.logged(2, 60.0)
    f = timer.figures()
    assert f["steady_steps"] == "2-2" and f["steady_sec_per_step"] == 1.0 and f["steady_tokens_per_s"] == 30.0


def test_progress_lines_first_evenly_spaced_and_last():
    """The quickstart's SFT (200 steps): 21 lines, not 200; the last step is shown even off the grid."""
    assert [s for s in range(1, 201) if shows_progress(s, 200, 20)] == [1] + list(range(10, 201, 10))
    assert [s for s in range(1, 24) if shows_progress(s, 23, 5)] == [1, 5, 10, 15, 20, 23]
    assert all(shows_progress(s, 20, 20) for s in range(1, 21))  # fewer steps than lines: every one
    assert all(shows_progress(s, 200, 0) for s in range(1, 201))  # 0: every logged step
    assert all(shows_progress(s, -1, 20) for s in (1, 2, 3))  # steps unknown: every one
