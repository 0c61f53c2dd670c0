"""Bench's Ray Data callables: one instance per actor, a thin adapter over `libra_ray.engines`.

Every callable maps a batch of benchmark rows (`id`, `prompt`, ...) to the same output columns:
`raw_text` (the completion as generated), `answer` (final answer, `<think>` blocks removed),
`reasoning` (trace or None), `error` (None, or why this row failed), `error_permanent` (True: the same
request would fail again, e.g. a prompt longer than the context; such rows are not retried by later runs),
`prompt_tokens`, `completion_tokens`. A failing row never fails its batch: prompts that do not fit the context are
rejected up front, and an engine failure is isolated to its row (the local engines do that themselves;
for any engine a failing batch is retried row by row). Decoding (chat template, tokenisation, EOS,
greedy vs sampling, seeds) is the shared engines' and identical to what `libra-ray serve` does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from libra_ray.engines.base import chat_messages
from libra_ray.engines.params import GenParams, RequestError, short_error
from libra_ray.policy.rules import split_reasoning

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("raw_text", "answer", "reasoning", "error", "error_permanent", "prompt_tokens", "completion_tokens")
# Endpoint answers that the same request would get again (bad request, too large): not worth retrying.
PERMANENT_HTTP_ERRORS = ("HTTP 400", "HTTP 413", "HTTP 422")


class _Engine:
    """Shared batch logic: per-row errors, output columns. Subclasses implement `_generate`."""

    def __init__(self, system_prompt: str | None = None, max_tokens: int = 64):
        self.system_prompt = system_prompt
        self.max_tokens = max_tokens

    # -- subclass API -------------------------------------------------------------------------
    def _prompt_ids(self, prompt: str) -> list[int] | None:
        """Token ids of the chat-formatted prompt (None: the engine cannot count locally)."""
        return None

    def _generate(self, prompts: list[str], ids: list[list[int] | None]) -> list[dict]:
        """One dict per prompt with raw_text, reasoning, prompt_tokens, completion_tokens[, error]."""
        raise NotImplementedError

    # -- batch entry point ----------------------------------------------------------------------
    def __call__(self, batch: "pa.Table | dict[str, np.ndarray]") -> "pa.Table":
        import pyarrow as pa

        cols = batch.to_pydict() if isinstance(batch, pa.Table) else {k: list(v) for k, v in batch.items()}
        prompts = [str(p) for p in cols["prompt"]]
        out = [dict.fromkeys(OUTPUT_COLUMNS) for _ in prompts]
        todo: list[int] = []
        ids: list[list[int] | None] = []
        for i, prompt in enumerate(prompts):
            try:
                tok = self._prompt_ids(prompt)
            except RequestError as err:  # a prompt too long, or one the tokenizer rejects: this row only
                out[i]["error"], out[i]["error_permanent"] = str(err), True
                out[i]["prompt_tokens"] = getattr(err, "prompt_tokens", None)
                continue
            except Exception as err:
                out[i]["error"], out[i]["error_permanent"] = f"tokenize: {short_error(err)}", True
                continue
            todo.append(i)
            ids.append(tok)
        if todo:
            for i, res in zip(todo, self._generate_isolated([prompts[i] for i in todo], ids)):
                out[i].update(res)
        for row in out:
            if row["error"] is not None and row["error_permanent"] is None:
                row["error_permanent"] = False  # an engine failure: worth another try on the next run
            if row["error"] is None and row["raw_text"] is not None:
                final, trace = split_reasoning(row["raw_text"], row.get("reasoning"))
                row["answer"], row["reasoning"] = final, trace
        for col in OUTPUT_COLUMNS:
            cols[col] = [row.get(col) for row in out]
        return pa.Table.from_pydict(cols)

    def _generate_isolated(self, prompts: list[str], ids: list) -> list[dict]:
        try:
            return self._generate(prompts, ids)
        except Exception as err:
            if len(prompts) == 1:
                return [{"error": f"engine: {short_error(err)}"}]
            log.warning("batch of %d failed (%s); retrying row by row", len(prompts), short_error(err))
            return [self._generate_isolated([p], [t])[0] for p, t in zip(prompts, ids)]


class _SharedEngine(_Engine):
    """A local engine from `libra_ray.engines`; every row gets the benchmark's GenParams (seed included)."""

    def __init__(self, engine, *, max_tokens: int, temperature: float, top_p: float, seed: int | None,
                 system_prompt: str | None, task: str = "generate"):
        super().__init__(system_prompt, max_tokens)
        self.engine = engine
        self.task = task
        self.max_model_len = engine.max_model_len
        self.params = GenParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed).check()

    def _prompt_ids(self, prompt: str) -> list[int]:
        ids = self.engine.chat_ids(prompt, self.system_prompt)
        try:
            self.engine.check_length(ids, self.params, clip_max_tokens=True)
        except RequestError as err:
            err.prompt_tokens = len(ids)
            raise
        return ids

    def __call__(self, batch):
        if self.task == "options":
            return self.score_options(batch)
        return super().__call__(batch)

    def score_options(self, batch: "pa.Table | dict[str, np.ndarray]") -> "pa.Table":
        """Multiple-choice rows (`stem`, `options`) -> `option_logprobs` (sum of each option's token
        log-probs after the chat-formatted stem), `pred` (the most likely option) and `error`; one engine
        call per batch, a failing batch retried row by row."""
        import pyarrow as pa

        cols = batch.to_pydict() if isinstance(batch, pa.Table) else {k: list(v) for k, v in batch.items()}
        requests, owner, errors = [], [], [None] * len(cols["stem"])
        for i, (stem, options) in enumerate(zip(cols["stem"], cols["options"])):
            try:
                pairs = [self.engine.continuation_ids(str(stem), str(o), self.system_prompt) for o in options]
                if max(len(c) + len(o) for c, o in pairs) > self.max_model_len:
                    raise RequestError(f"question too long for max_model_len {self.max_model_len}",
                                       "context_length_exceeded", "messages")
            except Exception as err:
                errors[i] = f"tokenize: {short_error(err)}"
                continue
            requests += pairs
            owner += [i] * len(pairs)
        scores = self._score_isolated(requests)
        per_row: list[list[float]] = [[] for _ in errors]
        for i, score in zip(owner, scores):
            if score is None:
                errors[i] = errors[i] or "engine: scoring failed"
            per_row[i].append(score)
        cols["option_logprobs"] = [None if errors[i] else per_row[i] for i in range(len(errors))]
        cols["pred"] = [None if errors[i] else int(np.argmax(per_row[i])) for i in range(len(errors))]
        cols["error"] = errors
        cols["error_permanent"] = [bool(e and e.startswith("tokenize")) if e else None for e in errors]
        return pa.Table.from_pydict(cols)

    def _score_isolated(self, requests: list) -> list[float | None]:
        if not requests:
            return []
        try:
            return self.engine.loglikelihood_batch(requests)
        except Exception as err:
            if len(requests) == 1:
                log.warning("scoring failed: %s", short_error(err))
                return [None]
            return [self._score_isolated([r])[0] for r in requests]

    def _generate(self, prompts, ids):
        out = []
        for res in self.engine.generate_batch(ids, [self.params] * len(ids)):
            if "error" in res:
                out.append({"error": f"engine: {res['error']['message']}"})
            else:
                out.append({"raw_text": res["text"], "prompt_tokens": res["prompt_tokens"],
                            "completion_tokens": res["completion_tokens"]})
        return out


