"""Synthesis fan-out benchmark: how close the teacher fan-out gets to the ideal, and to a rate budget.

    python -m benchmarks.bench_synth            # full
    python -m benchmarks.bench_synth --quick    # < ~3 min on a 2-core machine

Against the local test server with a fixed 200 ms latency, the ideal is in_flight / 0.2 requests/s.
Side by side at 1, 8, 64, 256 requests in flight:
- `ChatClient.chat_many` in one process (the client alone),
- the synth stage on Ray Data (2 `TeacherStage` actors, 3 requests per seed row; rows/s too),
- Ray's `ray.data.llm` `HttpRequestProcessorConfig` (2 actors, same batch sizes),
- a plain sequential `openai` loop (1 in flight).
Then with a server-side limit of `rpm` requests/minute: the synth stage with the same cluster-wide budget
(named Ray actor) vs no budget: achieved rate / budget and the number of 429s.
Writes benchmarks/results/synth.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LATENCY = 0.2
RESULTS = Path(__file__).resolve().parent / "results" / "synth.json"
RESPONDER = "libra_ray.synth.testing:scripted_teacher"


class RemoteServer:
    """The test server in a process of its own (`testserver.serve_forever`), so the clients measured
    here never share its GIL; counters come from its `/_stats` route."""

    def __init__(self, **kwargs):
        self.kwargs = {"responder": RESPONDER, "keep_log": True, **kwargs}

    def __enter__(self) -> "RemoteServer":
        import subprocess

        self._dir = tempfile.mkdtemp(prefix="bench_server_")
        port_file = os.path.join(self._dir, "url")
        code = ("import json, sys; from libra_ray.llm.testserver import serve_forever; "
                "serve_forever(sys.argv[1], **json.loads(sys.argv[2]))")
        self.proc = subprocess.Popen([sys.executable, "-c", code, port_file, json.dumps(self.kwargs)])
        deadline = time.monotonic() + 60
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("benchmark test server did not start")
            time.sleep(0.05)
        self.base_url = Path(port_file).read_text()
        return self

    def stats(self) -> dict:
        import httpx

        return httpx.get(self.base_url.removesuffix("/v1") + "/_stats", timeout=30).json()

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _delta(before: dict, after: dict) -> tuple[dict, list[float]]:
    counts = {k: after["counts"].get(k, 0) - before["counts"].get(k, 0) for k in after["counts"]}
    return counts, after["times"][len(before["times"]):]


def _window(times: list[float], fallback: float) -> float:
    """First to last request seen by the server (+ one latency): the fan-out without start-up costs."""
    return (max(times) - min(times) + LATENCY) if len(times) > 1 else fallback


def bench_client(server, in_flight: int, waves: int) -> dict:
    from libra_ray.llm.client import ChatClient
    from libra_ray.llm.config import EndpointConfig

    client = ChatClient(EndpointConfig(base_url=server.base_url, max_concurrency=in_flight, api_key_env=None))
    n = max(in_flight * waves, 10)
    batch = [[{"role": "user", "content": f"bench client {in_flight} {i} {time.time_ns()}"}] for i in range(n)]
    before = server.stats()
    start = time.perf_counter()
    results = client.chat_many(batch)
    elapsed = time.perf_counter() - start
    _, times = _delta(before, server.stats())
    window = _window(times, elapsed)
    return {"requests": n, "seconds": elapsed, "fanout_seconds": window, "req_s": n / window,
            "errors": sum(not r.ok for r in results)}


def bench_synth_stage(server, in_flight: int, waves: int, tmp: str, tag: str, rpm: int | None = None) -> dict:
    from libra_ray.config import load_config
    from libra_ray.synth.pipeline import build_dataset

    actors = 1 if in_flight == 1 else 2
    per_actor = max(1, in_flight // actors)
    seeds_needed = max(4, math.ceil(in_flight * waves / 3))
    compounds = max(1, math.ceil(seeds_needed / 2))  # 2 forms per compound
    overrides = [f"storage={tmp}", f"name={tag}", f"synth.teacher.base_url={server.base_url}",
                 f"synth.num_legitimate={compounds // 2 + compounds % 2}", f"synth.num_illegitimate={compounds // 2}",
                 "synth.n_prompt=1", "synth.n_chosen=1", "synth.n_rejected=1", f"synth.concurrency={actors}",
                 f"synth.batch_size={max(1, math.ceil(per_actor / 3))}", f"synth.teacher.max_concurrency={per_actor}",
                 "synth.teacher.api_key_env=null", "synth.teacher.max_retries=20", f"synth.seed={time.time_ns() % 10**6}"]
    if rpm:
        overrides.append(f"synth.teacher.requests_per_minute={rpm}")
    cfg = load_config(None, overrides)
    before = server.stats()
    start = time.perf_counter()
    summary = build_dataset(cfg, server.base_url, progress=False)
    elapsed = time.perf_counter() - start
    sent, times = _delta(before, server.stats())
    window = _window(times, elapsed)
    ok = sent.get("ok", 0)
    return {"seeds": summary["seeds"], "requests": sum(sent.values()), "ok": ok, "rate_limited": sent.get("429", 0),
            "seconds": elapsed, "fanout_seconds": window, "req_s": ok / window, "rows_s": summary["seeds"] / window,
            "errors": summary["errors"]}


def bench_ray_data_llm(server, in_flight: int, waves: int) -> dict:
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    actors = 1 if in_flight == 1 else 2
    n = max(in_flight * waves, 10)
    config = HttpRequestProcessorConfig(url=f"{server.base_url}/chat/completions", headers={}, concurrency=actors,
                                        batch_size=max(1, in_flight // actors), max_retries=3,
                                        http_request_stage={"num_cpus": 0.1})
    processor = build_processor(
        config,
        preprocess=lambda row: {"payload": {"model": "tiny", "max_tokens": 16,
                                            "messages": [{"role": "user", "content": row["q"]}]}},
        postprocess=lambda row: {"text": row["http_response"]["choices"][0]["message"]["content"]},
        preprocess_map_kwargs={"num_cpus": 0.1}, postprocess_map_kwargs={"num_cpus": 0.1})
    ds = ray.data.from_items([{"q": f"bench rdl {in_flight} {i} {time.time_ns()}"} for i in range(n)])
    before = server.stats()
    start = time.perf_counter()
    out = processor(ds).take_all()
    elapsed = time.perf_counter() - start
    _, times = _delta(before, server.stats())
    window = _window(times, elapsed)
    return {"requests": n, "seconds": elapsed, "fanout_seconds": window, "req_s": len(out) / window}


def bench_openai_sequential(server, n: int) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    start = time.perf_counter()
    for i in range(n):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"seq {i}"}], max_tokens=16)
    elapsed = time.perf_counter() - start
    return {"requests": n, "seconds": elapsed, "req_s": n / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer waves and a shorter rate-limit run")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 64, 256])
    args = parser.parse_args(argv)
    waves = 2 if args.quick else 5
    rpm = 1200 if args.quick else 3000
    rate_seconds = 15 if args.quick else 40

    import logging

    import ray

    logging.getLogger("ray").setLevel(logging.WARNING)
    for attempt in range(3):  # a busy machine can miss Ray's fixed 30 s raylet start window
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bench_synth")
            break
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception here
            if attempt == 2:
                raise
            print(f"ray.init failed ({err}); retrying", flush=True)
            ray.shutdown()
    results: dict = {"latency_s": LATENCY, "waves": waves, "quick": args.quick, "fanout": [], "rate_limit": []}
    tmp = tempfile.mkdtemp(prefix="bench_synth_")
    try:
        with RemoteServer(latency_s=LATENCY) as server:
            seq = bench_openai_sequential(server, 5 if args.quick else 20)
            for level in args.levels:
                ideal = level / LATENCY
                row = {"in_flight": level, "ideal_req_s": ideal,
                       "client": bench_client(server, level, waves),
                       "synth_stage": bench_synth_stage(server, level, waves, tmp, f"fanout{level}"),
                       "ray_data_llm": bench_ray_data_llm(server, level, waves)}
                results["fanout"].append(row)
                print(f"in flight {level}: client {row['client']['req_s']:.1f} req/s, synth {row['synth_stage']['req_s']:.1f}, "
                      f"ray.data.llm {row['ray_data_llm']['req_s']:.1f} (ideal {ideal:.0f})", flush=True)
            results["openai_sequential"] = seq
        # Rate limit: the server allows `rpm`; compare the synth stage with and without the same budget.
        per_s = rpm / 60
        for budget in (rpm, None):
            with RemoteServer(latency_s=LATENCY, rpm=rpm, retry_after_s=1.0) as server:
                res = bench_synth_stage(server, 64, max(1, int(per_s * rate_seconds / 64)), tmp,
                                        f"rate{budget or 0}", rpm=budget)
                res.update(budget_rpm=budget, server_rpm=rpm, ok_per_s=res["ok"] / res["fanout_seconds"],
                           fraction_of_budget=res["ok"] / res["fanout_seconds"] / per_s)
                results["rate_limit"].append(res)
                print(f"rate limit {rpm} rpm, client budget {budget}: {res['ok_per_s']:.1f} ok/s "
                      f"({res['fraction_of_budget']:.2f} of budget), 429s {res['rate_limited']}", flush=True)
    finally:
        ray.shutdown()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(render(results))
    return 0


def render(results: dict) -> str:
    lines = [f"\n### Synthesis fan-out vs ideal (server latency {results['latency_s'] * 1000:.0f} ms; "
             "req/s measured at the server, first to last request)", "",
             "| in flight | ideal req/s | ChatClient req/s (ratio) | synth stage req/s (ratio) | synth rows/s | "
             "ray.data.llm req/s (ratio) |", "|---|---|---|---|---|---|"]
    for r in results["fanout"]:
        ideal = r["ideal_req_s"]
        c, s, d = r["client"]["req_s"], r["synth_stage"]["req_s"], r["ray_data_llm"]["req_s"]
        lines.append(f"| {r['in_flight']} | {ideal:.0f} | {c:.1f} ({c / ideal:.2f}) | {s:.1f} ({s / ideal:.2f}) | "
                     f"{r['synth_stage']['rows_s']:.1f} | {d:.1f} ({d / ideal:.2f}) |")
    seq = results.get("openai_sequential")
    if seq:
        lines.append(f"\nPlain sequential openai loop: {seq['req_s']:.2f} req/s (ideal {1 / results['latency_s']:.0f}, "
                     f"ratio {seq['req_s'] * results['latency_s']:.2f}).")
    if results["rate_limit"]:
        lines += ["", "### Server rate limit: staying on budget", "",
                  "| server rpm | client budget rpm | ok/s | fraction of budget | 429s | requests sent |", "|---|---|---|---|---|---|"]
        for r in results["rate_limit"]:
            lines.append(f"| {r['server_rpm']} | {r['budget_rpm'] or 'none'} | {r['ok_per_s']:.1f} | "
                         f"{r['fraction_of_budget']:.2f} | {r['rate_limited']} | {r['requests']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
