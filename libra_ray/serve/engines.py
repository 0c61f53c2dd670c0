"""Generation engines hosted inside a Serve replica: plain Python objects, testable without Ray.

Both engines take a `GenParams` and a prompt string (the chat template is applied by the engine's
own tokenizer) and return/stream plain dicts, so the Serve layer never touches torch or vLLM.

- `TransformersEngine`: `model.generate` with dynamic batching of non-streaming requests (Serve
  batches them; one left-padded `generate` per batch). Starts in seconds; fits tests and tiny models.
- `VLLMEngine`: vLLM's `AsyncLLM` (continuous batching, paged KV cache) in the replica. The
  production engine; on CPU it needs the settings from ENVIRONMENT.md (set here).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A problem with the request the client can fix (becomes an OpenAI-format 400)."""

    def __init__(self, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param

    def to_dict(self) -> dict:
        return {"error": {"message": str(self), "type": "invalid_request_error", "param": self.param, "code": self.code}}


@dataclass
class GenParams:
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5

    def group_key(self) -> tuple:
        """Requests with the same sampling settings can share one batched `generate`."""
        return (round(self.temperature, 6), round(self.top_p, 6))


def truncate_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut `text` at the first stop string; True if one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _result(text: str, prompt_tokens: int, completion_tokens: int, finish_reason: str) -> dict:
    return {"text": text, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "finish_reason": finish_reason}


class _Engine:
    """Shared prompt handling: chat template, token counting, length checks."""

    tokenizer = None
    max_model_len: int = 1024

    def render_chat(self, messages: list[dict]) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as err:  # a template that rejects the roles/order given
            raise RequestError(f"messages could not be rendered with the model's chat template: {err}",
                               "invalid_messages", "messages") from None

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return list(ids)

    def check_length(self, prompt_ids: list[int], params: GenParams) -> None:
        if not prompt_ids:
            raise RequestError("the prompt is empty", "empty_prompt", "prompt")
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise RequestError(
                f"this model's maximum context length is {self.max_model_len} tokens; the request has "
                f"{len(prompt_ids)} prompt tokens + max_tokens {params.max_tokens}",
                "context_length_exceeded", "max_tokens" if len(prompt_ids) < self.max_model_len else "messages")


class TransformersEngine(_Engine):
    def __init__(self, model_path: str, max_model_len: int = 1024, torch_threads: int = 1):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(torch_threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.model.eval()
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_model_len
        self.max_model_len = min(max_model_len, limit)
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def _gen_kwargs(self, params: GenParams, max_new_tokens: int) -> dict:
        kw = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id,
              "eos_token_id": sorted(self.eos_ids)}
        if params.greedy:
            kw.update(do_sample=False)
        else:
            kw.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        return kw

    def _finish(self, new_ids: list[int], prompt_len: int, params: GenParams) -> dict:
        """Trim one generated sequence to its own max_tokens / eos / stop strings."""
        ids = new_ids[: params.max_tokens]
        reason = "length"
        for i, tok in enumerate(ids):
            if tok in self.eos_ids:
                ids, reason = ids[:i], "stop"
                break
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, hit = truncate_at_stop(text, params.stop)
        if hit:
            reason = "stop"
        return _result(text, prompt_len, len(ids), reason)

    def generate_batch(self, prompts: list[list[int]], params: list[GenParams]) -> list[dict]:
        """One left-padded `generate` per group of equal sampling settings (blocking; run in a thread)."""
        out: list[dict | None] = [None] * len(prompts)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault(p.group_key(), []).append(i)
        for idx in groups.values():
            batch = self.tokenizer.pad({"input_ids": [prompts[i] for i in idx]}, return_tensors="pt")
            longest = max(params[i].max_tokens for i in idx)
            if params[idx[0]].seed is not None:
                self.torch.manual_seed(params[idx[0]].seed)
            with self.torch.inference_mode():
                seqs = self.model.generate(**batch, **self._gen_kwargs(params[idx[0]], longest))
            width = batch["input_ids"].shape[1]
            for row, i in enumerate(idx):
                out[i] = self._finish(seqs[row, width:].tolist(), len(prompts[i]), params[i])
        return out  # type: ignore[return-value]

    async def stream(self, prompt_ids: list[int], params: GenParams) -> AsyncIterator[dict]:
        """Yield {"delta": str} as tokens arrive, then a final result dict (text = full answer)."""
        from transformers.generation.streamers import BaseStreamer

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        class _Streamer(BaseStreamer):
            first = True

            def put(self, value):  # first call carries the prompt
                if self.first:
                    self.first = False
                    return
                for tok in value.reshape(-1).tolist():
                    loop.call_soon_threadsafe(queue.put_nowait, tok)

            def end(self):
                loop.call_soon_threadsafe(queue.put_nowait, done)

        stop_event = threading.Event()

        class _Cancel:  # a StoppingCriteria: stops generation when the client went away
            def __call__(self, input_ids, scores, **kw):
                return stop_event.is_set()

        from transformers import StoppingCriteriaList

        input_ids = self.torch.tensor([prompt_ids])
        kwargs = self._gen_kwargs(params, params.max_tokens)
        if params.seed is not None:
            self.torch.manual_seed(params.seed)

        def work():
            try:
                with self.torch.inference_mode():
                    self.model.generate(input_ids=input_ids, attention_mask=self.torch.ones_like(input_ids),
                                        streamer=_Streamer(), stopping_criteria=StoppingCriteriaList([_Cancel()]),
                                        **kwargs)
            except Exception as err:  # surfaced to the caller below
                loop.call_soon_threadsafe(queue.put_nowait, err)
                loop.call_soon_threadsafe(queue.put_nowait, done)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        ids: list[int] = []
        sent = ""
        reason = "length"
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, Exception):
                    raise item
                if item in self.eos_ids:
                    reason = "stop"
                    stop_event.set()
                    continue
                if reason == "stop":
                    continue
                ids.append(item)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                text, hit = truncate_at_stop(text, params.stop)
                if text.endswith("\ufffd") and not hit:
                    continue  # an incomplete multi-byte character: wait for the next token
                if len(text) > len(sent):
                    yield {"delta": text[len(sent):]}
                    sent = text
                if hit:
                    reason = "stop"
                    stop_event.set()
        finally:
            stop_event.set()
        yield _result(sent, len(prompt_ids), len(ids), reason)