class VLLMEngine(_SharedEngine):
    """vLLM's offline `LLM` in this actor (CPU build or CUDA); prompts are sent as token ids."""

    def __init__(self, model: str, *, max_model_len: int, max_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.5, enforce_eager: bool = True,
                 kv_cache_gib: int = 1, system_prompt: str | None = None, engine_kwargs: dict | None = None,
                 dtype: str = "auto", task: str = "generate"):
        from libra_ray.engines.vllm_engine import VLLMEngine as Shared

        engine = Shared(model, max_model_len=max_model_len, mode="batch", kv_cache_gib=kv_cache_gib, dtype=dtype,
                        enforce_eager=enforce_eager, gpu_memory_utilization=gpu_memory_utilization,
                        tensor_parallel_size=tensor_parallel_size, seed=seed, engine_kwargs=engine_kwargs)
        super().__init__(engine, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                         system_prompt=system_prompt, task=task)

    def __del__(self):
        # vLLM's processes stop while this actor is alive: here if this callable is collected first, else by the
        # engine's atexit hook. Ray leaves them running until then (the actor's runtime_env,
        # engines.env.VLLM_ACTOR_RUNTIME_ENV); see Shared.shutdown.
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


class TransformersEngine(_SharedEngine):
    """The fallback: `transformers.generate` in this actor (left padding, batched)."""

    def __init__(self, model: str, *, max_model_len: int, max_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, system_prompt: str | None = None, num_threads: int | None = None,
                 dtype: str = "auto", task: str = "generate"):
        from libra_ray.engines.transformers_engine import TransformersEngine as Shared

        super().__init__(Shared(model, max_model_len=max_model_len, num_threads=num_threads, dtype=dtype),
                         max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                         system_prompt=system_prompt, task=task)


class OpenAIEngine(_Engine):
    """A hosted (or local) OpenAI-compatible endpoint through the project's `ChatClient`."""

    def __init__(self, endpoint: dict, base_url: str | None, *, max_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, cache_dir: str | None = None, system_prompt: str | None = None):
        super().__init__(system_prompt, max_tokens)
        from libra_ray.llm.client import ChatClient
        from libra_ray.llm.config import EndpointConfig

        self.client = ChatClient(EndpointConfig.model_validate(endpoint), base_url=base_url, cache_dir=cache_dir)
        self.params = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}

    def _generate(self, prompts, ids):
        results = self.client.chat_many([chat_messages(p, self.system_prompt) for p in prompts], **self.params)
        return [{"raw_text": r.text, "reasoning": r.reasoning, "error": r.error,
                 "error_permanent": bool(r.error and r.error.startswith(PERMANENT_HTTP_ERRORS)),
                 "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens} for r in results]


__all__ = ["OUTPUT_COLUMNS", "OpenAIEngine", "TransformersEngine", "VLLMEngine", "chat_messages"]
