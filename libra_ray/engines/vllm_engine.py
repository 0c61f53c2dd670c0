"""The vLLM engine: one set of engine settings and sampling rules, two front ends.

- `mode="batch"`: vLLM's offline `LLM` (a Ray Data actor calls `generate_batch` on a block of prompts);
- `mode="async"`: vLLM's `AsyncLLM` (continuous batching; a Serve replica calls `generate`/`stream`).

Each request gets its own `SamplingParams` (its own seed included), so batching never mixes them.
Prompts go in as token ids made with the shared chat-template/tokenisation code.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import uuid
import weakref
from collections.abc import AsyncIterator
from multiprocessing import resource_tracker
from typing import Any

import psutil

from libra_ray.engines.base import Engine, prepare_tokenizer
from libra_ray.engines.env import apply_vllm_env, log_handlers_kept
from libra_ray.engines.identity import resolve_dtype
from libra_ray.engines.params import DeltaText, GenParams, engine_error, result

log = logging.getLogger(__name__)

# Engine settings our code sets from other keys; engine_kwargs may not override them (key -> the key to set).
RESERVED_ENGINE_KWARGS = {"model": "path", "dtype": "dtype"}


def check_engine_kwargs(kwargs: dict[str, Any], engine: str) -> dict[str, Any]:
    """engine_kwargs go to vLLM only, and never name the model (that is `path`) or the dtype (one rule for both
    engines: `dtype`)."""
    if kwargs and engine not in ("vllm", "ray_data_llm"):
        raise ValueError(f"engine_kwargs are passed to vLLM; engine {engine!r} takes none")
    reserved = [k for k in kwargs if k in RESERVED_ENGINE_KWARGS]
    if reserved:
        raise ValueError(f"engine_kwargs must not set {', '.join(reserved)} "
                         f"(set {', '.join(RESERVED_ENGINE_KWARGS[k] for k in reserved)} instead)")
    return kwargs


def vllm_engine_args(model_path: str, *, engine_kwargs: dict | None = None, **ours) -> dict:
    """vLLM engine arguments: ours, then the user's `engine_kwargs` over them (configs refuse a `model` there)."""
    return {"model": model_path, **ours, **(engine_kwargs or {})}


