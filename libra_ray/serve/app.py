"""The Serve application: one OpenAI-compatible ingress routing by `model` to per-model engines.

    client --HTTP--> Serve proxy --> OpenAIIngress (FastAPI: auth, validation, guard, SSE)
                                        |-- handle --> ModelServer "policy" (autoscaled replicas)
                                        '-- handle --> ModelServer "judge"  (autoscaled replicas)

A vLLM model (`engine: vllm`, `vllm_server: ray_serve_llm`, the default) is served by Ray Serve LLM's
`LLMServer` instead (`ray_llm.py`), with the same `generate`/`stream` interface.

Every client mistake becomes an OpenAI-format error (`{"error": {message, type, param, code}}`) with a
4xx status; engine replicas return request errors as values (never raise), so a bad request can
never kill a replica. The import path used by the YAMLs under `serve/` is `libra_ray.deploy:app_builder`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ray import serve

from libra_ray.credentials import get_credential
from libra_ray.serve.config import ServeConfig, ServedModelConfig
from libra_ray.engines.params import SEED_MAX, SEED_MIN
from libra_ray.serve.engines import (GenParams, RequestError, check_prompt_chars, make_engine, params_from_request,
                                    served_identity)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- errors

class APIError(Exception):
    """An error that becomes an OpenAI-format JSON response with `status`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param

    def response(self) -> JSONResponse:
        body = {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def _from_request_error(err: dict) -> APIError:
    e = err["error"]
    kind = e.get("type", "invalid_request_error")
    # A request's own mistake is a 400; an engine failure on that one request (engine_failed) a 500.
    return APIError(400 if kind == "invalid_request_error" else 500, e["message"], kind, e.get("code"), e.get("param"))


# --------------------------------------------------------------------------- request schemas

class _Loose(BaseModel):
    # Inside a message: other keys are checked by `_unsupported_message_keys` before validation.
    model_config = ConfigDict(extra="ignore")


# Strict types, as OpenAI's API has them: "8" is not a number, true is not 1, "yes" is not a boolean.
Int = Annotated[int, Field(strict=True)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Bool = Annotated[bool, Field(strict=True)]
Str = Annotated[str, Field(strict=True)]

# OpenAI allows up to 4 stop sequences; more are refused (400) on every engine path.
MAX_STOP = 4

# Request fields we accept but that change nothing (identifiers, hints).
IGNORED_FIELDS = frozenset({"user", "metadata", "safety_identifier", "prompt_cache_key", "service_tier"})


def _neutral(*values: Any) -> Any:
    return lambda v: v is None or any(v == x and type(v) is type(x) for x in values)


# Request fields we do not implement: accepted only at their neutral value (what sending nothing means),
# any other value is refused with a 400 that names the field, never silently ignored.
UNSUPPORTED_FIELDS = {
    "logprobs": _neutral(False),             # completions' logprobs is an int: any int asks for them
    "top_logprobs": _neutral(0),
    "tools": _neutral([]),
    "tool_choice": _neutral("none"),
    "parallel_tool_calls": _neutral(),
    "functions": _neutral([]),
    "function_call": _neutral("none"),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "presence_penalty": _neutral(0, 0.0),
    "frequency_penalty": _neutral(0, 0.0),
    "logit_bias": _neutral({}),
    "echo": _neutral(False),
    "best_of": _neutral(1),
    "suffix": _neutral(),
    "modalities": lambda v: v is None or v == ["text"],
    "audio": _neutral(),
    "prediction": _neutral(),
    "reasoning_effort": _neutral(),
    "web_search_options": _neutral(),
    "store": _neutral(False),
}

# Message keys beside role/content: `name` is accepted; any other key with a value is refused.
MESSAGE_KEYS = frozenset({"role", "content", "name"})


def _unsupported(body: dict, cls: type[BaseModel]) -> dict:
    """The body without ignorable fields; a 400 naming the first field we do not support."""
    out = {}
    for key, value in body.items():
        if key in cls.model_fields:
            out[key] = value
        elif key in IGNORED_FIELDS:
            continue
        elif key in UNSUPPORTED_FIELDS:
            if not UNSUPPORTED_FIELDS[key](value):
                raise APIError(400, f"{key}: not supported by this server (send it unset)",
                               code="unsupported_parameter", param=key)
        else:
            raise APIError(400, f"unrecognized request argument: {key}", code="unknown_parameter", param=key)
    messages = out.get("messages")
    if isinstance(messages, list):
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                continue
            extra = [k for k, v in msg.items() if k not in MESSAGE_KEYS and v not in (None, [], "")]
            if extra:
                raise APIError(400, f"messages.{i}.{extra[0]}: not supported by this server", code="unsupported_parameter",
                               param=f"messages.{i}.{extra[0]}")
    return out


class ContentPart(_Loose):
    type: Str
    text: Str | None = None

    @field_validator("type")
    @classmethod
    def _text_only(cls, kind: str) -> str:
        if kind != "text":
            raise ValueError(f"{kind!r} content parts are not supported (text only)")
        return kind

    @model_validator(mode="after")
    def _text_part_has_text(self) -> "ContentPart":
        if self.text is None:
            raise ValueError("a text content part needs a string 'text'")
        return self


class ChatMessage(_Loose):
    role: Literal["system", "developer", "user", "assistant"]
    content: Str | list[ContentPart]
    name: Str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_given(cls, content: Any) -> Any:
        if content is None:
            raise ValueError("content must be a string or a list of text parts, not null")
        return content

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: all text (others are refused)
            return "".join(p.text or "" for p in self.content)
        return self.content


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: Bool | None = None


class _Sampling(BaseModel):
    model: Str = Field(min_length=1)
    max_tokens: Int | None = Field(default=None, ge=1)
    max_completion_tokens: Int | None = Field(default=None, ge=1)
    temperature: Number | None = Field(default=None, ge=0, le=2)
    top_p: Number | None = Field(default=None, gt=0, le=1)
    n: Int | None = Field(default=None, ge=1, le=1, description="one choice per request")
    stream: Bool | None = None
    stream_options: StreamOptions | None = None
    stop: Str | Annotated[list[Str], Field(max_length=MAX_STOP)] | None = None
    seed: Int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "_Sampling":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        return self


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)

    @model_validator(mode="after")
    def _has_user_message(self) -> "ChatRequest":
        if not any(m.role == "user" for m in self.messages):
            raise ValueError("messages: at least one message must have role 'user'")
        return self


class CompletionRequest(_Sampling):
    prompt: Str | list[Str]


def _check_text(body: Any) -> None:
    """400 for a string that is not valid Unicode (a lone surrogate such as "\\ud800" from JSON)."""
    todo: list[tuple[str, Any]] = [("", body)]
    while todo:  # iterative: the body may be nested deeply
        path, value = todo.pop()
        if isinstance(value, dict):
            todo += [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
            todo += [(path, k) for k in value]
        elif isinstance(value, list):
            todo += [(f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value)]
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(400, f"{path or 'body'}: the string is not valid Unicode (a lone surrogate?)",
                               code="invalid_value", param=path or None) from None


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "none"))


