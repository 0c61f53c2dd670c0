"""Run every benchmark (each prints its own side-by-side ratio table and writes results/<name>.json).

    python -m benchmarks.run_all --quick            # all, quick mode (a few minutes each here)
    python -m benchmarks.run_all --only synth serve  # a subset
    python -m benchmarks.run_all --smoke --out-dir /tmp/smoke  # tiny sizes: does every script still run?

Each benchmark's printed Markdown tables are also saved to results/<name>.md, stamped with the machine
and date, so benchmarks/README.md can quote the latest figures verbatim.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, SMOKE_RESULTS, add_smoke_arg, print_stamp, stamp

BENCHMARKS = ["synth", "generate", "train", "serve"]


def run_one(name: str, quick: bool, smoke: bool, out_dir: Path) -> tuple[int, float]:
    cmd = [sys.executable, "-m", f"benchmarks.bench_{name}", *(["--quick"] if quick else []),
           *(["--smoke"] if smoke else []), "--out", str(out_dir / f"{name}.json")]
    print(f"\n## {name}: {' '.join(cmd[1:])}", flush=True)
    s = stamp()
    load = ", ".join(f"{x:.1f}" for x in s["load_average"])
    header = f"<!-- {' '.join(cmd[1:])} · {s['date']} · {s['machine']}, load average before the run {load} -->\n"
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
        (out_dir / f"{name}.md").write_text(header + "".join(tables) + f"\n({seconds:.0f} s)\n")
    print(f"({name}: {seconds:.0f} s, exit {rc})", flush=True)
    return rc, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="quick mode of every benchmark")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    parser.add_argument("--out-dir", default=None,
                        help="where <name>.json and <name>.md go (default: results/; smoke: a temporary folder)")
    add_smoke_arg(parser)
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir) if args.out_dir else SMOKE_RESULTS if args.smoke else RESULTS
    if args.smoke and out_dir.resolve().is_relative_to(RESULTS.resolve()):
        print(f"run_all: --smoke results never go into {RESULTS} (choose another --out-dir)", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    print_stamp("run_all")
    failed = [name for name in args.only if run_one(name, args.quick, args.smoke, out_dir)[0] != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
