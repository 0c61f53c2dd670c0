"""Synthesis fan-out benchmark: how close the teacher fan-out gets to the ideal, and to a rate budget.

    python -m benchmarks.bench_synth            # full
    python -m benchmarks.bench_synth --quick    # < ~3 min on a 2-core machine
    python -m benchmarks.bench_synth --smoke    # 8 in flight, one short rate-limit case: does it still run?

Against the local test server with a fixed 200 ms latency, the ideal is in_flight / 0.2 requests/s.
Side by side at 1, 8, 64, 256 requests in flight:
- `ChatClient.chat_many` in one process (the client alone; client CPU per request),
- `openai.AsyncOpenAI` and a raw `aiohttp.ClientSession` in the same process (asyncio.gather under a
  semaphore, no retries/cache: the references),
- the synth stage on Ray Data (2 `TeacherStage` actors, 3 requests per seed row; rows/s too), with a
  CPU profile per request: server process, teacher actors (client + Ray Data inside them), other Ray
  processes (raylet, GCS, budget actor...) and the driver, sampled with psutil,
- Ray's `ray.data.llm` `HttpRequestProcessorConfig` (2 actors, same batch sizes),
- a plain sequential `openai` loop (1 in flight).
Then with a server-side limit of `rpm` requests/minute (the server sends `x-ratelimit-*` headers): the
synth stage with a cluster-wide budget equal to the limit, configured at 2x the limit (it must learn the
real one), no budget (discovered), and no budget with learning off. The fraction of the limit is measured
on the server's timestamps of accepted requests over the steady part of the run (the first and last
`STEADY_TRIM_S` seconds of accepted requests dropped).
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

from benchmarks.common import add_smoke_arg, print_stamp, result_path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LATENCY = 0.2
STEADY_TRIM_S = 2.0
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
        import urllib.request

        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/_stats", timeout=30) as resp:
            return json.loads(resp.read())

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _delta(before: dict, after: dict) -> tuple[dict, list[float]]:
    counts = {k: after["counts"].get(k, 0) - before["counts"].get(k, 0) for k in after["counts"]}
    return counts, after["times"][len(before["times"]):]


def _window(times: list[float], fallback: float) -> float:
    """First to last request seen by the server (+ one latency): the fan-out without start-up costs."""
    return (max(times) - min(times) + LATENCY) if len(times) > 1 else fallback


def _messages(tag: str, n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"bench {tag} {i} {time.time_ns()}"}] for i in range(n)]


def _measure(server, n: int, run) -> dict:
    """Run `run()` (sends n requests, returns failures); rate from the server's first to last request,
    and this process's CPU per request."""
    before = server.stats()
    start, cpu = time.perf_counter(), time.process_time()
    errors = run()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    _, times = _delta(before, server.stats())
    window = _window(times, elapsed)
    return {"requests": n, "seconds": elapsed, "fanout_seconds": window, "req_s": n / window,
            "cpu_ms_per_request": 1000 * cpu / n, "errors": errors}


def bench_client(server, in_flight: int, waves: int) -> dict:
    from libra_ray.llm.client import ChatClient
    from libra_ray.llm.config import EndpointConfig

    client = ChatClient(EndpointConfig(base_url=server.base_url, max_concurrency=in_flight, api_key_env=None))
    n = max(in_flight * waves, 10)
    batch = _messages(f"client {in_flight}", n)
    return _measure(server, n, lambda: sum(not r.ok for r in client.chat_many(batch)))


async def _gather(in_flight: int, batch: list, send) -> int:
    """Send every message list with `send`, `in_flight` at a time; the number of failures."""
    import asyncio

    sem = asyncio.Semaphore(in_flight)

    async def one(messages) -> bool:
        async with sem:
            try:
                await send(messages)
                return False
            except Exception:  # noqa: BLE001 - a reference loop: count, don't retry
                return True

    return sum(await asyncio.gather(*(one(m) for m in batch)))


def bench_async_openai(server, in_flight: int, waves: int) -> dict:
    import asyncio

    from openai import AsyncOpenAI

    n = max(in_flight * waves, 10)
    batch = _messages(f"asyncopenai {in_flight}", n)

    async def run() -> int:
        async with AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as client:
            return await _gather(in_flight, batch, lambda m: client.chat.completions.create(
                model="tiny", messages=m, max_tokens=16))

    return _measure(server, n, lambda: asyncio.run(run()))


