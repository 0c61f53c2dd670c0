"""Memory under a soak, on the vLLM serving paths (issue #25 item 6): does each replica level off?

One replica per deployment, rounds of mixed requests (non-streamed with a seed, streamed, 1 in 8 malformed)
at 32 in flight; after every round the RSS of the ingress and of the policy replica's whole process tree (the
vLLM engine core and its worker are the replica's child processes), and each process of that tree. Levels off = the second half of the rounds
grows by at most half the first half's growth plus 16 MiB (the rule of the transformers soak test in
tests/test_serve_e2e.py, which CI runs).

    python -m benchmarks.serve_soak --paths libra ray_serve_llm --rounds 16 --per-round 256
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import SERVE_PATHS, add_smoke_arg, print_stamp, result_path, set_offline_env, with_serve_path

ROOT = Path(__file__).resolve().parents[1]


def soak_path(cfg, path: str, rounds: int, per_round: int, in_flight: int) -> dict:
    from libra_ray.serve import serving
    from libra_ray.testing import pids_mentioning, process_rss_mib, soak

    cfg = with_serve_path(cfg, path)
    with serving(cfg) as app:
        found = {name: pids_mentioning(f"ServeReplica:{app.name}:{name}") for name in ("ingress", "model-policy")}
        if any(len(pids) != 1 for pids in found.values()):
            raise SystemExit(f"serve_soak: expected one replica per deployment, found {found}")
        pids = {name: pids[0] for name, pids in found.items()}
        # The policy's tree process by process (vLLM: the replica, its engine core and worker): which one grows.
        parts = {f"model-policy: {name}": (lambda name=name: process_rss_mib(pids["model-policy"]).get(name, 0.0))
                 for name in process_rss_mib(pids["model-policy"])}
        result = soak(app.base_url, pids, rounds, per_round, in_flight, extra=parts if len(parts) > 1 else None,
                      log=lambda line: print(f"[{path}] {line}", flush=True))
    summary = result.summary()
    summary["statuses"] = {str(s): result.statuses.count(s) for s in sorted(set(result.statuses))}
    summary["rss_mib"] = {name: [round(x, 1) for x in rss] for name, rss in result.samples.items()}
    return summary


def markdown(results: dict) -> str:
    rows = ["| path | replica (process tree) | requests | seconds | RSS after round 1 | after last round | "
            "growth first half | growth second half | levels off |", "|---|---|---|---|---|---|---|---|---|"]
    for path, r in results["paths"].items():
        for name in [n for n in r if n == "ingress" or n.startswith("model-policy")]:
            m = r[name]
            rows.append(f"| {path} | {name} | {r['requests']} | {r['seconds']} | {m['rss_mib_first']} MiB | "
                        f"{m['rss_mib_last']} MiB | {m['growth_first_half_mib']} MiB | "
                        f"{m['growth_second_half_mib']} MiB | {'yes' if m['levels_off'] else 'NO'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", default=["libra", "ray_serve_llm"],
                        choices=SERVE_PATHS)
    parser.add_argument("--rounds", type=int, default=16, help="rounds (an even number; RSS sampled after each)")
    parser.add_argument("--per-round", type=int, default=256, help="requests per round")
    parser.add_argument("--in-flight", type=int, default=32, help="concurrent requests")
    parser.add_argument("--out", default=None, help="result JSON (default: results/serve_soak.json)")
    add_smoke_arg(parser)
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.rounds % 2 or args.per_round < 8:
        parser.error("--rounds must be an even number >= 2 and --per-round >= 8")
    if args.smoke:
        args.rounds, args.per_round = 2, 16
    out = result_path(args.out, "serve_soak", args.smoke)
    stamp = print_stamp("serve_soak")
    set_offline_env()
    from libra_ray.config import load_config
    from libra_ray.runtime import ray_session

    cfg = load_config(None, ["ray.num_cpus=2", "serve.port=0", "serve.policy.path=tiny", "serve.policy.num_cpus=1",
                             "serve.judge.num_cpus=0.25", "serve.ingress.num_cpus=0.25",
                             "serve.policy.autoscaling.max_replicas=1", "serve.judge.autoscaling.max_replicas=1",
                             f"cache_dir={ROOT / '.cache' / 'libra_ray'}", "storage=/tmp/libra_ray_serve_soak"])
    results: dict = {"stamp": stamp, "rounds": args.rounds, "per_round": args.per_round, "in_flight": args.in_flight,
                     "paths": {}}
    t0 = time.monotonic()
    with ray_session(cfg):
        for path in args.paths:
            results["paths"][path] = soak_path(cfg, path, args.rounds, args.per_round, args.in_flight)
            out.write_text(json.dumps(results, indent=2))  # each path kept as soon as it is measured
    results["seconds"] = round(time.monotonic() - t0, 1)
    out.write_text(json.dumps(results, indent=2))
    print("\n" + markdown(results))
    print_stamp("serve_soak", "end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
