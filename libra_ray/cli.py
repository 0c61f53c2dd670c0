"""`libra-ray`: thin entrypoints; the logic lives in the stage packages.

Each stage package exposes `run(cfg: PipelineConfig) -> dict` (a JSON-able summary); a stage that
calls an endpoint (synth, bench) also takes `open_endpoint`, which the CLI gives as
`libra_ray.endpoints.open_endpoint` (it starts the embedded local servers).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import logging
import sys
from collections.abc import Callable

from libra_ray.config import ConfigError, PipelineConfig, documented_config, load_config
from libra_ray.seeds.plan import SeedsError, plan_seeds

log = logging.getLogger("libra_ray")

STAGES = ("synth", "train", "bench")

COMMANDS: dict[str, str] = {
    "synth": "stage 1: balanced seed -> preference triplets via a teacher (Ray Data)",
    "train": "stage 2: SFT + DPO with TRL on Ray Train (DeepSpeed ZeRO optional)",
    "bench": "stage 3: generate with vLLM actors and score safety/utility (rule + LLM judge)",
    "serve": "stage 4: serve the aligned model and the judge on Ray Serve (OpenAI-compatible)",
    "run": "all stages end to end: synth -> train -> bench",
    "submit": "submit a command as a Ray Job to a cluster and stream its logs",
    "calibrate": "score refusal detectors against human labels; --fit trains the local classifier head",
    "tiny-model": "build the tiny local Llama + tokenizer used by tests and the embedded default",
    "config": "print the resolved config (defaults + file + --set overrides), each key with its description",
    "seeds": "seed catalogue tools: 'seeds check' compares every SMILES with an offline reference",
    "gpu-check": "acceptance run of every GPU path (SFT, DPO x DeepSpeed modes, LoRA, generation, serving): "
                 "JSON + ratio table, exit 1 if any path failed",
}


class NotImplementedStage(RuntimeError):
    pass


def stage_runner(stage: str) -> Callable[[PipelineConfig], dict]:
    """The `run` function of a stage package (with `open_endpoint` bound when it takes one), or a clear
    'not yet implemented'."""
    module = importlib.import_module(f"libra_ray.{stage}")
    fn = getattr(module, "run", None)
    if fn is None:
        raise NotImplementedStage(f"stage {stage!r} is not yet implemented")
    if "open_endpoint" in inspect.signature(fn).parameters:
        from libra_ray.endpoints import open_endpoint

        return functools.partial(fn, open_endpoint=open_endpoint)
    return fn


def run_pipeline(cfg: PipelineConfig, stages: tuple[str, ...] = STAGES) -> dict:
    """Run stages in order inside one Ray session; each stage resumes from what it already wrote. A stage
    without `run` raises NotImplementedStage before Ray starts: a pipeline never skips a stage."""
    from libra_ray.runtime import ray_session

    runners = {stage: stage_runner(stage) for stage in stages}  # a missing stage fails here, before Ray starts
    summary: dict = {}
    with ray_session(cfg):
        for stage, fn in runners.items():
            print(f"[libra-ray] === stage {stage} ===", flush=True)
            summary[stage] = fn(cfg)
    return summary


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="pipeline YAML (default: built-in quickstart defaults)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.beta=0.2 (repeatable; values parsed as YAML)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="libra-ray",
        description="Domain-specific safety alignment of LLMs (LibraChem method) on Ray.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "seeds":  # works on a CSV, not on a pipeline config
            from libra_ray.seeds.check import add_seeds_args

            add_seeds_args(p)
            continue
        _add_config_args(p)
        if name == "tiny-model":
            p.add_argument("--out", help="output folder (default: the cache folder used by 'tiny')")
        if name in ("synth", "run"):
            p.add_argument("--dry-run", action="store_true",
                           help="sample the seeds and print counts, teacher calls, tokens and cost; start nothing")
        if name == "config":
            p.add_argument("--defaults", action="store_true", help="print the built-in defaults only (the config reference)")
        if name == "calibrate":
            from libra_ray.bench.calibrate import add_calibrate_args

            add_calibrate_args(p)
        if name == "submit":
            from libra_ray.submit import add_submit_args

            add_submit_args(p)
        if name == "gpu-check":
            from libra_ray.gpucheck import add_gpu_check_args

            add_gpu_check_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per HTTP call would bury the progress bars (thousands of teacher/judge calls).
    for noisy in ("httpx", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.command == "seeds":
        from libra_ray.seeds.check import seeds_command

        return seeds_command(args)
    try:
        cfg = load_config(None if getattr(args, "defaults", False) else args.config, args.overrides)
    except ConfigError as err:
        print(f"libra-ray: {err}", file=sys.stderr)
        return 2
    try:
        return _dispatch(args, cfg, argv)
    except (ConfigError, SeedsError) as err:
        print(f"libra-ray: {err}", file=sys.stderr)
        return 2
    except NotImplementedStage as err:
        print(f"libra-ray: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("libra-ray: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, cfg: PipelineConfig, argv: list[str] | None = None) -> int:
    cmd = args.command
    if cmd == "config":  # every key with its description as a comment: the config documents itself
        print(documented_config(cfg))
        return 0
    if getattr(args, "dry_run", False):
        from libra_ray.synth.dryrun import format_plan, synth_plan

        print(format_plan(synth_plan(cfg), args.config or "defaults"), end="")
        if cmd == "run":
            print("train, bench: not estimated (they run on what synth writes)")
        return 0
    if cmd == "tiny-model":
        from libra_ray.tiny import build_tiny_model, ensure_tiny_model

        path = build_tiny_model(args.out, cfg.tiny_model) if args.out else ensure_tiny_model(cfg.cache_dir, cfg.tiny_model)
        print(path)
        return 0
    if cmd == "calibrate":
        from libra_ray.bench.calibrate import calibrate_from_args

        return calibrate_from_args(args, cfg, argv)
    if cmd == "submit":
        from libra_ray.submit import submit_from_args

        return submit_from_args(args, cfg)
    if cmd == "gpu-check":
        from libra_ray.gpucheck import run_gpu_check

        result = run_gpu_check(args.config, args.overrides, args.paths, args.out, args.gen_prompts, args.gen_tokens)
        return 1 if result["failed"] else 0
    if cmd == "serve":
        from libra_ray.runtime import ray_session
        from libra_ray.serve import check_models

        fn = stage_runner("serve")
        check_models(cfg)  # a missing model path fails here, in a line, before Ray starts
        with ray_session(cfg):
            fn(cfg)
        return 0
    stages = STAGES if cmd == "run" else (cmd,)
    for stage in stages:
        stage_runner(stage)  # a stage without `run`: one line, exit 3, before Ray starts (never skipped)
    if "synth" in stages:
        plan_seeds(cfg.synth)  # a bad seeds CSV or too large counts: one line, exit 2, before Ray starts
    for stage in stages:  # input checks that need no Ray (ConfigError -> exit 2 before Ray starts)
        check = getattr(importlib.import_module(f"libra_ray.{stage}"), "preflight", None)
        if check is not None:
            check(cfg)
    summary = run_pipeline(cfg, stages)
    print(json.dumps(summary, indent=2, default=str))
    lines = (summary.get("bench") or {}).get("summary_lines") or []
    if lines:  # the headline, last: one line per model
        print("[libra-ray] benchmark summary (safety / utility / overall, % with 95% CI):")
        print("\n".join(f"  {line}" for line in lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
