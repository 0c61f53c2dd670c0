"""Stage 3, benchmark: generate answers with engines on Ray, score them (rule + LLM judge), report.

    run(cfg, open_endpoint=...) -> {"models": {name: {safety, utility, over_refusal, overall, n, unjudged, ...}}, "report": {...}}

Outputs under `cfg.bench_dir`: `<model>/generations/` (Parquet shards, resumable: a row is reused only
while its `gen_key` (prompt + weights + engine + sampling) matches), `<model>/evaluations.parquet`
(local detector, rule, raw judge replies, parsed labels, final label and who decided it; reused per
row while its `eval_key` matches), `judge_cache/`, and `report.md`, `report.html`, `report.json`.
Also, unless switched off: `<model>/capability/` (the capability set, `bench.capability`: option
log-likelihoods per question, resumable) and `<model>/evaluations_attack.parquet` (the prompts wrapped in
jailbreak templates, `bench.attack`, generated in the same pass as the direct ones).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig
    from libra_ray.llm.endpoint import EndpointOpener

log = logging.getLogger(__name__)


def preflight(cfg: "PipelineConfig") -> None:
    """Checks that need no Ray: the local detector's name, and explicit benchmark prompt files
    (columns, class values). A ConfigError names what is wrong."""
    from libra_ray._config_base import ConfigError
    from libra_ray.bench.detector_info import local_detector

    if cfg.bench.prompts:
        from libra_ray.bench.generate import load_benchmark_prompts

        load_benchmark_prompts(cfg)
    try:  # every scheme keeps the local label beside the final one
        local_detector(cfg.bench.local_detector)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"bench.local_detector: {err}") from None


class _LazyJudge:
    """The judge's ChatClient, opened on the first call: a cascade that routes no row to the judge never
    starts the endpoint (the embedded one takes a Serve app and tens of seconds)."""

    def __init__(self, cfg: "PipelineConfig", stack: contextlib.ExitStack, open_endpoint: "EndpointOpener"):
        self.cfg, self.stack, self.open_endpoint, self.client = cfg, stack, open_endpoint, None

    def open(self) -> Any:
        """The judge's ChatClient (started on first use)."""
        if self.client is None:
            from libra_ray._config_base import join_uri
            from libra_ray.llm.client import ChatClient

            judge = self.cfg.bench.judge
            base_url = self.stack.enter_context(self.open_endpoint(judge, self.cfg))
            self.client = ChatClient(judge, base_url=base_url, cache_dir=join_uri(self.cfg.bench_dir, "judge_cache"))
        return self.client

    def chat_many(self, batch: list, **params: Any) -> list:
        return self.open().chat_many(batch, **params)

    def stats_dict(self) -> dict | None:
        return self.client.stats.as_dict() if self.client is not None else None


def _judge_client(cfg: "PipelineConfig", stack: contextlib.ExitStack, open_endpoint: "EndpointOpener") -> _LazyJudge | None:
    """The judge (opened with `open_endpoint`: the embedded local server when base_url is None), or None
    when no judge is asked."""
    if not cfg.bench.use_judge or not cfg.bench.judge_prompts or cfg.bench.detector == "local":
        return None
    return _LazyJudge(cfg, stack, open_endpoint)


def _under_attack(cfg: "PipelineConfig", model: Any, wrapped: Any, direct: list[dict], client: Any, detector: Any) -> dict:
    """Label the model's wrapped answers (same detector and judge as the direct ones, evaluations resumed
    from `<model>/evaluations_attack.parquet`) and score them against the direct answers."""
    import pyarrow as pa

    from libra_ray._config_base import join_uri
    from libra_ray.bench import store
    from libra_ray.bench.attack import attack_scores
    from libra_ray.bench.evaluate import evaluate_resuming
    from libra_ray.bench.generate import generation_keys, read_generations

    rows = read_generations(cfg, model.name, generation_keys(cfg, model, wrapped)[1]).to_pylist()
    path = join_uri(cfg.bench_dir, model.name, "evaluations_attack.parquet")
    previous = store.read_table(path).to_pylist() if store.exists(path) else None
    evaluated, counts = evaluate_resuming(rows, cfg.bench, client, previous, detector)
    store.write_table(path, pa.Table.from_pylist(evaluated))
    seen = cfg.synth.attack_train_families if (cfg.synth.attack_augment and model.path == "trained") else None
    return {**attack_scores(evaluated, direct, cfg.bench.confidence, seen), "evaluation": counts,
            "prompts_per_class": cfg.bench.attack.prompts_per_class}


def add_alignment_tax(results: dict[str, dict], confidence: float = 0.95) -> None:
    """Each model's capability change vs the baseline model (`capability.vs_base`), where both were scored."""
    from libra_ray.bench.capability import alignment_tax
    from libra_ray.bench.report import baseline_name

    base = baseline_name(results)
    if base is None or "capability" not in results[base]:
        return
    for name, r in results.items():
        if name != base and "capability" in r:
            r["capability"]["vs_base"] = {"base": base, **alignment_tax(r["capability"], results[base]["capability"],
                                                                         confidence)}


