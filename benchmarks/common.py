"""What every benchmark shares: the machine/date/load stamp it prints and stores, where its result file
goes, and the smoke mode (`--smoke` or `LIBRA_RAY_BENCH_SMOKE=1`: tiny sizes, a check that the script
still runs end to end and prints its ratio table; its numbers mean nothing).

Smoke results never go into `benchmarks/results/` (those hold the figures README quotes): they default
to a temporary folder, and a smoke `--out` that points into `results/` is refused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE_ENV = "LIBRA_RAY_BENCH_SMOKE"
SMOKE_RESULTS = Path(tempfile.gettempdir()) / "libra_ray_bench_smoke"


def machine() -> str:
    """CPU, core count, memory and Python version of this machine, in one line."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {mem_gib:.0f} GiB, "
            f"Python {platform.python_version()}")


def stamp() -> dict:
    """Machine, UTC date and load average now: timings from a busy machine are only comparable at a similar load."""
    return {"machine": machine(), "date": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def print_stamp(name: str, when: str = "start") -> dict:
    """Print the stamp as one line (`[bench_<name>] machine: ...; date: ...; load average: ...`) and return it."""
    s = stamp()
    load = ", ".join(f"{x:.2f}" for x in s["load_average"])
    print(f"[bench_{name}] {when}: machine: {s['machine']}; date: {s['date']}; load average: {load}", flush=True)
    return s


def add_smoke_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", default=os.environ.get(SMOKE_ENV, "") not in ("", "0"),
                        help=f"tiny sizes, to check the script still runs (also {SMOKE_ENV}=1); results go to a "
                             f"temporary folder unless --out, never into benchmarks/results")


def result_path(out: str | None, name: str, smoke: bool) -> Path:
    """Where a benchmark writes `<name>.json`: `out`, else results/ (smoke: a temporary folder)."""
    path = Path(out) if out else (SMOKE_RESULTS if smoke else RESULTS) / f"{name}.json"
    if smoke and path.resolve().is_relative_to(RESULTS.resolve()):
        print(f"bench_{name}: --smoke results never go into {RESULTS} (choose another --out)", file=sys.stderr)
        raise SystemExit(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}


def set_offline_env() -> None:
    """The offline defaults every benchmark that starts Ray runs under (values the caller exported win)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


SERVE_PATHS = ("transformers", "libra", "ray_serve_llm")


def with_serve_path(cfg, path: str):
    """A copy of `cfg` whose served policy runs on `path`: the transformers engine, or vLLM in our own
    `ModelServer` (`libra`) or on Ray Serve LLM (`ray_serve_llm`)."""
    cfg = cfg.model_copy(deep=True)
    policy = cfg.serve.policy
    policy.engine = "transformers" if path == "transformers" else "vllm"
    if path != "transformers":
        policy.vllm_server = path
    return cfg