def bench_aiohttp_raw(server, in_flight: int, waves: int) -> dict:
    import asyncio

    n = max(in_flight * waves, 10)
    batch = _messages(f"aiohttp {in_flight}", n)
    url = f"{server.base_url}/chat/completions"

    async def run() -> int:
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def send(m):
                async with session.post(url, json={"model": "tiny", "messages": m, "max_tokens": 16}) as resp:
                    resp.raise_for_status()
                    await resp.json()

            return await _gather(in_flight, batch, send)

    return _measure(server, n, lambda: asyncio.run(run()))


class CPUSampler:
    """CPU seconds per process group while a block runs, sampled every 0.2 s with psutil (Ray Data's
    actors exit when the dataset is done: their last < 0.2 s may be missed). Groups: the test server,
    the teacher actors (`MapWorker` processes: the client and Ray Data inside them), other Ray processes
    (raylet, GCS, budget actor, idle workers) and this driver."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid

    def _group(self, proc) -> str | None:
        if proc.pid == self.server_pid:
            return "server"
        if proc.pid == os.getpid():
            return "driver"
        try:
            cmd = " ".join(proc.cmdline())
        except Exception:  # noqa: BLE001 - gone, or not ours to read
            return None
        if "MapWorker" in cmd:
            return "teacher_actors"
        if "raylet" in cmd or "gcs_server" in cmd or cmd.startswith("ray::") or "default_worker.py" in cmd:
            return "ray_other"
        return None

    def _sample(self) -> None:
        import psutil

        for proc in psutil.process_iter():
            pid = proc.pid
            if pid not in self._groups or (self._groups[pid] == "ray_other" and pid not in self._renamed):
                # Ray workers are renamed to ray::MapWorker... once they host an actor: look again.
                group = self._group(proc)
                if group == "teacher_actors":
                    self._renamed.add(pid)
                self._groups[pid] = group
            if self._groups[pid] is None:
                continue
            try:
                t = proc.cpu_times()
            except Exception:  # noqa: BLE001 - exited between listing and reading
                continue
            used = t.user + t.system
            self._first.setdefault(pid, used if not self._started else 0.0)
            self._last[pid] = used

    def __enter__(self) -> "CPUSampler":
        import threading

        self._groups, self._renamed, self._first, self._last, self._started = {}, set(), {}, {}, False
        self._sample()
        self._started = True
        self._stop = threading.Event()

        def loop():
            while not self._stop.wait(0.2):
                self._sample()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.seconds: dict[str, float] = {}
        for pid, used in self._last.items():
            group = self._groups.get(pid)
            if group is None:
                continue
            self.seconds[group] = self.seconds.get(group, 0.0) + used - self._first.get(pid, 0.0)


def bench_synth_stage(server, in_flight: int, waves: int, tmp: str, tag: str, rpm: int | None = None,
                      learn: bool = True, requests: int | None = None) -> dict:
    from libra_ray.config import load_config
    from libra_ray.synth.pipeline import build_dataset

    actors = 1 if in_flight == 1 else 2
    per_actor = max(1, in_flight // actors)
    seeds_needed = max(4, math.ceil((requests or in_flight * waves) / 3))
    compounds = max(1, math.ceil(seeds_needed / 2))  # 2 forms per compound
    overrides = [f"storage={tmp}", f"name={tag}", f"synth.teacher.base_url={server.base_url}",
                 f"synth.num_legitimate={compounds // 2 + compounds % 2}", f"synth.num_illegitimate={compounds // 2}",
                 "synth.n_prompt=1", "synth.n_chosen=1", "synth.n_rejected=1", f"synth.replicas={actors}",
                 f"synth.batch_size={max(1, math.ceil(per_actor / 3))}", f"synth.teacher.max_concurrency={per_actor}",
                 "synth.teacher.api_key_env=null", "synth.teacher.max_retries=20", f"synth.seed={time.time_ns() % 10**6}",
                 f"synth.teacher.learn_rate_limit={str(learn).lower()}"]
    if rpm:
        overrides.append(f"synth.teacher.requests_per_minute={rpm}")
    cfg = load_config(None, overrides)
    before = server.stats()
    start = time.perf_counter()
    with CPUSampler(server.proc.pid) as cpu:
        summary = build_dataset(cfg, server.base_url, progress=False)
    elapsed = time.perf_counter() - start
    after = server.stats()
    sent, times = _delta(before, after)
    ok_times = after["ok_times"][len(before["ok_times"]):]
    window = _window(times, elapsed)
    ok = sent.get("ok", 0)
    total = sum(sent.values())
    return {"seeds": summary["seeds"], "requests": total, "ok": ok, "rate_limited": sent.get("429", 0),
            "seconds": elapsed, "fanout_seconds": window, "req_s": ok / window, "rows_s": summary["seeds"] / window,
            "errors": summary["errors"], "steady_ok_per_s": _steady_rate(ok_times),
            "cpu_ms_per_request": {k: round(1000 * v / max(1, total), 3) for k, v in sorted(cpu.seconds.items())}}


def _steady_rate(ok_times: list[float]) -> float | None:
    """Accepted requests per second between the first and the last STEADY_TRIM_S seconds of them."""
    if len(ok_times) < 2:
        return None
    lo, hi = min(ok_times) + STEADY_TRIM_S, max(ok_times) - STEADY_TRIM_S
    if hi - lo < 1.0:
        return None
    return sum(1 for t in ok_times if lo <= t <= hi) / (hi - lo)


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
    parser.add_argument("--skip-rate-limit", action="store_true", help="fan-out tables only")
    parser.add_argument("--only-rate-limit", action="store_true", help="rate-limit table only")
    parser.add_argument("--rate-cases", type=int, nargs="+", default=None,
                        help="run only these rate-limit cases (0 budget = limit, 1 2x limit, 2 none, 3 none, no learning)")
    parser.add_argument("--out", default=None, help="result JSON (default: results/synth.json)")
    add_smoke_arg(parser)
    args = parser.parse_args(argv)
    waves = 2 if args.quick else 5
    rpm = 1200 if args.quick else 3000
    rate_seconds = 20 if args.quick else 40
    if args.smoke:
        waves, rate_seconds, args.levels = 1, 4, [8]
        args.rate_cases = args.rate_cases if args.rate_cases is not None else [0]
    out_path = result_path(args.out, "synth", args.smoke)
    started = print_stamp("synth")

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
    results: dict = {"latency_s": LATENCY, "waves": waves, "quick": args.quick, "smoke": args.smoke, "stamp": started,
                     "fanout": [], "rate_limit": [], "load_before": os.getloadavg()}
    tmp = tempfile.mkdtemp(prefix="bench_synth_")
    try:
        with RemoteServer(latency_s=LATENCY) as server:
            if not args.only_rate_limit:
                results["openai_sequential"] = bench_openai_sequential(server, 5 if args.quick or args.smoke else 20)
                bench_client(server, 8, 1)  # warm this process's connection pool and imports
            for level in ([] if args.only_rate_limit else args.levels):
                ideal = level / LATENCY
                row = {"in_flight": level, "ideal_req_s": ideal, "load": os.getloadavg()[0],
                       "client": bench_client(server, level, waves),
                       "aiohttp": bench_aiohttp_raw(server, level, waves),
                       "async_openai": bench_async_openai(server, level, waves),
                       "synth_stage": bench_synth_stage(server, level, waves, tmp, f"fanout{level}"),
                       "ray_data_llm": bench_ray_data_llm(server, level, waves)}
                results["fanout"].append(row)
                print(f"in flight {level}: client {row['client']['req_s']:.1f} req/s "
                      f"({row['client']['cpu_ms_per_request']:.2f} ms CPU), aiohttp {row['aiohttp']['req_s']:.1f}, "
                      f"AsyncOpenAI {row['async_openai']['req_s']:.1f}, synth {row['synth_stage']['req_s']:.1f} "
                      f"{row['synth_stage']['cpu_ms_per_request']}, ray.data.llm {row['ray_data_llm']['req_s']:.1f} "
                      f"(ideal {ideal:.0f})", flush=True)
        # Rate limit: the server allows `rpm` (and says so in x-ratelimit-* headers).
        per_s = rpm / 60
        cases = [("budget = limit", rpm, True), ("budget = 2x limit (learns)", 2 * rpm, True),
                 ("no budget (discovers)", None, True), ("no budget, learning off", None, False)]
        if args.rate_cases is not None:
            cases = [cases[i] for i in args.rate_cases]
        for label, budget, learn in ([] if args.skip_rate_limit else cases):
            with RemoteServer(latency_s=LATENCY, rpm=rpm, retry_after_s=1.0) as server:
                res = bench_synth_stage(server, 64, 1, tmp, f"rate{len(results['rate_limit'])}", rpm=budget,
                                        learn=learn, requests=int(per_s * rate_seconds))
                steady = res["steady_ok_per_s"]
                res.update(case=label, budget_rpm=budget, learn=learn, server_rpm=rpm, load=os.getloadavg()[0],
                           ok_per_s=res["ok"] / res["fanout_seconds"],
                           fraction_of_limit=res["ok"] / res["fanout_seconds"] / per_s,
                           steady_fraction_of_limit=steady / per_s if steady else None,
                           rate_limited_fraction=res["rate_limited"] / max(1, res["requests"]))
                results["rate_limit"].append(res)
                print(f"rate limit {rpm} rpm, {label}: steady {res['steady_fraction_of_limit']} of the limit, "
                      f"429s {res['rate_limited']} of {res['requests']}", flush=True)
    finally:
        ray.shutdown()
    results["load_after"] = os.getloadavg()
    out_path.write_text(json.dumps(results, indent=2))
    print(render(results))
    print_stamp("synth", "end")
    print(f"\nwrote {out_path}")
    return 0


def render(results: dict) -> str:
    lines: list[str] = []
    load = ", ".join(f"{x:.2f}" for x in results.get("load_before", ())) or "?"
    if results["fanout"]:
        lines += [f"\n### Synthesis fan-out vs ideal (server latency {results['latency_s'] * 1000:.0f} ms; req/s "
                  f"measured at the server, first to last request; load average before: {load})", "",
                  "| in flight | ideal req/s | ChatClient req/s (ratio) | client CPU ms/req | raw aiohttp (ratio) | "
                  "AsyncOpenAI (ratio) | AsyncOpenAI CPU ms/req | ChatClient vs AsyncOpenAI | synth stage req/s (ratio) | synth rows/s | "
                  "ray.data.llm req/s (ratio) | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["fanout"]:
            ideal = r["ideal_req_s"]
            c, s, d = r["client"]["req_s"], r["synth_stage"]["req_s"], r["ray_data_llm"]["req_s"]
            a, o = r["aiohttp"]["req_s"], r["async_openai"]["req_s"]
            lines.append(f"| {r['in_flight']} | {ideal:.0f} | {c:.1f} ({c / ideal:.2f}) | "
                         f"{r['client']['cpu_ms_per_request']:.2f} | {a:.1f} ({a / ideal:.2f}) | {o:.1f} ({o / ideal:.2f}) | "
                         f"{r['async_openai']['cpu_ms_per_request']:.2f} | {c / o:.1f}x | {s:.1f} ({s / ideal:.2f}) | {r['synth_stage']['rows_s']:.1f} | "
                         f"{d:.1f} ({d / ideal:.2f}) | {r['load']:.2f} |")
        lines += ["", "Synth stage CPU (psutil) by process group over the whole `build_dataset` call, per request "
                  "(ms; the teacher actors' start-up, about 2-3 CPU s each for imports, is included: in runs this "
                  "short it dominates), and the run's wall time:", "",
                  "| in flight | requests | server | teacher actors | other Ray | driver | total ms/req | total CPU s | "
                  "wall s | fan-out window s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["fanout"]:
            st = r["synth_stage"]
            cpu = st["cpu_ms_per_request"]
            total = sum(cpu.values())
            lines.append(f"| {r['in_flight']} | {st['requests']} | {cpu.get('server', 0):.2f} | "
                         f"{cpu.get('teacher_actors', 0):.2f} | {cpu.get('ray_other', 0):.2f} | {cpu.get('driver', 0):.2f} | "
                         f"{total:.2f} | {total * st['requests'] / 1000:.1f} | {st['seconds']:.1f} | "
                         f"{st['fanout_seconds']:.2f} |")
    seq = results.get("openai_sequential")
    if seq:
        lines.append(f"\nPlain sequential openai loop: {seq['req_s']:.2f} req/s (ideal {1 / results['latency_s']:.0f}, "
                     f"ratio {seq['req_s'] * results['latency_s']:.2f}).")
    if results["rate_limit"]:
        lines += ["", f"### Server rate limit ({results['rate_limit'][0]['server_rpm']} rpm, with x-ratelimit-* headers): "
                  f"fraction of the limit over the steady part (first and last {STEADY_TRIM_S:g} s of accepted "
                  f"requests dropped; load average before: {load})", "",
                  "| case | client budget rpm | steady fraction of limit | whole-run fraction | 429s | requests | "
                  "429s / requests | load |", "|---|---|---|---|---|---|---|---|"]
        for r in results["rate_limit"]:
            steady = r["steady_fraction_of_limit"]
            lines.append(f"| {r['case']} | {r['budget_rpm'] or 'none'} | "
                         f"{f'{steady:.3f}' if steady is not None else 'n/a'} | {r['fraction_of_limit']:.2f} | "
                         f"{r['rate_limited']} | {r['requests']} | {r['rate_limited_fraction']:.3f} | {r['load']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
