"""`libra-ray gpu-check` without running anything heavy: a failing path becomes its error line, a skipped
path is not a failure, and the table's ratios are to ZeRO-2's tokens/s."""

from __future__ import annotations

from libra_ray.cli import build_parser
from libra_ray.gpucheck import PATHS, _isolated, table


def test_a_failing_path_is_one_error_line():
    def fail():
        raise RuntimeError("Traceback ...\n  File x\nRuntimeError: No backend type associated with device type cpu")

    out = _isolated("dpo_zero2", fail)
    assert out["ok"] is False and out["error"] == "RuntimeError: No backend type associated with device type cpu"
    skipped = _isolated("gen_vllm", lambda: {"ok": None, "skipped": "vllm is not installed"})
    assert skipped["ok"] is None and _isolated("x", lambda: {"a": 1})["ok"] is True


def test_table_ratios_to_zero2():
    result = {"device": "cuda", "device_name": "NVIDIA H200", "stamp": "t", "paths": {
        "dpo_zero2": {"ok": True, "tokens_per_s": 20_000.0, "mfu": 0.1, "peak_gpu_mem_gib_max_worker": 30.0,
                      "weights_dtype": "bfloat16", "seconds": 80},
        "dpo_zero3": {"ok": True, "tokens_per_s": 16_000.0, "mfu": 0.08, "seconds": 90},
        "gen_transformers": {"ok": True, "tokens_per_s": 5_000.0, "peak_gpu_mem_gib": 3.0, "seconds": 20},
        "serve": {"ok": False, "error": "ImportError: fastapi", "seconds": 1}}}
    lines = table(result).splitlines()
    assert "| dpo_zero2 | ok | 20,000 | 1.00x | 10.0% | 30.00 | bfloat16 | 80 |  |" in lines
    assert "| dpo_zero3 | ok | 16,000 | 0.80x | 8.0% | - | - | 90 |  |" in lines
    assert "| gen_transformers | ok | 5,000 | - | - | 3.00 | - | 20 |  |" in lines  # no ratio across kinds
    assert "| serve | FAILED | - | - | - | - | - | 1 | ImportError: fastapi |" in lines


def test_cli_arguments():
    args = build_parser().parse_args(["gpu-check", "--paths", "dpo_zero2", "serve", "--set", "train.use_gpu=true"])
    assert args.paths == ["dpo_zero2", "serve"] and args.out == "benchmarks/results/gpu.json"
    assert build_parser().parse_args(["gpu-check"]).paths == list(PATHS)