def _validate(cls: type[BaseModel], body: dict) -> Any:
    body = _unsupported(body, cls)
    try:
        return cls.model_validate(body)
    except ValidationError as err:
        # The most specific error (a union reports one per branch; the deepest is the one that matters),
        # its path without pydantic's union-branch tags ("messages.0.content.0.text").
        first = max(err.errors(), key=lambda e: len(e["loc"]))
        param = ".".join(str(p) for p in first["loc"] if not _is_union_tag(p)) or None
        msg = first["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{param}: {msg}" if param else msg, code="invalid_value",
                       param=param) from None


# Bodies up to this size are parsed on the event loop (2-core VM: a 64 KiB one-message chat body parses and
# validates in ~0.06 ms, a hand-off to a worker thread costs ~0.08 ms; a body of many short messages takes up
# to ~10x longer per byte). Larger bodies are parsed in a worker thread.
PARSE_INLINE_BYTES = 64 * 1024


def body_bound(max_prompt_chars: int, max_model_len: int) -> int:
    """Bytes of the largest JSON body whose prompt can be within `max_prompt_chars`: 12 bytes per character (an
    astral character written as two \\uXXXX escapes), 128 per context token for message framing (every message
    costs at least one token of the chat template) and 64 KiB for the other fields. Those fields are not capped
    one by one: a request whose `user`, `metadata`, stop strings or message names take more than 64 KiB in all
    can be refused by this limit."""
    return 12 * max_prompt_chars + 128 * max_model_len + 64 * 1024


