"""Generation engines as Ray Data callable classes: one instance per actor, one engine per instance.

Every engine maps a batch of benchmark rows (`id`, `prompt`, ...) to the same output columns:
`raw_text` (the completion as generated), `answer` (final answer, `<think>` blocks removed),
`reasoning` (trace or None), `error` (None, or why this row failed), `prompt_tokens`,
`completion_tokens`. A failing row never fails its batch: prompts that do not fit the context are
rejected up front, and an engine error on a batch is retried row by row so only the bad row is marked.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

from libra_ray.bench.rules import split_reasoning

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("raw_text", "answer", "reasoning", "error", "prompt_tokens", "completion_tokens")


def chat_messages(prompt: str, system_prompt: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": prompt}]


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"


class _Engine:
    """Shared batch logic: per-row errors, output columns. Subclasses implement `_generate`."""

    max_model_len: int | None = None

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
            except Exception as err:  # a tokenizer failure is this row's problem only
                out[i]["error"] = f"tokenize: {_short(err)}"
                continue
            if tok is not None and self.max_model_len and len(tok) >= self.max_model_len:
                out[i]["error"] = f"prompt too long: {len(tok)} tokens >= max_model_len {self.max_model_len}"
                out[i]["prompt_tokens"] = len(tok)
                continue
            todo.append(i)
            ids.append(tok)
        if todo:
            for i, res in zip(todo, self._generate_isolated([prompts[i] for i in todo], ids)):
                out[i].update(res)
        for row in out:
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
                return [{"error": f"engine: {_short(err)}"}]
            log.warning("batch of %d failed (%s); retrying row by row", len(prompts), _short(err))
            return [self._generate_isolated([p], [t])[0] for p, t in zip(prompts, ids)]


class _LocalTokenizerEngine(_Engine):
    tokenizer: Any

    def _prompt_ids(self, prompt: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            chat_messages(prompt, self.system_prompt), tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class VLLMEngine(_LocalTokenizerEngine):
    """vLLM's offline `LLM` in this actor (CPU build or CUDA); prompts are sent as token ids."""

    def __init__(self, model: str, *, max_model_len: int, max_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.5, enforce_eager: bool = True,
                 kv_cache_gib: int = 1, system_prompt: str | None = None):
        super().__init__(system_prompt, max_tokens)
        # vLLM's CPU backend sizes its KV cache from this variable (GiB); the default is too big here.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        from vllm import LLM, SamplingParams

        self.max_model_len = max_model_len
        self.llm = LLM(model=model, max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, seed=seed)
        self.tokenizer = self.llm.get_tokenizer()
        self.sampling = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)

    def _generate(self, prompts, ids):
        outputs = self.llm.generate([{"prompt_token_ids": t} for t in ids], self.sampling, use_tqdm=False)
        res = []
        for o in outputs:
            c = o.outputs[0]
            res.append({"raw_text": c.text, "prompt_tokens": len(o.prompt_token_ids or []),
                        "completion_tokens": len(c.token_ids)})
        return res


class TransformersEngine(_LocalTokenizerEngine):
    """The fallback: `transformers.generate` in this actor (left padding, batched)."""

    def __init__(self, model: str, *, max_model_len: int, max_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, system_prompt: str | None = None, num_threads: int | None = None):
        super().__init__(system_prompt, max_tokens)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.torch = torch
        self.max_model_len = max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.temperature, self.top_p, self.seed = temperature, top_p, seed

    def _generate(self, prompts, ids):
        torch = self.torch
        width = max(len(t) for t in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(t)) + t for t in ids])
        attention = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in ids])
        sample = self.temperature > 0
        kwargs = dict(do_sample=sample, temperature=self.temperature, top_p=self.top_p) if sample else dict(do_sample=False)
        if sample:
            torch.manual_seed(self.seed)
        with torch.inference_mode():
            gen = self.model.generate(input_ids=input_ids, attention_mask=attention, pad_token_id=pad,
                                      max_new_tokens=min(self.max_tokens, self.max_model_len - width), **kwargs)
        res = []
        eos = self.tokenizer.eos_token_id
        for t, row in zip(ids, gen[:, width:].tolist()):
            if eos in row:
                row = row[: row.index(eos)]  # the stop token is not part of the completion (as in vLLM)
            while row and row[-1] == pad:
                row.pop()
            res.append({"raw_text": self.tokenizer.decode(row, skip_special_tokens=True),
                        "prompt_tokens": len(t), "completion_tokens": len(row)})
        return res


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
                 "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens} for r in results]
