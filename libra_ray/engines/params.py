"""Sampling parameters, per-request errors and result dicts: the vocabulary every engine speaks.

One definition of greedy (temperature <= GREEDY_MAX_TEMPERATURE, as in vLLM), one seed range (what a
torch/vLLM generator accepts), one check that runs before a request joins a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# vLLM treats temperature below its _SAMPLING_EPS (1e-5) as greedy; every engine here does the same.
GREEDY_MAX_TEMPERATURE = 1e-5
# A seed must fit a torch/vLLM generator (int64); larger ones used to fail a whole batch.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


class RequestError(ValueError):
    """A problem with one request the client can fix (becomes an OpenAI-format 400)."""

    def __init__(self, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param

    def to_dict(self) -> dict:
        return {"error": {"message": str(self), "type": "invalid_request_error", "param": self.param, "code": self.code}}


@dataclass
class GenParams:
    """One request's sampling settings; they apply to that request only, whatever it is batched with."""

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= GREEDY_MAX_TEMPERATURE

    def check(self) -> "GenParams":
        """Raise RequestError for a value no engine can use (run before batching)."""
        def number(name, value, kind):
            if isinstance(value, bool) or not isinstance(value, kind):
                raise RequestError(f"{name} must be a number, got {value!r}", "invalid_type", name)
            if isinstance(value, float) and not math.isfinite(value):
                raise RequestError(f"{name} must be finite, got {value!r}", "invalid_value", name)

        number("max_tokens", self.max_tokens, int)
        number("temperature", self.temperature, (int, float))
        number("top_p", self.top_p, (int, float))
        if self.max_tokens < 1:
            raise RequestError(f"max_tokens must be >= 1, got {self.max_tokens}", "invalid_value", "max_tokens")
        if not 0 <= self.temperature <= 2:
            raise RequestError(f"temperature must be in [0, 2], got {self.temperature}", "invalid_value", "temperature")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}", "invalid_value", "top_p")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise RequestError("stop must be a string or a list of strings", "invalid_type", "stop")
        if self.seed is not None:
            number("seed", self.seed, int)
            if not SEED_MIN <= self.seed <= SEED_MAX:
                raise RequestError(f"seed must be a 64-bit integer in [{SEED_MIN}, {SEED_MAX}]", "invalid_value", "seed")
        return self


def truncate_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut `text` at the first stop string; True if one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class DeltaText:
    """Incremental text of one streamed answer: the deltas to send as the text grows, such that their
    concatenation is exactly the final (non-streamed) text.

    `update(text)` takes the whole answer so far (decoded from every token, stop strings already cut)
    and returns what may be sent now. It holds back what a later token may still change: trailing
    U+FFFD (a multi-byte character whose remaining bytes are in the next tokens) and, as vLLM does, the
    last len(longest stop string) - 1 characters (they may begin a stop string, which the final text cuts). `update(text, final=True)` takes the final text and returns the rest
    (a U+FFFD that stayed incomplete is part of the final text, so it is sent too).
    """

    def __init__(self, stop: list[str] | None = None):
        self.hold = max((len(s) - 1 for s in stop or [] if s), default=0)
        self.sent = ""

    def _held_back(self, text: str) -> int:
        return len(text) - len(text.rstrip("\ufffd")) + self.hold

    def update(self, text: str, final: bool = False) -> str:
        ready = text if final else text[: len(text) - self._held_back(text)]
        if len(ready) <= len(self.sent) or not ready.startswith(self.sent):
            return ""  # nothing new (or a decoder that rewrote the past: never resend)
        delta, self.sent = ready[len(self.sent):], ready
        return delta


def result(text: str, prompt_tokens: int, token_ids: list[int], finish_reason: str) -> dict:
    """An engine's answer to one request (`token_ids`: the completion's tokens, stop token excluded)."""
    return {"text": text, "prompt_tokens": prompt_tokens, "completion_tokens": len(token_ids),
            "finish_reason": finish_reason, "token_ids": list(token_ids)}


def short_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"


def engine_error(err: BaseException) -> dict:
    """A per-request failure inside the engine, as a value (the request's batch neighbours are unaffected)."""
    return {"error": {"message": f"generation failed ({short_error(err)})", "type": "server_error", "param": None,
                      "code": "engine_failed"}}
