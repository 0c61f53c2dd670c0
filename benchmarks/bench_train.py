"""DPO training throughput: libra_ray's Ray Train stage (no DeepSpeed, ZeRO-2, ZeRO-3, ZeRO-3 + CPU offload)
vs plain TRL in a single process on the same data, same per-device batch and same TRL settings.

    python -m benchmarks.bench_train --quick                        # tiny model on CPU, < ~4 min
    python -m benchmarks.bench_train --model Qwen/Qwen2.5-1.5B-Instruct --use-gpu --workers 1 \
        --precision bf16 --max-length 512 --steps 20                # same script on a GPU node
    python -m benchmarks.bench_train --smoke                        # 2 steps, ZeRO-2: does it still run?

Reports per mode the steady state (libra_ray/train/metrics.py): median s/step and median tokens/s over the
steps after the first 3, checkpoint saves excluded (tokens = non-padding tokens counted by TRL, all
workers), samples/s and tokens/s per worker from those, MFU (tokens/s x k·N / (workers x peak FLOP/s);
k = 8 for DPO with a reference forward, N = linear weights incl. lm_head; null on CPU unless --peak-flops),
the mean s/step of the whole loop (warm-up and saves included, for comparison), peak RSS and peak GPU
memory of the largest worker. Prints a Markdown table; writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import add_smoke_arg, print_stamp, result_path

MODES = ["none", "zero2", "zero3", "zero3_offload"]
COMPOUNDS = ["aspirin", "sarin", "ethanol", "phosgene", "caffeine", "methamphetamine", "acetone", "benzene"]


def write_dataset(folder: Path, rows: int, answer_words: int) -> Path:
    """Synthetic LibraChem-shaped triplets (text is filler; only the shapes and lengths matter here)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    filler = " ".join(["the reaction is hazardous and requires care"] * max(1, answer_words // 7))
    data = [{"prompt": f"Tell me the steps of synthesizing {c}.",
             "chosen": f"I cannot help with {c}; it is dangerous. {filler}",
             "rejected": f"Sure, {c} is made by standard reactions. {filler}"}
            for c in (COMPOUNDS * (rows // len(COMPOUNDS) + 1))[:rows]]
    pq.write_table(pa.Table.from_pylist(data), folder / "part-0.parquet")
    return folder


def overrides(args, storage: str, dataset: Path, mode: str) -> list[str]:
    return [
        f"storage={storage}", f"cache_dir={args.cache_dir}", f"name=bench-{mode}",
        f"train.model={args.model}", f"train.dataset={dataset}", f"train.replicas={args.workers}",
        f"train.per_device_train_batch_size={args.batch}", f"train.max_steps={args.steps}",
        f"train.save_steps={args.steps}", f"train.max_length={args.max_length}",
        f"train.precision={args.precision}", f"train.use_gpu={str(args.use_gpu).lower()}",
        f"train.num_cpus={args.cpus_per_worker}", f"train.lora.enabled={str(args.lora).lower()}",
        f"train.deepspeed={'null' if mode == 'none' else mode}", "train.max_failures=0",
    ] + ([f"train.peak_flops={args.peak_flops}"] if args.peak_flops else [])


def plain_trl(args, dataset: Path) -> dict:
    """Baseline in this (child) process: TRL DPOTrainer, no Ray, no DeepSpeed, one device."""
    import resource

    import torch
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    from libra_ray.config import load_config
    from libra_ray.tiny import resolve_model
    from libra_ray.train.data import read_train_table, to_conversational
    from libra_ray.train.metrics import mfu
    from libra_ray.train.worker import _make_report_callback, _model_figures, _quiet, _trainer_args

    _quiet()
    cfg = load_config(None, overrides(args, tempfile.mkdtemp(), dataset, "none"))
    on_gpu = args.use_gpu and torch.cuda.is_available()
    torch.set_num_threads(max(1, int(args.cpus_per_worker)))
    model = resolve_model(cfg.train.model, cfg)
    stage = {"learning_rate": cfg.train.learning_rate, "max_steps": args.steps, "deepspeed": None}
    t = cfg.train.model_dump(mode="json")
    targs = _trainer_args("dpo", t, stage, tempfile.mkdtemp(), on_gpu)  # same weights dtype as the Ray runs
    targs.save_strategy = "no"
    figures = _model_figures("dpo", t, model, on_gpu, 1)
    callback = _make_report_callback("dpo", 0, 0, None, figures)  # the same step clock as the Ray workers
    peft = None
    if args.lora:
        from peft import LoraConfig

        peft = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    tok = AutoTokenizer.from_pretrained(model)
    trainer = DPOTrainer(model=model, args=targs, train_dataset=to_conversational(read_train_table(str(dataset)), "dpo"),
                         processing_class=tok, peft_config=peft, callbacks=[callback])
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    timer = callback.timer.figures()
    return {"mode": "plain TRL (1 process)", "workers": 1, "steps": trainer.state.global_step,
            "train_seconds": elapsed, "num_tokens": tokens[-1] if tokens else None,
            "sec_per_step": timer["steady_sec_per_step"], "tokens_per_s": timer["steady_tokens_per_s"],
            "steady_steps": timer["steady_steps"],
            "mfu": mfu(timer["steady_tokens_per_s"], figures["flops_per_token"], 1, figures["peak_flops"]),
            "peak_rss_gib_max_worker": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_gpu_mem_gib_max_worker": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None}


def ray_modes(args, dataset: Path) -> list[dict]:
    from libra_ray.config import load_config
    from libra_ray.runtime import ray_session
    from libra_ray.train import run

    out = []
    storage = tempfile.mkdtemp(prefix="bench_train_")
    session_cfg = load_config(None, overrides(args, storage, dataset, "none") + [
        f"ray.num_cpus={max(2, int(args.workers * args.cpus_per_worker))}"])
    with ray_session(session_cfg):
        for mode in args.modes:
            print(f"\n### {mode}", flush=True)
            summary = run(load_config(None, overrides(args, storage, dataset, mode)))
            out.append({"mode": f"ray train, {mode}", "workers": args.workers, **summary})
    return out


def rates(row: dict, per_device_batch: int) -> dict:
    """Per-worker figures from the steady state (the summary's medians), plus the whole-loop mean s/step."""
    steps = row.get("steps_this_attempt") or row["steps"]
    sec_per_step = row.get("sec_per_step") or row["train_seconds"] / steps
    samples_per_s = per_device_batch * row["workers"] / sec_per_step
    return {**row, "sec_per_step": sec_per_step, "mean_sec_per_step_incl_warmup_and_saves": row["train_seconds"] / steps,
            "samples_per_s": samples_per_s, "samples_per_s_per_worker": samples_per_s / row["workers"],
            "tokens_per_s_per_worker": (row.get("tokens_per_s") or 0) / row["workers"]}


def _f(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = ["| mode | workers | steady s/step | mean s/step (all) | samples/s | samples/s/worker | tokens/s/worker | MFU"
             " | peak RSS/worker GiB | peak GPU/worker GiB | samples/s vs plain TRL | per-worker vs plain TRL |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['workers']} | {r['sec_per_step']:.3f} | "
                     f"{r['mean_sec_per_step_incl_warmup_and_saves']:.3f} | {r['samples_per_s']:.1f} | "
                     f"{r['samples_per_s_per_worker']:.1f} | {r['tokens_per_s_per_worker']:,.0f} | "
                     f"{_f(r.get('mfu') and 100 * r['mfu'], '.1f')}{'%' if r.get('mfu') else ''} | "
                     f"{r['peak_rss_gib_max_worker']:.2f} | {_f(r['peak_gpu_mem_gib_max_worker'], '.2f')} | "
                     f"{r['samples_per_s'] / base['samples_per_s']:.2f}x | "
                     f"{r['samples_per_s_per_worker'] / base['samples_per_s_per_worker']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, 6 steps (a few minutes here)")
    parser.add_argument("--model", default="tiny", help="'tiny', a hub id or a local folder")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=1)
    parser.add_argument("--batch", type=int, default=4, help="per-device batch size")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--peak-flops", type=float, default=None,
                        help="peak FLOP/s of one device for MFU (default: by GPU name; none on CPU)")
    parser.add_argument("--cache-dir", default=str(Path(".cache/libra_ray").absolute()))
    parser.add_argument("--out", default=None, help="result JSON (default: results/train.json)")
    add_smoke_arg(parser)
    parser.add_argument("--baseline-child", help=argparse.SUPPRESS)  # internal: run the baseline, write JSON here
    args = parser.parse_args(argv)
    if args.smoke:  # the plain-TRL baseline and one Ray Train mode under DeepSpeed, 2 steps on 16 short rows
        args.modes, args.steps, args.rows, args.max_length = args.modes or ["zero2"], args.steps or 2, 16, 64
    args.modes = args.modes or MODES
    args.steps = args.steps or (6 if args.quick else 20)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(args.cache_dir).absolute() / "torch_extensions"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    dataset = Path(tempfile.gettempdir()) / f"libra_ray_bench_train_{args.rows}_{args.max_length}" / "train"
    if args.baseline_child:
        Path(args.baseline_child).write_text(json.dumps(plain_trl(args, dataset)))
        return 0
    out_path = result_path(args.out, "train", args.smoke)
    started = print_stamp("train")
    write_dataset(dataset, args.rows, answer_words=args.max_length // 4)

    # Baseline in a child process so its peak RSS is its own.
    print("### plain TRL, single process", flush=True)
    child_out = Path(tempfile.mkdtemp()) / "baseline.json"
    passthrough = list(argv if argv is not None else sys.argv[1:])
    subprocess.run([sys.executable, "-m", "benchmarks.bench_train", *passthrough, "--baseline-child", str(child_out)],
                   check=True)
    rows = [json.loads(child_out.read_text())] + ray_modes(args, dataset)
    rows = [rates(r, args.batch) for r in rows]

    md = table(rows)
    print("\n" + md)
    result = {"benchmark": "train", "quick": args.quick, "smoke": args.smoke, "stamp": started, "model": args.model, "steps": args.steps,
              "per_device_batch": args.batch, "max_length": args.max_length, "precision": args.precision,
              "device": "cuda" if args.use_gpu else "cpu", "host": platform.node(), "cpu_count": os.cpu_count(),
              "load_avg_at_end": os.getloadavg(), "rows": rows, "table": md}
    out_path.write_text(json.dumps(result, indent=2, default=str))
    print_stamp("train", "end")
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
