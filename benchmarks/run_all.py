"""Run every benchmark (each prints its own side-by-side ratio table and writes results/<name>.json).

    python -m benchmarks.run_all --quick            # all, quick mode (a few minutes each here)
    python -m benchmarks.run_all --only synth serve  # a subset
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

BENCHMARKS = ["synth", "generate", "train", "serve"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="quick mode of every benchmark")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    args = parser.parse_args(argv)
    failed = []
    for name in args.only:
        cmd = [sys.executable, "-m", f"benchmarks.bench_{name}"] + (["--quick"] if args.quick else [])
        print(f"\n## {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        if subprocess.run(cmd).returncode != 0:
            failed.append(name)
        print(f"({name}: {time.perf_counter() - start:.0f} s)", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
