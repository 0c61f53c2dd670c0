"""Generation at scale: benchmark prompts -> answers, one model at a time, on Ray Data.

Engines run as Ray actors (`map_batches` over a callable class, `concurrency` = replicas), or through
Ray's `ray.data.llm` vLLM processor. Results stream back to the driver, which writes each finished
block as a Parquet shard under `<bench_dir>/<model>/generations/`. Every row carries a `gen_key`
(prompt + model weights + engine + sampling, see `libra_ray.bench.fingerprint`); a re-run skips every
row whose key is already written, so a crashed run resumes without regenerating finished rows, and a
changed checkpoint or setting under the same model name regenerates (old rows are ignored, counted as
`stale`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from libra_ray._config_base import join_uri
from libra_ray.bench import store
from libra_ray.bench.engines import OUTPUT_COLUMNS, OpenAIEngine, TransformersEngine, VLLMEngine, chat_messages
from libra_ray.bench.fingerprint import generation_fingerprint, generation_key, model_dtype
from libra_ray.engines.env import VLLM_ACTOR_RUNTIME_ENV
from libra_ray.policy.rules import split_reasoning

if TYPE_CHECKING:
    from libra_ray.bench.config import BenchConfig, BenchModelConfig
    from libra_ray.config import PipelineConfig

log = logging.getLogger(__name__)

# The ray.data.llm processor's helper stages must not take whole CPUs, or a 2-CPU cluster deadlocks
# (the engine holds one CPU; see ENVIRONMENT.md).
_HELPER_STAGE = {"num_cpus": 0.1}


def prompts_path(cfg: "PipelineConfig") -> str:
    return cfg.bench.prompts or join_uri(cfg.dataset_dir, "test")


def generations_dir(cfg: "PipelineConfig", model: str) -> str:
    return join_uri(cfg.bench_dir, model, "generations")


def load_benchmark_prompts(cfg: "PipelineConfig") -> pa.Table:
    """The distinct benchmark prompts; a missing or malformed file is a ConfigError (clear CLI message)."""
    from libra_ray._config_base import ConfigError

    b = cfg.bench
    try:
        table = store.load_prompts(prompts_path(cfg), prompt_column=b.prompt_column, class_column=b.class_column,
                                   category_column=b.category_column, reference_column=b.reference_column,
                                   class_values=b.class_values)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"bench.prompts: {err}") from None
    if cfg.bench.max_prompts:
        table = table.slice(0, cfg.bench.max_prompts)
    return table


def _engine_args(cfg: "PipelineConfig", model: "BenchModelConfig", base_url: str | None) -> tuple[type, dict, dict]:
    """(engine class, constructor kwargs, Ray resources per actor) for one model."""
    b: BenchConfig = cfg.bench
    common = dict(max_tokens=b.max_tokens, temperature=b.temperature, top_p=b.top_p, system_prompt=b.system_prompt)
    if model.engine == "openai":
        cache = join_uri(cfg.bench_dir, model.name, "api_cache")
        kwargs = dict(endpoint=model.endpoint.model_dump(), base_url=base_url, cache_dir=cache, **common)
        return OpenAIEngine, kwargs, {"num_cpus": 0.25}
    path = _local_model(cfg, model)
    common["dtype"] = model_dtype(cfg, model)  # resolved here: what the report states is what the engine loads
    if model.engine == "transformers":
        threads = max(1, int(b.num_cpus))
        kwargs = dict(max_model_len=b.max_model_len, seed=b.seed, num_threads=threads, **common)
        return TransformersEngine, {"model": path, **kwargs}, {"num_cpus": b.num_cpus,
                                                               "num_gpus": b.num_gpus}
    kwargs = dict(model=path, max_model_len=b.max_model_len, seed=b.seed, tensor_parallel_size=b.tensor_parallel_size,
                  gpu_memory_utilization=b.gpu_memory_utilization, enforce_eager=b.enforce_eager,
                  kv_cache_gib=b.kv_cache_gib, engine_kwargs=model.engine_kwargs, **common)
    return VLLMEngine, kwargs, {"num_cpus": b.num_cpus, "num_gpus": b.num_gpus,
                                "runtime_env": VLLM_ACTOR_RUNTIME_ENV}


def _local_model(cfg: "PipelineConfig", model: "BenchModelConfig") -> str:
    """The model folder/hub id for a local engine (a clear error when this run's trained model is missing)."""
    from libra_ray.tiny import resolve_model

    return resolve_model(model.path, cfg, key=f"bench.models.{model.name}.path")


def _actor_pipeline(ds, cfg: "PipelineConfig", model: "BenchModelConfig", base_url: str | None):
    cls, kwargs, resources = _engine_args(cfg, model, base_url)
    return ds.map_batches(cls, fn_constructor_kwargs=kwargs, batch_size=cfg.bench.batch_size,
                          concurrency=cfg.bench.replicas, batch_format="pyarrow", **resources)


def _ray_data_llm_pipeline(ds, cfg: "PipelineConfig", model: "BenchModelConfig"):
    """Ray's own vLLM batch processor; per-row errors via `should_continue_on_error`."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from libra_ray.engines.env import vllm_env

    b = cfg.bench
    config = vLLMEngineProcessorConfig(
        model_source=_local_model(cfg, model),
        engine_kwargs={**dict(max_model_len=b.max_model_len, enforce_eager=b.enforce_eager,
                              gpu_memory_utilization=b.gpu_memory_utilization,
                              tensor_parallel_size=b.tensor_parallel_size, seed=b.seed,
                              dtype=model_dtype(cfg, model)),
                       **model.engine_kwargs},  # the user's over ours
        runtime_env={"env_vars": vllm_env(b.kv_cache_gib)},
        batch_size=b.batch_size,
        concurrency=b.replicas,
        # On CPU the engine must ask for CPUs, not the default GPU bundle (which never schedules here).
        # One bundle per tensor-parallel worker, sharing the replica's GPUs.
        placement_group_config={"bundles": [{"CPU": b.num_cpus, "GPU": b.num_gpus / b.tensor_parallel_size}
                                            if b.num_gpus else {"CPU": b.num_cpus}]
                                * b.tensor_parallel_size},
        should_continue_on_error=True,
        chat_template_stage=dict(_HELPER_STAGE),
        tokenize_stage=dict(_HELPER_STAGE),
        detokenize_stage=dict(_HELPER_STAGE),
    )
    sampling = dict(temperature=b.temperature, top_p=b.top_p, max_tokens=b.max_tokens, seed=b.seed)
    system_prompt = b.system_prompt
    processor = build_processor(
        config,
        # The processor overwrites `prompt` with the templated text: keep the benchmark prompt aside.
        preprocess=lambda row: dict(row, bench_prompt=row["prompt"], sampling_params=sampling,
                                    messages=chat_messages(row["prompt"], system_prompt)),
        preprocess_map_kwargs=dict(_HELPER_STAGE),
    )
    keep = None  # input columns, filled lazily by the normaliser

    def normalise(batch: pa.Table) -> pa.Table:
        """Back to our output columns (error rows bypass postprocess in ray.data.llm, so do it here)."""
        rows = batch.to_pylist()
        out = []
        for r in rows:
            err = r.get("__inference_error__") or None
            raw = None if err else r.get("generated_text")
            final, trace = split_reasoning(raw) if raw is not None else (None, None)
            out.append({**{k: r.get(k) for k in keep}, "prompt": r.get("bench_prompt"),
                        "raw_text": raw, "answer": final, "reasoning": trace,
                        "error": f"engine: {err}" if err else None,
                        "prompt_tokens": r.get("num_input_tokens"), "completion_tokens": r.get("num_generated_tokens")})
        return pa.Table.from_pylist(out)

    keep = list(ds.schema().names)
    return processor(ds).map_batches(normalise, batch_format="pyarrow", **_HELPER_STAGE)


def _normalise_types(table: pa.Table) -> pa.Table:
    """Fixed output schema so shards from different runs and engines concatenate."""
    types = {"raw_text": pa.string(), "answer": pa.string(), "reasoning": pa.string(), "error": pa.string(),
             "error_permanent": pa.bool_(), "prompt_tokens": pa.int64(), "completion_tokens": pa.int64()}
    for col, typ in types.items():
        arr = table[col] if col in table.column_names else pa.nulls(table.num_rows, typ)
        if arr.type != typ:
            arr = pa.array(arr.to_pylist(), type=typ)
        idx = table.column_names.index(col) if col in table.column_names else -1
        table = table.set_column(idx, col, arr) if idx >= 0 else table.append_column(col, arr)
    return table


def _generated_blocks(todo: pa.Table, cfg: "PipelineConfig", model: "BenchModelConfig", base_url: str | None):
    """The engine pipeline on Ray Data: yields finished blocks (pyarrow tables) as they complete."""
    import ray

    # One input block per batch: blocks finish (and are persisted) one by one, not all at the end.
    bs = cfg.bench.batch_size
    ds = ray.data.from_arrow([todo.slice(i, bs) for i in range(0, todo.num_rows, bs)])
    if model.engine == "ray_data_llm":
        ds = _ray_data_llm_pipeline(ds, cfg, model)
    else:
        ds = _actor_pipeline(ds, cfg, model, base_url)
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def generation_keys(cfg: "PipelineConfig", model: "BenchModelConfig", prompts: pa.Table) -> tuple[dict, dict]:
    """(fingerprint, {row id: gen_key}) for this model under the current config."""
    fp = generation_fingerprint(cfg, model)
    return fp, {rid: generation_key(p, fp["hash"])
                for rid, p in zip(prompts["id"].to_pylist(), prompts["prompt"].to_pylist())}


def generate(cfg: "PipelineConfig", model: "BenchModelConfig", prompts: pa.Table | None = None,
             base_url: str | None = None) -> dict[str, Any]:
    """Generate answers for every benchmark prompt not yet done with the current settings.

    Returns counts and throughput: `resumed` rows reused (same key), `stale` rows whose stored answer
    came from other weights or settings and were regenerated, `generated` rows made now. A row whose
    stored attempt failed for a reason that may pass (an engine failure, an endpoint's 5xx or timeout; not
    a prompt longer than the context or an HTTP 400) is tried again on every run until it succeeds;
    `retried` counts them (an OpenAI-engine answer that was paid for but unusable is served
    from the client's cache again, not re-paid).
    """
    prompts = load_benchmark_prompts(cfg) if prompts is None else prompts
    out_dir = generations_dir(cfg, model.name)
    fp, keys = generation_keys(cfg, model, prompts)
    stored, failed = store.stored_keys(out_dir)  # reusable rows; rows that failed and may pass now
    todo_ids = [rid for rid, key in keys.items() if key not in stored.get(rid, ())]
    retried = sum(1 for rid in todo_ids if keys[rid] in failed.get(rid, ()))
    stale = sum(1 for rid in todo_ids if (rid in stored or rid in failed) and keys[rid] not in failed.get(rid, ()))
    todo = prompts.filter(pc.is_in(prompts["id"], pa.array(todo_ids, pa.string())))
    total, start = prompts.num_rows, time.perf_counter()
    summary = {"model": model.name, "engine": model.engine, "rows": total, "resumed": total - todo.num_rows,
               "stale": stale, "retried": retried, "generated": 0, "errors": 0, "completion_tokens": 0, "seconds": 0.0,
               "fingerprint": fp["hash"], "settings": fp["settings"]}
    if stale:
        log.info("%s: %d stored row(s) came from other weights or settings: regenerating them", model.name, stale)
    if retried:
        log.info("%s: %d stored row(s) had failed: trying them again", model.name, retried)
    if todo.num_rows == 0:
        log.info("%s: all %d rows already generated", model.name, total)
        return summary
    log.info("%s: generating %d of %d rows with %s (%d replica(s))", model.name, todo.num_rows, total,
             model.engine, cfg.bench.replicas)
    # Stream blocks back as they finish and persist each: a crash loses at most the blocks in flight.
    for block in _generated_blocks(todo, cfg, model, base_url):
        block = _normalise_types(block).append_column("model", pa.array([model.name] * block.num_rows, pa.string()))
        block = block.append_column("gen_key", pa.array([keys[r] for r in block["id"].to_pylist()], pa.string()))
        store.write_shard(out_dir, block)
        summary["generated"] += block.num_rows
        summary["errors"] += block.num_rows - pc.sum(pc.is_null(block["error"]).cast(pa.int64())).as_py()
        summary["completion_tokens"] += pc.sum(block["completion_tokens"]).as_py() or 0
        done_now = summary["resumed"] + summary["generated"]
        elapsed = time.perf_counter() - start
        log.info("%s: %d/%d rows (%.0f%%), %.1f rows/s, %d errors", model.name, done_now, total,
                 100 * done_now / total, summary["generated"] / max(elapsed, 1e-9), summary["errors"])
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary["tokens_per_s"] = round(summary["completion_tokens"] / max(summary["seconds"], 1e-9), 1)
    return summary


def read_generations(cfg: "PipelineConfig", model: str, keys: dict[str, str] | None = None) -> pa.Table:
    """The generated rows of a model that match the current settings, one per id.

    `keys` ({row id: gen_key}) defaults to the keys of the current config and benchmark prompts; rows
    with another key (other weights or settings) are left out. A successful attempt wins over a failed
    one (failed rows are retried by `generate`); if a crash duplicated a row, the first shard wins.
    """
    if keys is None:
        spec = next((m for m in cfg.bench.models if m.name == model), None)
        if spec is None:
            raise ValueError(f"no model named {model!r} in bench.models")
        keys = generation_keys(cfg, spec, load_benchmark_prompts(cfg))[1]
    table = store.read_shards(generations_dir(cfg, model))
    if table is None:
        raise FileNotFoundError(generations_dir(cfg, model))
    stored = table["gen_key"].to_pylist() if "gen_key" in table.column_names else [None] * table.num_rows
    errors = table["error"].to_pylist() if "error" in table.column_names else [None] * table.num_rows
    best: dict[str, int] = {}  # id -> row index: the first success, else the first failure
    for i, (rid, key, error) in enumerate(zip(table["id"].to_pylist(), stored, errors)):
        if key is None or keys.get(rid) != key:
            continue
        if rid not in best or (error is None and errors[best[rid]] is not None):
            best[rid] = i
    return table.take(pa.array(sorted(best.values()), pa.int64()))


__all__ = ["generate", "generation_keys", "generations_dir", "load_benchmark_prompts", "prompts_path", "read_generations",
           "OUTPUT_COLUMNS"]