def sampling_kwargs(params: GenParams, max_tokens: int | None = None) -> dict:
    """One request's vLLM sampling settings, for `SamplingParams` and for an OpenAI-server request body
    (Ray Serve LLM). Greedy is temperature 0. top_k/min_p/repetition_penalty are spelled out at vLLM's
    neutral values: its OpenAI layer would otherwise take them from the model's generation config."""
    greedy = params.greedy
    return {"max_tokens": max_tokens or params.max_tokens, "temperature": 0.0 if greedy else params.temperature,
            "top_p": 1.0 if greedy else params.top_p, "stop": params.stop or None, "seed": params.seed,
            "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


class VLLMEngine(Engine):
    def __init__(self, model_path: str, *, max_model_len: int = 1024, mode: str = "batch", kv_cache_gib: int = 1,
                 enforce_eager: bool = True, dtype: str = "auto", gpu_memory_utilization: float = 0.5,
                 tensor_parallel_size: int = 1, seed: int = 0, engine_kwargs: dict | None = None):
        """`engine_kwargs`: any further vLLM engine arguments (`LLM(...)` / `AsyncEngineArgs`), merged over
        the settings above, like `ray.data.llm`'s `vLLMEngineProcessorConfig.engine_kwargs`. `dtype` "auto"
        resolves by our rule (`engines.identity.resolve_dtype`), never by vLLM's own (bf16 on CPU)."""
        if mode not in ("batch", "async"):
            raise ValueError(f"mode must be 'batch' or 'async', got {mode!r}")
        apply_vllm_env(kv_cache_gib)  # before vLLM is imported
        if dtype == "auto":
            import torch

            dtype = resolve_dtype(dtype, "cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        from vllm import SamplingParams

        self.SamplingParams = SamplingParams
        self.mode = mode
        args = vllm_engine_args(model_path, max_model_len=max_model_len, enforce_eager=enforce_eager, dtype=dtype,
                                gpu_memory_utilization=gpu_memory_utilization,
                                tensor_parallel_size=tensor_parallel_size, seed=seed, engine_kwargs=engine_kwargs)
        self.max_model_len = args["max_model_len"]  # the user's engine_kwargs may have raised it
        self._children_before = _child_pids()  # what vLLM starts (engine core, workers) is the rest
        with log_handlers_kept():  # vLLM reconfigures logging here, closing the handlers it finds
            if mode == "batch":
                from vllm import LLM

                self.llm = LLM(**args)
            else:
                from vllm.engine.arg_utils import AsyncEngineArgs
                from vllm.v1.engine.async_llm import AsyncLLM

                self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**{"disable_log_stats": True, **args}))
        # Stopped before this process exits: atexit runs the last-registered first, so this comes before
        # vLLM's own exit-time finalizers, while this process and its resource tracker are alive.
        atexit.register(_shutdown_at_exit, weakref.ref(self))
        from transformers import AutoTokenizer

        self.tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(model_path))

    def sampling(self, params: GenParams, max_tokens: int | None = None):
        """This request's SamplingParams (greedy is temperature 0 in vLLM too)."""
        return self.SamplingParams(**sampling_kwargs(params, max_tokens))

    @staticmethod
    def _result(prompt_ids: list[int], comp) -> dict:
        reason = (comp.finish_reason if comp else None) or "length"
        return result(comp.text if comp else "", len(prompt_ids), list(comp.token_ids) if comp else [],
                      "stop" if reason in ("stop", "abort") else reason)

    # ---- batch (offline LLM)
    def _generate(self, prompts: list[list[int]], params: list[GenParams]) -> list[dict]:
        if self.mode != "batch":
            raise RuntimeError("generate_batch needs mode='batch'; use generate/stream in async mode")
        sampling = [self.sampling(p, self.budget(t, p)) for t, p in zip(prompts, params)]
        outputs = self.llm.generate([{"prompt_token_ids": t} for t in prompts], sampling, use_tqdm=False)
        return [self._result(t, o.outputs[0] if o.outputs else None) for t, o in zip(prompts, outputs)]

    # ---- scoring (vLLM's prompt_logprobs: the log-prob of every prompt token given the ones before it)
    def loglikelihood_batch(self, requests: list[tuple[list[int], list[int]]]) -> list[float]:
        if self.mode != "batch":
            raise RuntimeError("loglikelihood_batch needs mode='batch'")
        params = self.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self.llm.generate([{"prompt_token_ids": ctx + cont} for ctx, cont in requests], params,
                                    use_tqdm=False)
        out = []
        for (ctx, cont), o in zip(requests, outputs):
            steps = o.prompt_logprobs[len(ctx):len(ctx) + len(cont)]
            out.append(float(sum(step[tok].logprob for step, tok in zip(steps, cont))))
        return out

    # ---- async (AsyncLLM)
    async def stream(self, prompt_ids: list[int], params: GenParams) -> AsyncIterator[dict]:
        """Yield {"delta": str} as text arrives, then a final result dict."""
        params.check()
        deltas, final = DeltaText(params.stop), None
        async for out in self.llm.generate({"prompt_token_ids": prompt_ids}, self.sampling(params), uuid.uuid4().hex):
            final = out.outputs[0]
            delta = deltas.update(final.text)
            if delta:
                yield {"delta": delta}
        res = self._result(prompt_ids, final)
        delta = deltas.update(res["text"], final=True)  # what was held back: the deltas add up to the text
        if delta:
            yield {"delta": delta}
        yield res

    async def generate(self, prompt_ids: list[int], params: GenParams) -> dict:
        res = None
        try:
            async for item in self.stream(prompt_ids, params):
                res = item
        except Exception as err:  # this request only: the engine keeps serving the others
            log.warning("vLLM request failed: %s", err)
            return err.to_dict() if hasattr(err, "to_dict") else engine_error(err)
        return res  # type: ignore[return-value]

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop vLLM's engine processes (engine core, worker) and wait until every one has exited, while this
        process and its resource tracker are alive: called by the bench actor's __del__, at the latest by the
        atexit hook registered in __init__ (it runs before vLLM's own exit-time finalizers), never left to the
        interpreter's teardown. In a Ray actor this needs the actor's children alive at exit
        (`engines.env.VLLM_ACTOR_RUNTIME_ENV`). vLLM gets the same `timeout` to stop its engine core (its own
        default, 5 s, SIGKILLs an engine core still tearing down on a loaded machine)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
        ours = set(getattr(self, "_children_before", set())) | {tracker}
        started = [p for p in psutil.Process().children(recursive=True) if p.pid not in ours]
        # AsyncLLM has shutdown(); the offline LLM stops through its engine-core client.
        stop = getattr(llm, "shutdown", None) or getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None),
                                                           "shutdown", None)
        try:
            if stop is not None:  # an older vLLM's shutdown takes no timeout
                stop(**({"timeout": timeout} if "timeout" in inspect.signature(stop).parameters else {}))
        except Exception:  # best effort on teardown
            log.debug("vLLM shutdown failed", exc_info=True)
        _, alive = psutil.wait_procs(started, timeout=timeout)
        for proc in alive:
            log.warning("vLLM process %s did not exit in %.0f s; killing it", proc.pid, timeout)
            proc.kill()
        psutil.wait_procs(alive, timeout=5)


def _shutdown_at_exit(ref: "weakref.ref[VLLMEngine]") -> None:
    engine = ref()
    if engine is not None:
        engine.shutdown()


def _child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}
