"""Generation throughput: our vLLM-actor path vs transformers `generate` vs Ray's ray.data.llm processor,
on the same prompts and model, plus Ray's overhead (the same vLLM engine inside vs outside a Ray actor).

    python -m benchmarks.bench_generate --quick                 # tiny model, 64 prompts x 32 tokens
    python -m benchmarks.bench_generate --model /path/or/hub-id --prompts 512 --max-tokens 128 --num-gpus 1
    python -m benchmarks.bench_generate --smoke                 # 8 prompts, vLLM direct + transformers: does it still run?

Prints a Markdown ratio table and writes benchmarks/results/generate.json. "gen s" excludes engine start
(measured on a warm engine); "end-to-end" rows include starting the actors, as a user would see it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

from benchmarks.common import add_smoke_arg, print_stamp, result_path

PATHS = ["vllm_direct", "transformers", "ray_actor", "ray_data", "ray_data_llm"]


def _prompts(n: int) -> list[str]:
    names = ["aspirin", "ethanol", "acetone", "caffeine", "toluene", "paracetamol", "ibuprofen", "benzene"]
    return [f"Tell me the steps of synthesizing {names[i % len(names)]} (request {i})." for i in range(n)]


def _batch(prompts: list[str]):
    import pyarrow as pa

    return pa.table({"id": [str(i) for i in range(len(prompts))], "prompt": prompts})


def _tokens(out) -> tuple[int, list]:
    col = out["completion_tokens"].to_pylist()
    return sum(c or 0 for c in col), out["raw_text"].to_pylist()


def _timed_engine(make, batch, repeats: int) -> dict:
    t0 = time.perf_counter()
    engine = make()
    startup = time.perf_counter() - t0
    engine(batch.slice(0, 4))  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = engine(batch)
        times.append(time.perf_counter() - t)
    tokens, texts = _tokens(out)
    del engine
    gc.collect()
    gen = min(times)
    return {"startup_s": round(startup, 2), "gen_s": round(gen, 3), "tokens": tokens,
            "tok_per_s": round(tokens / gen, 1), "texts": texts}


def _engine_kwargs(args) -> dict:
    return dict(max_model_len=args.max_model_len, max_tokens=args.max_tokens, temperature=0.0, seed=0)


def bench_vllm_direct(args, batch) -> dict:
    from libra_ray.bench.engines import VLLMEngine

    kw = dict(_engine_kwargs(args), gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=True)
    return _timed_engine(lambda: VLLMEngine(args.model, **kw), batch, args.repeats)


def bench_transformers_direct(args, batch) -> dict:
    from libra_ray.bench.engines import TransformersEngine

    threads = args.num_cpus if not args.num_gpus else None
    return _timed_engine(lambda: TransformersEngine(args.model, num_threads=threads, **_engine_kwargs(args)),
                         batch, args.repeats)


def bench_vllm_ray_actor(args, batch) -> dict:
    """The same engine class in a plain Ray actor: the gap to the direct run is Ray's overhead."""
    import ray

    from libra_ray.bench.engines import VLLMEngine

    kw = dict(_engine_kwargs(args), gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=True)
    Actor = ray.remote(num_cpus=1, num_gpus=args.num_gpus)(VLLMEngine)
    t0 = time.perf_counter()
    actor = Actor.remote(args.model, **kw)
    ray.get(actor.__call__.remote(batch.slice(0, 4)))
    startup = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = ray.get(actor.__call__.remote(batch))
        times.append(time.perf_counter() - t)
    ray.kill(actor)
    tokens, texts = _tokens(out)
    gen = min(times)
    return {"startup_s": round(startup, 2), "gen_s": round(gen, 3), "tokens": tokens,
            "tok_per_s": round(tokens / gen, 1), "texts": texts}