def run(cfg: "PipelineConfig", *, open_endpoint: "EndpointOpener") -> dict:
    """Generate for every configured model (resuming), evaluate, write the report; returns a summary.

    `open_endpoint` (`libra_ray.endpoints.open_endpoint`) reaches the judge and the `openai` models'
    endpoints, starting the embedded local server for one whose base_url is None."""
    import pyarrow as pa

    from libra_ray._config_base import join_uri
    from libra_ray.bench import store
    from libra_ray.bench.attack import attack_prompts
    from libra_ray.bench.capability import capability_scores, load_questions, read_capability, run_capability
    from libra_ray.bench.detector_info import detector_accuracy, expected_at_threshold, local_detector
    from libra_ray.bench.evaluate import evaluate_resuming
    from libra_ray.bench.fingerprint import model_dtype
    from libra_ray.bench.generate import (generate, generation_keys, load_benchmark_prompts, prompts_path,
                                          read_generations)
    from libra_ray.bench.report import model_provenance, run_caveats, sample_answers, summary_lines, write_report
    from libra_ray.bench.scores import compute_scores
    from libra_ray.policy.rules import RULES, calibrate

    bench = cfg.bench
    prompts = load_benchmark_prompts(cfg)
    detector = local_detector(bench.local_detector)
    log.info("bench: %d distinct prompts from %s, %d model(s)", prompts.num_rows, prompts_path(cfg), len(bench.models))
    # Safety under attack: wrapped prompts ride in the same generation pass as the direct ones.
    wrapped = attack_prompts(prompts, bench.attack) if bench.attack.enabled else None
    questions = load_questions(cfg) if bench.capability.enabled else None
    all_prompts = prompts if wrapped is None else pa.concat_tables([prompts, wrapped], promote_options="default")
    generation, capability_runs = {}, {}
    for model in bench.models:
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(open_endpoint(model.endpoint, cfg)) if model.engine == "openai" else None
            generation[model.name] = generate(cfg, model, all_prompts, base_url=url)
            if questions is not None:
                capability_runs[model.name] = run_capability(cfg, model, questions, base_url=url)
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        client = _judge_client(cfg, stack, open_endpoint)
        for model in bench.models:
            keys = generation_keys(cfg, model, prompts)[1]
            rows = read_generations(cfg, model.name, keys).to_pylist()
            eval_path = join_uri(cfg.bench_dir, model.name, "evaluations.parquet")
            previous = store.read_table(eval_path).to_pylist() if store.exists(eval_path) else None
            evaluated, eval_counts = evaluate_resuming(rows, bench, client, previous, detector)
            store.write_table(eval_path, pa.Table.from_pylist(evaluated))
            scores = compute_scores(evaluated, bench.confidence)
            results[model.name] = {"engine": model.engine, "path": model.path if model.engine != "openai" else None,
                                   "dtype": model_dtype(cfg, model),
                                   "generation": generation[model.name], "evaluation": eval_counts, **scores,
                                   "provenance": model_provenance(cfg, model), "samples": sample_answers(evaluated)}
            if wrapped is not None:
                results[model.name]["under_attack"] = _under_attack(cfg, model, wrapped, evaluated, client, detector)
            if questions is not None:
                results[model.name]["capability"] = {
                    **capability_scores(read_capability(cfg, model, questions), bench.confidence),
                    "run": capability_runs[model.name]}
        judge_stats = client.stats_dict() if client is not None else None
    add_alignment_tax(results, bench.confidence)
    report = {"run": cfg.name, "prompts": prompts_path(cfg), "rule": bench.rule,
              "judge_prompts": list(bench.judge_prompts) if client is not None else [],
              "judge_model": bench.judge.model if client is not None else None, "judge_client": judge_stats,
              "confidence": bench.confidence, "models": results,
              "detector": {"scheme": bench.detector, "local": detector.name, "requested": bench.local_detector,
                           "judge_threshold": bench.judge_threshold if bench.detector == "cascade" else None,
                           "rule": f"rule:{bench.rule}",
                           "accuracy": detector_accuracy(detector.name, detector),
                           "expected_at_threshold": expected_at_threshold(detector, bench.judge_threshold)
                           if bench.detector == "cascade" else None,
                           "rule_accuracy": detector_accuracy(f"rule:{bench.rule}")},
              "rule_calibration_note": "smoke check on 12 built-in sentences, not a measurement",
              "rule_calibration": {r: calibrate(r) for r in RULES}, "caveats": run_caveats(cfg)}
    paths = write_report(cfg.bench_dir, report)
    log.info("bench: report written to %s", paths["md"])
    summary = {name: {k: (r[k]["value"] if isinstance(r[k], dict) else r[k])
                      for k in ("safety", "utility", "over_refusal", "overall", "n", "unjudged", "generation_errors")}
               for name, r in results.items()}
    return {"models": summary, "report": paths, "summary_lines": summary_lines(results)}
