"""Serving benchmark: latency p50/p99 and throughput at several concurrency levels, and time to scale out.

Side by side on the same model (the tiny Llama unless --model) and the same 127.0.0.1 load:
- `serve-transformers`: our Serve app (ingress + transformers engine with dynamic batching);
- `serve-vllm`: our Serve app with the vLLM engine on Ray Serve LLM's `LLMServer` (the default);
- `serve-vllm-asyncllm`: our Serve app with the vLLM engine in our own `ModelServer` (AsyncLLM in the replica);
- `ray-serve-llm`: Ray Serve LLM as shipped (`build_openai_app`: Ray's ingress + `LLMServer`), same engine settings;
- `vllm-api-server`: vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`), the
  reference for what Serve's extra hops (proxy -> ingress -> engine replica) cost.
Then a step load against an autoscaled Serve deployment (1 -> 2 replicas): seconds until the second
replica is RUNNING.

    python -m benchmarks.bench_serve --quick      # < ~4 min here; writes benchmarks/results/serve.json

Load is bounded (count and time) and goes to 127.0.0.1 only. On this 2-core machine the load
generator competes with the servers for CPU: compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import add_smoke_arg, print_stamp, result_path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "Tell me the steps of synthesizing aspirin."}]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


async def _load(base_url: str, model: str, concurrency: int, requests: int, max_tokens: int,
                time_limit_s: float) -> dict:
    """`requests` chat completions with `concurrency` in flight; bounded by `time_limit_s`."""
    import httpx

    lat: list[float] = []
    tokens = 0
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    deadline = time.monotonic() + time_limit_s
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True}  # fixed output length (vLLM honours it; our engines ignore it, see note)

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        async def one():
            nonlocal tokens, errors
            async with sem:
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"{base_url}/chat/completions", json=body)
                    r.raise_for_status()
                    tokens += r.json()["usage"]["completion_tokens"]
                    lat.append(time.perf_counter() - t0)
                except Exception:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors, "wall_s": round(wall, 3),
            "p50_ms": round(percentile(lat, 50) * 1000, 1), "p99_ms": round(percentile(lat, 99) * 1000, 1),
            "req_per_s": round(len(lat) / wall, 2), "tok_per_s": round(tokens / wall, 1)}


def sweep(base_url: str, model: str, levels: list[int], per_level: int, max_tokens: int) -> list[dict]:
    asyncio.run(_load(base_url, model, 2, 4, max_tokens, 60))  # warm-up
    rows = []
    for c in levels:
        row = asyncio.run(_load(base_url, model, c, max(per_level, 2 * c), max_tokens, 120))
        print(f"  c={c:<3} p50 {row['p50_ms']:>8.1f} ms  p99 {row['p99_ms']:>8.1f} ms  {row['req_per_s']:>7.2f} req/s  "
              f"{row['tok_per_s']:>8.1f} tok/s  errors {row['errors']}", flush=True)
        rows.append(row)
    return rows


def bench_serve_app(cfg, engine: str, levels, per_level, max_tokens) -> dict:
    from libra_ray.serve import serving

    cfg = cfg.model_copy(deep=True)
    cfg.serve.policy.engine = engine
    cfg.serve.policy.autoscaling.max_replicas = 1
    t0 = time.perf_counter()
    with serving(cfg) as app:
        ready = time.perf_counter() - t0
        print(f"serve-{engine}: ready in {ready:.1f} s at {app.base_url}", flush=True)
        rows = sweep(app.base_url, "policy", levels, per_level, max_tokens)
    return {"ready_s": round(ready, 1), "levels": rows}


def bench_vllm_api_server(model_path: str, levels, per_level, max_tokens, dtype: str = "auto") -> dict:
    from libra_ray.runtime import free_port
    from libra_ray.serve.server import wait_healthy

    port = free_port()
    from libra_ray.engines.env import vllm_env

    env = {**os.environ, **vllm_env()}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path, "--host", "127.0.0.1",
           "--port", str(port), "--served-model-name", "policy", "--max-model-len", "1024", "--enforce-eager",
           "--gpu-memory-utilization", "0.5", "--disable-log-stats", "--dtype", dtype]
    log_dir = Path(tempfile.gettempdir()) / "libra_ray_bench_serve"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "vllm_api_server.log", "w")  # kept out of the repo; read it if startup fails
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.perf_counter()
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout_s=240)
        ready = time.perf_counter() - t0
        print(f"vllm-api-server: ready in {ready:.1f} s", flush=True)
        rows = sweep(f"http://127.0.0.1:{port}/v1", "policy", levels, per_level, max_tokens)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own process group: the server and its EngineCore
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return {"ready_s": round(ready, 1), "levels": rows}


def bench_ray_serve_llm(cfg, model_path: str, levels, per_level, max_tokens) -> dict:
    """Ray Serve LLM as shipped (`ray.serve.llm.build_openai_app`: Ray's `OpenAiIngress` + `LLMServer`),
    with the same vLLM engine settings and resources as our app's vLLM model (`ray_llm.llm_config`)."""
    import httpx
    from ray import serve
    from ray.serve.llm import build_openai_app

    from libra_ray.serve.ray_llm import llm_config
    from libra_ray.serve.server import ensure_serve

    spec = cfg.serve.policy.model_copy(update={"engine": "vllm", "path": model_path})
    spec.autoscaling.max_replicas = 1
    app = build_openai_app({"llm_configs": [llm_config(spec)],
                            "ingress_deployment_config": {"ray_actor_options": {"num_cpus": cfg.serve.ingress.num_cpus}}})
    t0 = time.perf_counter()
    host, port, started = ensure_serve("127.0.0.1", 0)
    name, root = "ray_serve_llm", f"http://127.0.0.1:{port}/ray-serve-llm"
    try:
        serve.run(app, name=name, route_prefix="/ray-serve-llm", blocking=False)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # ready = it answers a chat request (the engine is up)
            try:
                r = httpx.post(f"{root}/v1/chat/completions", timeout=30, json={"model": "policy", "messages": PROMPT,
                                                                                "max_tokens": 1})
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        ready = time.perf_counter() - t0
        print(f"ray-serve-llm: ready in {ready:.1f} s", flush=True)
        rows = sweep(f"{root}/v1", "policy", levels, per_level, max_tokens)
    finally:
        serve.delete(name)
        if started:
            serve.shutdown()
    return {"ready_s": round(ready, 1), "levels": rows, "load_average": os.getloadavg()[0]}


def bench_scale_out(cfg, concurrency: int, max_tokens: int) -> dict:
    """Step load from 0 to `concurrency` in flight; time until the policy has 2 RUNNING replicas."""
    from libra_ray.serve import serving
    from libra_ray.serve.server import replica_counts

    cfg = cfg.model_copy(deep=True)
    auto = cfg.serve.policy.autoscaling
    auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests = 1, 2, 1
    auto.upscale_delay_s, auto.metrics_interval_s, auto.look_back_period_s = 0.5, 0.5, 2
    cfg.serve.policy.engine = "transformers"
    with serving(cfg) as app:
        stop = threading.Event()
        result: dict = {}

        def load():
            while not stop.is_set():
                asyncio.run(_load(app.base_url, "policy", concurrency, concurrency * 4, max_tokens, 30))

        t0 = time.perf_counter()
        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        deadline = t0 + 90
        while time.perf_counter() < deadline:
            if replica_counts(app.name).get("model-policy") == 2:
                result["scale_out_s"] = round(time.perf_counter() - t0, 1)
                break
            time.sleep(0.25)
        stop.set()
        thread.join(timeout=120)
        result.setdefault("scale_out_s", None)
        print(f"scale-out 1 -> 2 replicas under a step load of {concurrency} in flight: "
              f"{result['scale_out_s']} s", flush=True)
    return {"concurrency": concurrency, **result}


def markdown(results: dict) -> str:
    ref = {r["concurrency"]: r for r in results["servers"].get("vllm-api-server", {}).get("levels", [])}
    lines = ["| server | concurrency | p50 ms | p99 ms | req/s | tok/s | req/s vs vllm-api-server |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, res in results["servers"].items():
        for r in res["levels"]:
            base = ref.get(r["concurrency"])
            ratio = f"{r['req_per_s'] / base['req_per_s']:.2f}x" if base and base["req_per_s"] else "-"
            lines.append(f"| {name} | {r['concurrency']} | {r['p50_ms']} | {r['p99_ms']} | {r['req_per_s']} | "
                         f"{r['tok_per_s']} | {ratio} |")
    ready = ", ".join(f"{n} {r['ready_s']} s" for n, r in results["servers"].items())
    lines.append(f"\nReady time: {ready}. Scale-out 1 -> 2 under a step load: "
                 f"{results.get('scale_out', {}).get('scale_out_s')} s.")
    return "\n".join(lines)


def ray_serve_llm_line(results: dict) -> str:
    """One line: Ray Serve LLM as shipped and our app on it, per concurrency, vs vLLM's own server."""
    servers = results["servers"]
    ref = {r["concurrency"]: r["req_per_s"] for r in servers.get("vllm-api-server", {}).get("levels", [])}
    parts = []
    for name in ("ray-serve-llm", "serve-vllm", "serve-vllm-asyncllm"):
        for r in servers.get(name, {}).get("levels", []):
            base = ref.get(r["concurrency"])
            parts.append(f"{name} c={r['concurrency']} {r['req_per_s'] / base:.2f}x" if base else
                         f"{name} c={r['concurrency']} {r['req_per_s']} req/s")
    return (f"ray.serve.llm rows, req/s vs vllm-api-server: {'; '.join(parts) or 'not run'} "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {results['machine']}, "
            f"load average at start {results['load_average_at_start']:.2f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer levels and requests (< ~4 min here)")
    parser.add_argument("--model", default="tiny", help="model ref (tiny, a folder or a hub id)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--vllm-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="dtype of every server (auto = the project's rule: float32 on CPU, bfloat16 on CUDA; "
                             "vLLM's own server is given the resolved dtype too)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["serve-transformers", "serve-vllm",
                                                                   "vllm-api-server", "scale-out",
                                                                   "serve-vllm-asyncllm", "ray-serve-llm"])
    parser.add_argument("--out", default=None, help="result JSON (default: results/serve.json)")
    add_smoke_arg(parser)  # smoke: 4 requests at concurrency 1: vLLM's server, Serve + transformers, Ray Serve LLM
    args = parser.parse_args(argv)
    if args.smoke:
        args.skip = sorted(set(args.skip) | {"serve-vllm", "scale-out", "serve-vllm-asyncllm"})
    RESULTS = result_path(args.out, "serve", args.smoke)
    stamp = print_stamp("serve")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from libra_ray.config import load_config
    from libra_ray.runtime import ray_session
    from libra_ray.tiny import resolve_model

    levels = [1] if args.smoke else [1, 8] if args.quick else [1, 4, 8, 16, 32]
    per_level = 4 if args.smoke else 16 if args.quick else 64
    cfg = load_config(None, ["ray.num_cpus=2", "serve.port=0", f"serve.policy.path={args.model}",
                             "serve.policy.num_cpus=0.5", "serve.judge.num_cpus=0.25",
                             f"serve.policy.dtype={args.vllm_dtype}",
                             f"cache_dir={ROOT / '.cache' / 'libra_ray'}", "storage=/tmp/libra_ray_bench_serve"])
    model_path = resolve_model(args.model, cfg)
    results: dict = {"model": args.model, "quick": args.quick, "smoke": args.smoke, "stamp": stamp, "max_tokens": args.max_tokens,
                     "vllm_dtype": args.vllm_dtype, "load_average_at_start": os.getloadavg()[0],
                     "machine": f"{os.cpu_count()} CPUs", "servers": {}}
    t_start = time.perf_counter()
    if "vllm-api-server" not in args.skip:
        from libra_ray.engines.identity import resolve_dtype

        results["servers"]["vllm-api-server"] = bench_vllm_api_server(model_path, levels, per_level, args.max_tokens,
                                                                      resolve_dtype(args.vllm_dtype, "cpu"))
    with ray_session(cfg):
        for engine in ("transformers", "vllm"):
            if f"serve-{engine}" not in args.skip:
                results["servers"][f"serve-{engine}"] = bench_serve_app(cfg, engine, levels, per_level, args.max_tokens)
        if "serve-vllm-asyncllm" not in args.skip:  # our app's other vLLM path: ModelServer + AsyncLLM
            libra = cfg.model_copy(deep=True)
            libra.serve.policy.vllm_server = "libra"
            results["servers"]["serve-vllm-asyncllm"] = bench_serve_app(libra, "vllm", levels, per_level,
                                                                        args.max_tokens)
        if "ray-serve-llm" not in args.skip:
            results["servers"]["ray-serve-llm"] = bench_ray_serve_llm(cfg, model_path, levels, per_level,
                                                                      args.max_tokens)
        if "scale-out" not in args.skip:
            results["scale_out"] = bench_scale_out(cfg, concurrency=8, max_tokens=args.max_tokens)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    RESULTS.write_text(json.dumps(results, indent=2))
    print("\n" + markdown(results))
    print(ray_serve_llm_line(results))
    print_stamp("serve", "end")
    print(f"\n(wrote {RESULTS}; {results['total_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
