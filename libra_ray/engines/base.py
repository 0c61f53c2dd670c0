"""What every local engine shares: chat templating, tokenisation, stop/EOS ids, length checks, and
batch isolation (a failing request is answered with its own error; its neighbours still get theirs)."""

from __future__ import annotations

import logging

from libra_ray.engines.params import GenParams, RequestError, engine_error, short_error

log = logging.getLogger(__name__)


def chat_messages(prompt: str, system_prompt: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": prompt}]


def eos_ids(tokenizer, generation_config=None) -> set[int]:
    """The stop tokens: the generation config's EOS set plus the tokenizer's EOS."""
    ids = getattr(generation_config, "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def prepare_tokenizer(tokenizer):
    """Left padding (batched generation appends on the right) and a pad token (EOS if the model has none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_prompt_chars(texts: list[str], max_chars: int, max_model_len: int) -> None:
    """A RequestError when `texts` have more characters than any prompt that fits `max_model_len` tokens
    (`Engine.max_prompt_chars`). Shared by the engines and Serve's ingress, which checks it before the
    request reaches a replica."""
    chars = sum(len(t) for t in texts)
    if chars > max_chars:
        raise RequestError(f"prompt too long: {chars} characters cannot fit this model's maximum context "
                           f"length of {max_model_len} tokens", "context_length_exceeded", "messages")


class Engine:
    """Base class. Subclasses set `tokenizer`, `max_model_len` and implement `_generate`."""

    tokenizer = None
    max_model_len: int = 1024

    # ---- prompt handling
    _max_token_chars: int | None = None

    def max_prompt_chars(self) -> int:
        """Characters beyond which a prompt cannot fit `max_model_len` tokens, whatever it says: no token is
        longer than the vocabulary's longest entry (a byte-level entry has at least as many characters as
        the text it decodes to), so more characters need more tokens than the context holds."""
        if self._max_token_chars is None:
            self._max_token_chars = max(1, max((len(t) for t in self.tokenizer.get_vocab()), default=1))
        return self.max_model_len * self._max_token_chars

    def check_chars(self, texts: list[str]) -> None:
        """The cheap bound, before any templating or tokenising: a RequestError for a prompt too long."""
        check_prompt_chars(texts, self.max_prompt_chars(), self.max_model_len)

    def prepare(self, req: dict) -> tuple[list[int], GenParams]:
        """A Serve request dict ({"messages"} or {"prompt"}, "params") as prompt ids and checked params;
        RequestError for anything that makes it unanswerable, cheapest check first. Blocking (tokenises)."""
        params = GenParams(**req["params"]).check()
        messages = req.get("messages")
        self.check_chars([m["content"] for m in messages] if messages is not None else [req["prompt"]])
        ids = self.encode(self.render_chat(messages) if messages is not None else req["prompt"])
        self.check_length(ids, params)
        return ids, params

    def render_chat(self, messages: list[dict]) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as err:  # a template that rejects the roles/order given
            raise RequestError(f"messages could not be rendered with the model's chat template: {err}",
                               "invalid_messages", "messages") from None

    def encode(self, prompt: str) -> list[int]:
        try:
            return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        except Exception as err:  # e.g. a lone surrogate the tokenizer cannot encode
            raise RequestError(f"the prompt could not be tokenized ({short_error(err)})", "invalid_prompt",
                               "messages") from None

    def chat_ids(self, prompt: str, system_prompt: str | None = None) -> list[int]:
        """Token ids of one user prompt in the model's chat template."""
        return self.encode(self.render_chat(chat_messages(prompt, system_prompt)))

    def check_length(self, prompt_ids: list[int], params: GenParams, clip_max_tokens: bool = False) -> None:
        """RequestError if the prompt cannot be answered. Strict (OpenAI semantics) unless clip_max_tokens:
        then only a prompt filling the whole context is rejected, and the answer is cut at the context end."""
        if not prompt_ids:
            raise RequestError("the prompt is empty", "empty_prompt", "prompt")
        if clip_max_tokens:
            if len(prompt_ids) >= self.max_model_len:
                raise RequestError(f"prompt too long: {len(prompt_ids)} tokens >= max_model_len {self.max_model_len}",
                                   "context_length_exceeded", "messages")
            return
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise RequestError(
                f"this model's maximum context length is {self.max_model_len} tokens; the request has "
                f"{len(prompt_ids)} prompt tokens + max_tokens {params.max_tokens}",
                "context_length_exceeded", "max_tokens" if len(prompt_ids) < self.max_model_len else "messages")

    def budget(self, prompt_ids: list[int], params: GenParams) -> int:
        """New tokens this request may get: its max_tokens, cut at the context end."""
        return max(1, min(params.max_tokens, self.max_model_len - len(prompt_ids)))

    # ---- batch generation
    def generate_batch(self, prompts: list[list[int]], params: list[GenParams]) -> list[dict]:
        """One result dict (or {"error": ...}) per request, in order. Blocking.

        Each request's parameters are checked on their own first; an engine failure on the batch is
        retried request by request, so a bad request only ever fails itself.
        """
        out: list[dict | None] = [None] * len(prompts)
        todo = []
        for i, p in enumerate(params):
            try:
                p.check()
                todo.append(i)
            except RequestError as err:
                out[i] = err.to_dict()
        for i, res in zip(todo, self._isolated([prompts[i] for i in todo], [params[i] for i in todo])):
            out[i] = res
        return out  # type: ignore[return-value]

    def _isolated(self, prompts: list[list[int]], params: list[GenParams]) -> list[dict]:
        if not prompts:
            return []
        try:
            return self._generate(prompts, params)
        except Exception as err:
            if len(prompts) == 1:
                log.warning("generation failed: %s", short_error(err))
                return [engine_error(err)]
            log.warning("batch of %d failed (%s); retrying one by one", len(prompts), short_error(err))
            return [self._isolated([t], [p])[0] for t, p in zip(prompts, params)]

    def _generate(self, prompts: list[list[int]], params: list[GenParams]) -> list[dict]:
        raise NotImplementedError

    # ---- scoring (multiple-choice by log-likelihood, lm-eval-harness style)
    def continuation_ids(self, prompt: str, continuation: str, system_prompt: str | None = None
                         ) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids): the chat-formatted prompt and the assistant's reply `continuation`
        after it, tokenised together and split where the context ends (as lm-eval-harness does)."""
        context_text = self.render_chat(chat_messages(prompt, system_prompt))
        context = self.encode(context_text)
        whole = self.encode(context_text + continuation)
        if whole[:len(context)] == context and len(whole) > len(context):
            return context, whole[len(context):]
        return context, self.encode(continuation)

    def loglikelihood_batch(self, requests: list[tuple[list[int], list[int]]]) -> list[float]:
        """Sum of log P(continuation token | everything before it) for each (context, continuation)."""
        raise NotImplementedError(f"{type(self).__name__} cannot score continuations")

    def shutdown(self) -> None:
        pass