class VLLMEngine(_Engine):
    """vLLM's AsyncLLM in this process (its EngineCore runs in a child process it manages)."""

    def __init__(self, model_path: str, max_model_len: int = 1024, kv_cache_gib: int = 1,
                 enforce_eager: bool = True, dtype: str = "auto"):
        # CPU settings from ENVIRONMENT.md: a small KV cache and a fraction of the NUMA node's memory.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.SamplingParams = SamplingParams
        args = AsyncEngineArgs(model=model_path, max_model_len=max_model_len, enforce_eager=enforce_eager,
                               gpu_memory_utilization=0.5, disable_log_stats=True, dtype=dtype)
        self.llm = AsyncLLM.from_engine_args(args)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.max_model_len = max_model_len

    def _sampling(self, params: GenParams):
        return self.SamplingParams(max_tokens=params.max_tokens, temperature=params.temperature,
                                   top_p=params.top_p, stop=params.stop or None, seed=params.seed)

    async def stream(self, prompt_ids: list[int], params: GenParams) -> AsyncIterator[dict]:
        sent = ""
        final = None
        rid = uuid.uuid4().hex
        async for out in self.llm.generate({"prompt_token_ids": prompt_ids}, self._sampling(params), rid):
            comp = out.outputs[0]
            if len(comp.text) > len(sent):
                yield {"delta": comp.text[len(sent):]}
                sent = comp.text
            final = comp
        reason = (final.finish_reason if final else None) or "length"
        ntok = len(final.token_ids) if final else 0
        yield _result(sent, len(prompt_ids), ntok, "stop" if reason in ("stop", "abort") else reason)

    async def generate(self, prompt_ids: list[int], params: GenParams) -> dict:
        result = None
        async for item in self.stream(prompt_ids, params):
            result = item
        return result  # type: ignore[return-value]

    def shutdown(self) -> None:
        try:
            self.llm.shutdown()
        except Exception:  # best effort on replica teardown
            log.debug("vLLM shutdown failed", exc_info=True)


def params_from_request(req: dict, limit: int) -> GenParams:
    """GenParams from an OpenAI request body, with the served model's max_tokens limit enforced."""
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens") or min(256, limit)
    if max_tokens > limit:
        raise RequestError(f"max_tokens {max_tokens} exceeds this model's limit of {limit}",
                           "max_tokens_too_large", "max_tokens")
    stop = req.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    temperature = req.get("temperature")
    top_p = req.get("top_p")
    return GenParams(max_tokens=int(max_tokens), temperature=1.0 if temperature is None else float(temperature),
                     top_p=1.0 if top_p is None else float(top_p), stop=stop, seed=req.get("seed"))


__all__ = ["GenParams", "RequestError", "TransformersEngine", "VLLMEngine", "params_from_request",
           "truncate_at_stop"]
