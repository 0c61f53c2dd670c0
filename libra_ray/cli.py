"""`libra-ray`: thin entrypoints; the logic lives in the stage packages.

Each stage package exposes `run(cfg: PipelineConfig) -> dict` (a JSON-able summary).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable

from libra_ray.config import ConfigError, PipelineConfig, dump_config, load_config

log = logging.getLogger("libra_ray")

STAGES = ("synth", "train", "bench")

COMMANDS: dict[str, str] = {
    "synth": "stage 1: balanced seed -> preference triplets via a teacher (Ray Data)",
    "train": "stage 2: SFT + DPO with TRL on Ray Train (DeepSpeed ZeRO optional)",
    "bench": "stage 3: generate with vLLM actors and score safety/utility (rule + LLM judge)",
    "serve": "stage 4: serve the aligned model and the judge on Ray Serve (OpenAI-compatible)",
    "run": "all stages end to end: synth -> train -> bench",
    "submit": "submit a command as a Ray Job to a cluster and stream its logs",
    "tiny-model": "build the tiny local Llama + tokenizer used by tests and the embedded default",
    "config": "print the resolved config (defaults + file + --set overrides)",
}


class NotImplementedStage(RuntimeError):
    pass


def stage_runner(stage: str) -> Callable[[PipelineConfig], dict]:
    """The `run` function of a stage package, or a clear 'not yet implemented'."""
    module = importlib.import_module(f"libra_ray.{stage}")
    fn = getattr(module, "run", None)
    if fn is None:
        raise NotImplementedStage(f"stage {stage!r} is not yet implemented")
    return fn


def run_pipeline(cfg: PipelineConfig, stages: tuple[str, ...] = STAGES) -> dict:
    """Run stages in order inside one Ray session; each stage resumes from what it already wrote."""
    from libra_ray.runtime import ray_session

    summary: dict = {}
    with ray_session(cfg):
        for stage in stages:
            try:
                fn = stage_runner(stage)
            except NotImplementedStage as err:
                print(f"[libra-ray] {err}; skipping", flush=True)
                summary[stage] = {"status": "not implemented"}
                continue
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
        _add_config_args(p)
        if name == "tiny-model":
            p.add_argument("--out", help="output folder (default: the cache folder used by 'tiny')")
        if name == "config":
            p.add_argument("--defaults", action="store_true", help="print the built-in defaults only")
        if name == "submit":
            from libra_ray.submit import add_submit_args

            add_submit_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per HTTP call would bury the progress bars (thousands of teacher/judge calls).
    for noisy in ("httpx", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        cfg = load_config(None if getattr(args, "defaults", False) else args.config, args.overrides)
    except ConfigError as err:
        print(f"libra-ray: {err}", file=sys.stderr)
        return 2
    try:
        return _dispatch(args, cfg)
    except ConfigError as err:
        print(f"libra-ray: {err}", file=sys.stderr)
        return 2
    except NotImplementedStage as err:
        print(f"libra-ray: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("libra-ray: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, cfg: PipelineConfig) -> int:
    cmd = args.command
    if cmd == "config":
        print(dump_config(cfg), end="")
        return 0
    if cmd == "tiny-model":
        from libra_ray.tiny import build_tiny_model, ensure_tiny_model

        path = build_tiny_model(args.out, cfg.tiny_model) if args.out else ensure_tiny_model(cfg.cache_dir, cfg.tiny_model)
        print(path)
        return 0
    if cmd == "submit":
        from libra_ray.submit import submit_from_args

        return submit_from_args(args, cfg)
    if cmd == "serve":
        from libra_ray.runtime import ray_session

        fn = stage_runner("serve")
        with ray_session(cfg):
            fn(cfg)
        return 0
    stages = STAGES if cmd == "run" else (cmd,)
    if cmd != "run":
        stage_runner(cmd)  # fail fast with a clear message before starting Ray
    summary = run_pipeline(cfg, stages)
    print(json.dumps(summary, indent=2, default=str))
    lines = (summary.get("bench") or {}).get("summary_lines") or []
    if lines:  # the headline, last: one line per model
        print("[libra-ray] benchmark summary (safety / utility / overall, % with 95% CI):")
        print("\n".join(f"  {line}" for line in lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
