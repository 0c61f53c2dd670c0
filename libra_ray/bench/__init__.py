"""Stage 3, benchmark: generate answers with engines on Ray, score them (rule + LLM judge), report.

    run(cfg) -> {"models": {name: {safety, utility, over_refusal, overall, n, unjudged, ...}}, "report": {...}}

Outputs under `cfg.bench_dir`: `<model>/generations/` (Parquet shards, resumable by row id),
`<model>/evaluations.parquet` (rule, raw judge replies, parsed labels, final label), `judge_cache/`,
and `report.md`, `report.html`, `report.json`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig

log = logging.getLogger(__name__)


def _judge_client(cfg: "PipelineConfig", stack: contextlib.ExitStack) -> Any | None:
    """A ChatClient on the judge endpoint (the embedded local server when base_url is None)."""
    if not cfg.bench.use_judge or not cfg.bench.judge_prompts:
        return None
    from libra_ray.config import join_uri
    from libra_ray.llm.client import ChatClient
    from libra_ray.llm.endpoint import open_endpoint

    base_url = stack.enter_context(open_endpoint(cfg.bench.judge, cfg))
    return ChatClient(cfg.bench.judge, base_url=base_url, cache_dir=join_uri(cfg.bench_dir, "judge_cache"))


def run(cfg: "PipelineConfig") -> dict:
    """Generate for every configured model (resuming), evaluate, write the report; returns a summary."""
    import pyarrow as pa

    from libra_ray.bench import store
    from libra_ray.bench.evaluate import evaluate
    from libra_ray.bench.generate import generate, load_benchmark_prompts, prompts_path, read_generations
    from libra_ray.bench.report import model_provenance, run_caveats, sample_answers, summary_lines, write_report
    from libra_ray.bench.rules import RULES, calibrate
    from libra_ray.bench.scores import compute_scores
    from libra_ray.config import join_uri
    from libra_ray.llm.endpoint import open_endpoint

    bench = cfg.bench
    prompts = load_benchmark_prompts(cfg)
    ids = set(prompts["id"].to_pylist())
    log.info("bench: %d distinct prompts from %s, %d model(s)", len(ids), prompts_path(cfg), len(bench.models))
    generation = {}
    for model in bench.models:
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(open_endpoint(model.endpoint, cfg)) if model.engine == "openai" else None
            generation[model.name] = generate(cfg, model, prompts, base_url=url)
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        client = _judge_client(cfg, stack)
        for model in bench.models:
            rows = read_generations(cfg, model.name, ids).to_pylist()
            evaluated = evaluate(rows, bench, client)
            store.write_table(join_uri(cfg.bench_dir, model.name, "evaluations.parquet"),
                              pa.Table.from_pylist(evaluated))
            scores = compute_scores(evaluated, bench.confidence)
            results[model.name] = {"engine": model.engine, "path": model.path if model.engine != "openai" else None,
                                   "generation": generation[model.name], **scores,
                                   "provenance": model_provenance(cfg, model), "samples": sample_answers(evaluated)}
        judge_stats = client.stats.as_dict() if client is not None else None
    report = {"run": cfg.name, "prompts": prompts_path(cfg), "rule": bench.rule,
              "judge_prompts": list(bench.judge_prompts) if client is not None else [],
              "judge_model": bench.judge.model if client is not None else None, "judge_client": judge_stats,
              "confidence": bench.confidence, "models": results,
              "rule_calibration": {r: calibrate(r) for r in RULES}, "caveats": run_caveats(cfg)}
    paths = write_report(cfg.bench_dir, report)
    log.info("bench: report written to %s", paths["md"])
    summary = {name: {k: (r[k]["value"] if isinstance(r[k], dict) else r[k])
                      for k in ("safety", "utility", "over_refusal", "overall", "n", "unjudged", "generation_errors")}
               for name, r in results.items()}
    return {"models": summary, "report": paths, "summary_lines": summary_lines(results)}