def _bench_pipeline(args, engine: str, tmp: Path) -> dict:
    """Our stage's generate() end to end (Ray Data, actor start included), one replica."""
    import pyarrow.parquet as pq

    from libra_ray.bench.generate import generate, read_generations
    from libra_ray.config import load_config

    rows = [{"prompt": p, "compound_id": str(i), "name": str(i), "class": "legitimate", "category": "bench",
             "form": "TEXT"} for i, p in enumerate(_prompts(args.prompts))]
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), tmp / "prompts.parquet")
    cfg = load_config(None, [f"storage={tmp / engine}", f"cache_dir={args.cache_dir}", f"bench.prompts={tmp / 'prompts.parquet'}",
                             f"bench.max_tokens={args.max_tokens}", f"bench.max_model_len={args.max_model_len}",
                             f"bench.batch_size={args.prompts}", f"bench.num_gpus={args.num_gpus}",
                             f"bench.gpu_memory_utilization={args.gpu_memory_utilization}",
                             f"bench.models=[{{name: m, engine: {engine}, path: '{args.model}'}}]"])
    t0 = time.perf_counter()
    summary = generate(cfg, cfg.bench.models[0])
    wall = time.perf_counter() - t0
    table = read_generations(cfg, "m")
    by_prompt = {r["prompt"]: r["raw_text"] for r in table.to_pylist()}
    texts = [by_prompt.get(p) for p in _prompts(args.prompts)]
    tokens = summary["completion_tokens"]
    return {"startup_s": None, "gen_s": None, "end_to_end_s": round(wall, 2), "tokens": tokens,
            "tok_per_s": round(tokens / wall, 1), "errors": summary["errors"], "texts": texts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="64 prompts x 32 tokens, best of 3 warm repeats (< ~4 min on an idle 2-core machine)")
    p.add_argument("--model", default="tiny", help="'tiny' (built locally), a local folder or a hub id")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-cpus", type=int, default=2, help="local Ray cluster CPUs")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per engine (0 = CPU build)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    p.add_argument("--cache-dir", default=os.path.abspath(".cache/libra_ray"))
    p.add_argument("--skip", nargs="*", default=[], choices=PATHS)
    p.add_argument("--out", default=None, help="result JSON (default: results/generate.json)")
    add_smoke_arg(p)
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.max_tokens, args.repeats = 64, 32, 3
    if args.smoke:  # one vLLM start (the reference row), transformers in this process and on Ray Data
        args.prompts, args.max_tokens, args.repeats = 8, 8, 1
        args.skip = sorted(set(args.skip) | {"ray_actor", "ray_data_llm"})
    out_path = result_path(args.out, "generate", args.smoke)
    started = print_stamp("generate")
    from libra_ray.engines.env import apply_vllm_env, vllm_env

    apply_vllm_env()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.model == "tiny":
        from libra_ray.tiny import ensure_tiny_model

        args.model = str(ensure_tiny_model(args.cache_dir))
    import tempfile

    import ray

    load_before = os.getloadavg()[0]
    batch = _batch(_prompts(args.prompts))
    results: dict[str, dict] = {}

    def record(name: str, fn, *a):
        print(f"[bench_generate] {name} ...", flush=True)
        t = time.perf_counter()
        try:
            results[name] = fn(*a)
        except Exception as err:  # one failing engine must not hide the others' numbers
            results[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        print(f"[bench_generate] {name}: {time.perf_counter() - t:.0f} s", flush=True)

    if "vllm_direct" not in args.skip:
        record("vllm_direct", bench_vllm_direct, args, batch)
    if "transformers" not in args.skip:
        record("transformers_direct", bench_transformers_direct, args, batch)
    ray.init(num_cpus=args.num_cpus, num_gpus=args.num_gpus or None, include_dashboard=False,
             runtime_env={"env_vars": {**vllm_env(), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if "ray_actor" not in args.skip:
                record("vllm_ray_actor", bench_vllm_ray_actor, args, batch)
            if "ray_data" not in args.skip:
                engine = "transformers" if args.smoke else "vllm"
                record(f"{engine}_ray_data_e2e", _bench_pipeline, args, engine, Path(tmp))
            if "ray_data_llm" not in args.skip:
                record("ray_data_llm_e2e", _bench_pipeline, args, "ray_data_llm", Path(tmp))
    finally:
        ray.shutdown()

    # The reference row: vLLM direct, or (vLLM skipped) the first path measured.
    ref_name = "vllm_direct" if "vllm_direct" in results else next(iter(results), "vllm_direct")
    ref = results.get(ref_name, {})
    ref_label = "vLLM direct" if ref_name == "vllm_direct" else ref_name
    ref_texts = ref.get("texts")
    for name, r in results.items():
        texts = r.pop("texts", None)
        if ref_texts and texts:
            r[f"same_text_as_{ref_name}"] = round(sum(a == b for a, b in zip(texts, ref_texts)) / len(ref_texts), 3)
    base = ref.get("tok_per_s")
    lines = [f"\n### Generation: {args.prompts} prompts x {args.max_tokens} tokens, model {Path(args.model).name}\n",
             f"| engine | start s | gen s (warm) | end-to-end s | tok/s | vs {ref_label} | same text |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | |")
            continue
        ratio = f"{r['tok_per_s'] / base:.2f}x" if base else "n/a"
        lines.append(f"| {name} | {r.get('startup_s') or '-'} | {r.get('gen_s') or '-'} | {r.get('end_to_end_s') or '-'} | "
                     f"{r['tok_per_s']} | {ratio} | {r.get(f'same_text_as_{ref_name}', '-')} |")
    if "vllm_ray_actor" in results and "gen_s" in results["vllm_ray_actor"] and ref.get("gen_s"):
        overhead = results["vllm_ray_actor"]["gen_s"] - ref["gen_s"]
        lines.append(f"\nRay actor overhead on one warm batch: {overhead * 1000:.0f} ms "
                     f"({100 * overhead / ref['gen_s']:.1f}% of the direct generate time).")
    lines.append(f"\nLoad average (1 min) at start / end: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
                 f"on {os.cpu_count()} CPUs (timings from a busy machine are noisy).")
    print("\n".join(lines), flush=True)
    print_stamp("generate", "end")
    out = {"benchmark": "generate", "quick": args.quick, "smoke": args.smoke, "stamp": started, "model": args.model, "prompts": args.prompts,
           "max_tokens": args.max_tokens, "repeats": args.repeats, "machine": {"cpus": os.cpu_count(),
           "platform": platform.platform(), "num_gpus": args.num_gpus,
           # Timings on a shared machine are only comparable at a similar load.
           "loadavg_1m_start": round(load_before, 1), "loadavg_1m_end": round(os.getloadavg()[0], 1)},
           "results": results}
    out_path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {out_path}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