def _parse_as(cls: type[BaseModel], raw: bytes) -> Any:
    return _validate(cls, parse_body(raw))


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body, or an OpenAI-format 400 (never a 5xx) for any malformed body."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(400, f"the request body is not UTF-8 ({err.reason} at byte {err.start})",
                       code="invalid_json") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise APIError(400, f"the request body is not valid JSON ({err})", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    _check_text(body)
    return body


# --------------------------------------------------------------------------- auth

def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_key_hashes(cfg: ServeConfig) -> list[str]:
    """SHA-256 digests of the configured API keys (the keys themselves never leave this function).

    Raises ConfigError (a ValueError) when auth is configured but no key is found: never silently serve open.
    """
    from libra_ray._config_base import ConfigError

    if not cfg.api_keys_env and not cfg.api_keys_file:
        return []
    keys: list[str] = []
    if cfg.api_keys_env:
        keys += [k.strip() for k in (get_credential(cfg.api_keys_env) or "").split(",") if k.strip()]
    if cfg.api_keys_file:
        path = Path(cfg.api_keys_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"serve.api_keys_file {cfg.api_keys_file} does not exist")
        keys += [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not keys:
        where = " or ".join(x for x in (cfg.api_keys_env and f"${cfg.api_keys_env}", cfg.api_keys_file) if x)
        raise ConfigError(f"serve: API-key auth is configured but no key was found in {where}")
    return sorted({hash_key(k) for k in keys})


def key_allowed(presented: str | None, hashes: list[str]) -> bool:
    """Constant-time check of a presented key against every stored digest (no early exit)."""
    if presented is None:
        presented = ""
    digest = hash_key(presented)
    ok = False
    for h in hashes:
        ok |= hmac.compare_digest(digest, h)
    return ok and bool(presented)


# --------------------------------------------------------------------------- engine deployment

@serve.deployment(max_ongoing_requests=16)
class ModelServer:
    """One served model: a generation engine in a replica. Request errors come back as values."""

    def __init__(self, spec: dict):
        self.spec = ServedModelConfig.model_validate(spec)
        start = time.perf_counter()
        self.engine = make_engine(self.spec)
        if self.spec.engine != "vllm":
            self._batched.set_max_batch_size(self.spec.max_batch_size)
            self._batched.set_batch_wait_timeout_s(self.spec.batch_wait_timeout_s)
        log.info("model %s (%s) ready in %.1f s; serving %s", self.spec.name, self.spec.engine,
                 time.perf_counter() - start, json.dumps({**served_identity(self.spec), "dtype": self.engine.dtype}))

    async def _prepare(self, req: dict) -> tuple[list[int], GenParams]:
        """Everything that can reject one request, done before it may join a batch: off the event loop (a
        long prompt's tokenising must not hold up other requests), after the cheap character bound."""
        return await asyncio.to_thread(self.engine.prepare, req)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batched(self, items: list[tuple[list[int], GenParams]]) -> list[dict]:
        return await asyncio.to_thread(self.engine.generate_batch, [i[0] for i in items], [i[1] for i in items])

    async def generate(self, req: dict) -> dict:
        try:
            ids, params = await self._prepare(req)
        except RequestError as err:
            return err.to_dict()
        if self.spec.engine == "vllm":
            return await self.engine.generate(ids, params)
        return await self._batched((ids, params))

    async def stream(self, req: dict):
        try:
            ids, params = await self._prepare(req)
        except RequestError as err:
            yield err.to_dict()
            return
        async for item in self.engine.stream(ids, params):
            yield item

    async def ping(self) -> bool:
        """Readiness: the replica answers (the ingress's `/health` asks every model)."""
        return True

    def info(self) -> dict:
        """What the ingress checks before sending a request here (`max_prompt_chars`: the cheap length bound)."""
        return {"name": self.spec.name, "engine": self.spec.engine, "max_model_len": self.engine.max_model_len,
                "max_prompt_chars": self.engine.max_prompt_chars()}

    def __del__(self):
        shutdown = getattr(getattr(self, "engine", None), "shutdown", None)
        if shutdown:
            shutdown()


# --------------------------------------------------------------------------- ingress

api = FastAPI(title="libra_ray OpenAI-compatible API", docs_url=None, redoc_url=None)


@api.exception_handler(APIError)
async def _api_error(request: Request, err: APIError):
    return err.response()


@api.exception_handler(404)
async def _not_found(request: Request, err):
    return APIError(404, f"no route {request.method} {request.url.path}", code="not_found").response()


@api.exception_handler(405)
async def _bad_method(request: Request, err):
    return APIError(405, f"method {request.method} not allowed on {request.url.path}", code="method_not_allowed").response()


def _usage(result: dict) -> dict:
    p, c = result.get("prompt_tokens", 0), result.get("completion_tokens", 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(api)
class OpenAIIngress:
    """The OpenAI routes. `models` maps served name -> engine handle; `options` is the ServeConfig dump."""

    def __init__(self, models: dict, limits: dict[str, int], options: dict, key_hashes: list[str],
                 identities: dict[str, dict] | None = None):
        self.models = models
        self.identities = identities or {}  # served name -> path, weights fingerprint, dtype, engine
        self.limits = limits
        self.cfg = ServeConfig.model_validate(options)
        self.key_hashes = key_hashes
        self.created = int(time.time())
        self.bounds: dict[str, dict] = {}  # served name -> its replicas' `info()` (max_prompt_chars, ...)
        self.learning: asyncio.Task | None = None  # asks the models for their bounds, in the background
        self.answered: set[str] = set()  # models that have answered a call (a replica is up: it may be asked)

    # ---- helpers
    def _auth(self, request: Request) -> None:
        if not self.key_hashes:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key_allowed(key.strip(), self.key_hashes):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           "authentication_error", "invalid_api_key")

    async def _request(self, request: Request, cls: type[BaseModel]) -> Any:
        """The request body parsed and validated as `cls`; a large body off the event loop, so that parsing a
        few 1 MB bodies does not hold up the small requests beside them."""
        raw = await self._body(request)
        if len(raw) > PARSE_INLINE_BYTES:
            return await asyncio.to_thread(_parse_as, cls, raw)
        return _parse_as(cls, raw)

    async def _body(self, request: Request) -> bytes:
        self._auth(request)
        declared = request.headers.get("content-length", "")
        size = int(declared) if declared.isdigit() else None
        if size is not None and size > self.cfg.max_request_bytes:
            raise APIError(413, f"request body over {self.cfg.max_request_bytes} bytes", code="request_too_large")
        limit = self._prompt_body_limit()
        if size is not None and limit is not None and size > limit:
            # Refused by its declared size, unread: receiving it would slow the requests beside it.
            raise APIError(413, f"request body of {size} bytes is larger than any request whose prompt fits the "
                           f"served models (at most {limit} bytes)", code="request_too_large")
        try:  # a client that stops sending mid-body must not hold its connection (and our replica) open
            raw = await asyncio.wait_for(request.body(), self.cfg.body_timeout_s)
        except asyncio.TimeoutError:
            raise APIError(408, f"the request body was not received within {self.cfg.body_timeout_s:g} s",
                           code="request_timeout") from None
        if len(raw) > self.cfg.max_request_bytes:
            raise APIError(413, f"request body over {self.cfg.max_request_bytes} bytes", code="request_too_large")
        return raw

    def _handle(self, model: str):
        if model not in self.models:
            raise APIError(404, f"the model {model!r} does not exist; served: {', '.join(sorted(self.models))}",
                           code="model_not_found", param="model")
        return self.models[model]

    def _prompt_body_limit(self) -> int | None:
        """The largest body that can carry a prompt within every served model's character bound (`body_bound`),
        once all are known; None before (the first call starts asking the models, without waiting for them)."""
        if self.bounds.keys() >= self.models.keys():
            return max(body_bound(b["max_prompt_chars"], b["max_model_len"]) for b in self.bounds.values())
        self._learn()
        return None

    def _learn(self) -> None:
        if self.learning is None or self.learning.done():
            self.learning = asyncio.create_task(self._learn_bounds())

    async def _learn_bounds(self) -> None:
        """Ask each model with a replica for its bound. A scale-to-zero model is not woken for it: it is asked
        once it has answered a call (a request of its own, or the guard's); until then only `max_request_bytes`
        limits the body."""
        specs = {m.name: m for m in (self.cfg.policy, self.cfg.judge)}
        for name in self.models:
            spec = specs.get(name)
            if spec is not None and spec.autoscaling.min_replicas == 0 and name not in self.answered:
                continue
            if await self._bound(name) is None:  # not started yet: asked again by a later request
                return

    async def _bound(self, model: str) -> dict | None:
        """A model's `info()` (its character bound), asked of a replica once and kept; None while none answers."""
        if model not in self.bounds:
            try:
                self.bounds[model] = await asyncio.wait_for(self._handle(model).info.remote(),
                                                            self.cfg.health_timeout_s)
            except Exception:  # not started yet, or overloaded past the timeout
                return None
        return self.bounds[model]

    async def _check_chars(self, model: str, texts: list[str]) -> None:
        """The replica's cheap length bound, checked here: a prompt too long for the model is refused before
        it is sent to a replica (a few 1 MB prompts must not slow the requests beside them)."""
        bound = await self._bound(model)
        if bound is None:  # not started yet: the replica checks the bound itself
            return
        try:
            check_prompt_chars(texts, bound["max_prompt_chars"], bound["max_model_len"])
        except RequestError as err:
            raise APIError(400, str(err), code=err.code, param=err.param) from None

    def _params(self, req: _Sampling) -> dict:
        try:
            params = params_from_request(req.model_dump(), self.limits[req.model])
        except RequestError as err:
            raise APIError(400, str(err), code=err.code, param=err.param) from None
        return params.__dict__

    async def _call(self, model: str, payload: dict) -> dict:
        try:
            out = await self._handle(model).generate.remote(payload)
        except APIError:
            raise
        except Exception as err:  # replica died / overloaded: the client may retry
            log.warning("engine %s failed: %s", model, type(err).__name__)
            raise APIError(503, f"model {model!r} is unavailable, retry later ({type(err).__name__})",
                           "server_error", "engine_unavailable") from None
        if model not in self.answered:
            self.answered.add(model)
            self._learn()
        if "error" in out:
            raise _from_request_error(out)
        return out

    def _guarded(self, model: str) -> bool:
        return self.cfg.guard != "off" and model in self.cfg.guard_models and self.cfg.judge.name in self.models

    async def _guard(self, model: str, result: dict) -> dict | None:
        """Screen a policy answer with the judge; may replace the text. Returns the verdict dict."""
        if not self._guarded(model):
            return None
        from libra_ray.serve.guard import guard_messages, screen

        judge = {"messages": guard_messages(result["text"], self.cfg.guard_prompt),
                 "params": GenParams(max_tokens=min(8, self.limits[self.cfg.judge.name]), temperature=0.0).__dict__}
        try:
            reply = (await self._call(self.cfg.judge.name, judge))["text"]
        except APIError as err:
            log.warning("guard judge failed: %s", err)
            reply = None
        verdict = screen(result["text"], reply, self.cfg.guard_prompt, self.cfg.guard_rule, self.cfg.guard,
                         self.cfg.guard_fail_closed)
        if verdict.blocked:
            result["text"] = self.cfg.guard_refusal
            result["finish_reason"] = "content_filter"
        return verdict.to_dict()

    # ---- routes
    @api.api_route("/health", methods=["GET", "HEAD"])
    async def health(self) -> JSONResponse:
        """Readiness: 200 only when every served model answers within `health_timeout_s`, else 503."""
        names = sorted(self.models)

        async def answers(name: str) -> bool:
            try:
                return bool(await asyncio.wait_for(self.models[name].ping.remote(), self.cfg.health_timeout_s))
            except Exception:  # not started yet, dead, overloaded past the timeout: not ready
                return False

        ready = dict(zip(names, await asyncio.gather(*(answers(n) for n in names))))
        ok = all(ready.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "models": names,
                             "ready": ready}, status_code=200 if ok else 503)

    @api.api_route("/health/live", methods=["GET", "HEAD"])
    async def live(self) -> dict:
        """Liveness: the ingress answers (models may still be starting)."""
        return {"status": "live"}

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> dict:
        self._auth(request)
        return {"object": "list", "data": [self._model_entry(name) for name in sorted(self.models)]}

    @api.get("/v1/models/{model_id:path}")
    async def retrieve_model(self, model_id: str, request: Request) -> dict:
        self._auth(request)
        self._handle(model_id)  # 404 in OpenAI's error shape for a name we do not serve
        return self._model_entry(model_id)

    def _model_entry(self, name: str) -> dict:
        """OpenAI's model object plus what the model is: weights path and fingerprint, dtype, engine."""
        return {"id": name, "object": "model", "created": self.created, "owned_by": "libra_ray",
                **self.identities.get(name, {})}

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        req = await self._request(request, ChatRequest)
        self._handle(req.model)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        await self._check_chars(req.model, [m["content"] for m in messages])
        payload = {"messages": messages, "params": self._params(req)}
        return await self._respond(req, payload, chat=True)

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        req = await self._request(request, CompletionRequest)
        self._handle(req.model)
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, "send one prompt per request (a list of exactly one string)", code="invalid_value",
                               param="prompt")
            prompt = prompt[0]
        await self._check_chars(req.model, [prompt])
        return await self._respond(req, {"prompt": prompt, "params": self._params(req)}, chat=False)

    async def _respond(self, req: _Sampling, payload: dict, chat: bool):
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if req.stream:
            return await self._stream(req, payload, rid, chat)
        result = await self._call(req.model, payload)
        verdict = await self._guard(req.model, result)
        choice: dict = {"index": 0, "finish_reason": result["finish_reason"], "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": result["text"]}
        else:
            choice["text"] = result["text"]
        body = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": req.model, "choices": [choice], "usage": _usage(result)}
        if verdict is not None:
            body["libra_guard"] = verdict
        return JSONResponse(body)

    async def _stream(self, req: _Sampling, payload: dict, rid: str, chat: bool):
        created = int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None, role: bool = False, extra: dict | None = None) -> dict:
            if chat:
                d: dict = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta else {})
                choice = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            return {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [choice], **(extra or {})}

        if self._guarded(req.model):
            # The answer must be screened whole before any of it leaves: generate, judge, then send.
            result = await self._call(req.model, payload)
            verdict = await self._guard(req.model, result)

            async def guarded():
                if chat:
                    yield _sse(chunk(None, None, role=True))
                yield _sse(chunk(result["text"], None))
                yield _sse(chunk(None, result["finish_reason"], extra={"libra_guard": verdict}))
                if include_usage:
                    yield _sse({"id": rid, "object": obj, "created": created, "model": req.model, "choices": [],
                                "usage": _usage(result)})
                yield _sse("[DONE]")

            return StreamingResponse(guarded(), media_type="text/event-stream")

        gen = self._handle(req.model).options(stream=True).stream.remote(payload)
        try:  # the first item tells a request error (-> 4xx) apart from a started stream
            first = await gen.__anext__()
        except StopAsyncIteration:
            first = {"text": "", "prompt_tokens": 0, "completion_tokens": 0, "finish_reason": "stop"}
        except Exception as err:
            raise APIError(503, f"model {req.model!r} is unavailable, retry later ({type(err).__name__})",
                           "server_error", "engine_unavailable") from None
        if "error" in first:
            raise _from_request_error(first)

        async def events():
            if chat:
                yield _sse(chunk(None, None, role=True))
            item = first
            try:
                while True:
                    if "delta" in item:
                        yield _sse(chunk(item["delta"], None))
                    else:
                        yield _sse(chunk(None, item["finish_reason"]))
                        if include_usage:
                            yield _sse({"id": rid, "object": obj, "created": created, "model": req.model,
                                        "choices": [], "usage": _usage(item)})
                        break
                    item = await gen.__anext__()
            except StopAsyncIteration:
                pass
            except Exception as err:  # the stream has started: report in-band, as OpenAI does
                yield _sse({"error": {"message": f"generation failed ({type(err).__name__})", "type": "server_error",
                                      "param": None, "code": "engine_failed"}})
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")


