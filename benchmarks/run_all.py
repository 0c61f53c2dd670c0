"""Run every benchmark (each prints its own side-by-side ratio table and writes results/<name>.json).

    python -m benchmarks.run_all --quick            # all, quick mode (a few minutes each here)
    python -m benchmarks.run_all --only synth serve  # a subset

Each benchmark's printed Markdown tables are also saved to results/<name>.md, stamped with the machine
and date, so benchmarks/README.md can quote the latest figures verbatim.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = ["synth", "generate", "train", "serve"]
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {mem_gib:.0f} GiB, "
            f"Python {platform.python_version()}, load average before the run {load}")


def run_one(name: str, quick: bool) -> tuple[int, float]:
    cmd = [sys.executable, "-m", f"benchmarks.bench_{name}"] + (["--quick"] if quick else [])
    print(f"\n## {name}: {' '.join(cmd[1:])}", flush=True)
    header = f"<!-- {' '.join(cmd[1:])} · {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC · {machine()} -->\n"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    tables: list[str] = []
    for line in proc.stdout:  # stream it, and keep the Markdown tables
        print(line, end="", flush=True)
        if line.startswith("|") or (tables and tables[-1] != "\n" and not line.strip()):
            tables.append(line if line.strip() else "\n")
    rc = proc.wait()
    seconds = time.perf_counter() - start
    if rc == 0 and tables:
        (RESULTS / f"{name}.md").write_text(header + "".join(tables) + f"\n({seconds:.0f} s)\n")
    print(f"({name}: {seconds:.0f} s, exit {rc})", flush=True)
    return rc, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="quick mode of every benchmark")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    failed = [name for name in args.only if run_one(name, args.quick)[0] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