# --------------------------------------------------------------------------- builders

def deployment_name(served_name: str) -> str:
    """A Serve deployment name for a served model ("Qwen/Qwen2.5-7B" -> "model-Qwen_Qwen2.5-7B")."""
    return "model-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in served_name)


def build_app(models: list[ServedModelConfig], cfg: ServeConfig):
    """The Serve Application: an engine deployment per model (its own autoscaling) + the ingress.

    `models[*].path` must already be resolved (a folder or hub id). Auth keys are read here and
    only their digests are passed to the ingress.
    """
    if not models:
        raise ValueError("no model to serve")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"served model names must be unique: {names}")
    handles = {}
    for m in models:
        if m.engine == "vllm" and m.vllm_server == "ray_serve_llm":
            from libra_ray.serve.ray_llm import build_deployment

            handles[m.name] = build_deployment(m, deployment_name(m.name), access_log=cfg.access_log)
            continue
        handles[m.name] = ModelServer.options(
            name=deployment_name(m.name),
            autoscaling_config=m.autoscaling.to_serve(),
            max_ongoing_requests=m.max_ongoing_requests,
            ray_actor_options={"num_cpus": m.num_cpus, "num_gpus": m.num_gpus},
            health_check_period_s=5,
            logging_config={"enable_access_log": cfg.access_log},
        ).bind(m.model_dump())
    ingress = OpenAIIngress.options(
        name="ingress", num_replicas=cfg.ingress.replicas, ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
        logging_config={"enable_access_log": cfg.access_log},
    )
    identities = {m.name: served_identity(m) for m in models}
    for name, identity in identities.items():
        log.info("serving %s: %s", name, json.dumps(identity))
    return ingress.bind(handles, {m.name: m.max_tokens_limit for m in models}, cfg.model_dump(), load_key_hashes(cfg),
                        identities)


def served_models(pcfg) -> list[ServedModelConfig]:
    """The policy and the judge of a PipelineConfig, with their paths resolved."""
    from libra_ray.tiny import resolve_model

    out = []
    for m in (pcfg.serve.policy, pcfg.serve.judge):
        path = resolve_model(m.path, pcfg, key=f"serve.{'policy' if m is pcfg.serve.policy else 'judge'}.path")
        out.append(m.model_copy(update={"path": path}))
    return out
