"""The one OpenAI-compatible chat client (teacher, judge, hosted baselines).

- Concurrent: up to `endpoint.max_concurrency` requests of one client in flight (across all its
  concurrent `chat_many`/`achat_many` calls), on aiohttp. One session and connection pool per process,
  owned by a background event-loop thread and reused by every call and every client (`chat_many` from
  sync code and `achat_many` from any event loop, e.g. an async Ray Data actor's, both submit to it:
  an aiohttp session is bound to one loop).
- Robust: honours `Retry-After` on 429, retries timeouts, connection errors, 408 and 5xx with jittered
  exponential backoff; a request that still fails becomes a `ChatResult` with `error` set, never an
  exception, so one bad row never kills a batch job.
- Validated: an optional `validate(text) -> reason | None` callable marks malformed output, which is
  retried up to `endpoint.max_malformed_retries` times and then returned as an error.
- Never paid twice: successful answers are cached by content (sha256 of model + messages + params),
  so a killed run resumes where it stopped and a re-run makes zero new calls.
- Budgeted: an optional limiter (`libra_ray.llm.ratelimit`) spaces requests to a requests/tokens per
  minute budget, cluster-wide when it is the Ray-actor one, and hears every 429 and `x-ratelimit-*`
  header so it can learn the provider's real limit.

The API key named by `endpoint.api_key_env` is looked up at call time (`libra_ray.credentials`); it is only
ever put in the Authorization header, never in results, caches, logs or errors.
"""

from __future__ import annotations

import asyncio
import atexit
import email.utils
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from libra_ray.credentials import get_credential
from libra_ray.llm.ratelimit import parse_rate_limit_headers

if TYPE_CHECKING:
    import aiohttp

    from libra_ray.llm.config import EndpointConfig

Validator = Callable[[str], "str | None"]

# Statuses worth retrying; any other 4xx is the caller's mistake and fails at once.
_RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class ChatResult:
    text: str | None  # final answer content (None on error)
    reasoning: str | None  # `reasoning_content` if the server returned one
    prompt_tokens: int  # billed over all attempts of this call, malformed answers included
    completion_tokens: int
    cached: bool  # served from the content-addressed cache
    error: str | None  # None on success; a short message otherwise
    raw: dict | None  # raw response JSON (no secrets)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ClientStats:
    """Counters of what the client did (summed across calls; thread-safe through `add`)."""

    calls: int = 0  # chat results returned
    requests: int = 0  # HTTP requests sent
    retries: int = 0
    rate_limited: int = 0  # 429 answers
    server_errors: int = 0  # 5xx / 408 / 409 answers
    timeouts: int = 0  # timeouts and connection errors
    malformed: int = 0  # 200 answers rejected (bad JSON, empty, failed validation)
    errors: int = 0  # results returned with `error` set
    cache_hits: int = 0
    prompt_tokens: int = 0  # tokens billed by the server (malformed answers included, cache hits not)
    completion_tokens: int = 0
    busy_s: float = 0.0  # wall seconds with at least one call of this client in progress
    judged_rows: int = 0  # texts judged by `libra_ray.llm.judge.judge_texts` (labelled or not)
    judge_s: float = 0.0  # wall seconds judge_texts spent on them
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for key, value in deltas.items():
                setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, float]:
        """The counters, plus `requests_per_s` (requests / busy_s) and `judged_rows_per_s`."""
        with self._lock:
            out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        out["busy_s"] = round(out["busy_s"], 3)
        out["judge_s"] = round(out["judge_s"], 3)
        out["requests_per_s"] = round(out["requests"] / out["busy_s"], 2) if out["busy_s"] else None
        out["judged_rows_per_s"] = round(out["judged_rows"] / out["judge_s"], 2) if out["judge_s"] else None
        return out


class Limiter(Protocol):
    """A budget (`libra_ray.llm.ratelimit`). `acquire` waits until a request may go (on the client's
    event loop, never blocking it); `reserve` is the older form (returns the seconds to wait) and is
    used when `acquire` is absent; `observe` (optional) hears each answer's 429 / rate-limit headers."""

    def reserve(self, requests: int, tokens: int) -> float: ...

    def settle(self, tokens: int) -> None: ...


def cache_key(model: str, messages: list[dict], params: dict) -> str:
    """Content address of a call: the same model, messages and sampling params give the same key."""
    material = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(material.encode()).hexdigest()


class ResponseCache:
    """Content-addressed JSON files under `root` (local path or pyarrow URI such as s3://b/p), written
    atomically (temp file + rename) so a killed run never leaves a half-written entry."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self._fs = None
        if "://" in root and not root.startswith("file://"):
            import pyarrow.fs as pafs

            self._fs, self._base = pafs.FileSystem.from_uri(root)
            self._fs.create_dir(self._base, recursive=True)
        else:
            self._base = root.removeprefix("file://")
            os.makedirs(self._base, exist_ok=True)

    def _path(self, key: str) -> str:
        return f"{self._base}/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        try:
            if self._fs is None:
                with open(path, encoding="utf-8") as f:
                    return json.load(f)
            with self._fs.open_input_stream(path) as f:
                return json.loads(f.read().decode())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        except OSError:
            return None

    def put(self, key: str, entry: dict) -> None:
        path = self._path(key)
        data = json.dumps(entry, ensure_ascii=False).encode()
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}-{random.getrandbits(32):08x}"
        if self._fs is None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with self._fs.open_output_stream(tmp) as f:
                f.write(data)
            self._fs.move(tmp, path)

    def __len__(self) -> int:
        if self._fs is None:
            return sum(len([n for n in files if n.endswith(".json")]) for _, _, files in os.walk(self._base))
        import pyarrow.fs as pafs

        infos = self._fs.get_file_info(pafs.FileSelector(self._base, recursive=True))
        return sum(1 for i in infos if i.path.endswith(".json"))


def estimate_tokens(messages: list[dict], max_tokens: int) -> int:
    """A cheap upper-ish estimate for budgeting before the server reports usage (~4 chars a token)."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return chars // 4 + 4 * len(messages) + max_tokens


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds or as an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _Response:
    """What the client keeps of an HTTP answer (the body is read inside the request's context)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Any, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class _IOLoop:
    """The process's one background event loop (a daemon thread) and its one aiohttp session.

    Every ChatClient of the process sends on this session, so connections are pooled and reused
    across calls, batches and clients. Re-created after a fork (a loop never crosses processes)."""

    _instance: "_IOLoop | None" = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="libra_ray-http", daemon=True)
        self.thread.start()
        self._session: "aiohttp.ClientSession | None" = None

    @classmethod
    def get(cls) -> "_IOLoop":
        inst = cls._instance
        if inst is not None and inst.pid == os.getpid():
            return inst
        with cls._guard:
            if cls._instance is None or cls._instance.pid != os.getpid():
                cls._instance = cls()
                atexit.register(cls._instance.close)
            return cls._instance

    def session(self) -> "aiohttp.ClientSession":
        """The session (created on first use; only call on this loop)."""
        if self._session is None or self._session.closed:
            import aiohttp

            # No pool cap here: each client's semaphore caps its own in-flight requests.
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, json_serialize=json.dumps)
        return self._session

    def run(self, coro) -> Any:
        """Run `coro` on this loop from another thread and wait for its result."""
        if threading.get_ident() == self.thread.ident:
            coro.close()
            raise RuntimeError("ChatClient.chat_many called on the client's own I/O loop: await achat_many instead")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def arun(self, coro) -> Any:
        """Await `coro` on this loop from any event loop (the caller's loop stays free meanwhile)."""
        if asyncio.get_running_loop() is self.loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        if os.getpid() != self.pid or not self.loop.is_running():
            return
        if self._session is not None and not self._session.closed:
            try:
                asyncio.run_coroutine_threadsafe(self._session.close(), self.loop).result(timeout=2)
            except Exception:  # noqa: BLE001 - best effort at interpreter exit
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)


class ChatClient:
    """OpenAI-compatible `/chat/completions` client with retries, cache, budget and per-request errors."""

    def __init__(self, endpoint: "EndpointConfig", base_url: str | None = None, cache_dir: str | None = None,
                 limiter: Limiter | None = None):
        url = base_url or endpoint.base_url
        if not url:
            raise ValueError("the endpoint has no base_url: open it with libra_ray.endpoints.open_endpoint "
                             "(which starts the embedded local server) or set base_url")
        self.endpoint = endpoint
        self.base_url = url.rstrip("/")
        self.cache = ResponseCache(cache_dir) if cache_dir else None
        self.limiter = limiter
        self.stats = ClientStats()
        self._sem: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._active = 0  # calls in progress (on the I/O loop only)
        self._busy_since = 0.0
        self._timeout = None  # aiohttp.ClientTimeout, made on first use (aiohttp imports lazily)

    # ---- public API -------------------------------------------------------------------------
    def chat(self, messages: list[dict], *, validate: Validator | None = None, **params) -> ChatResult:
        """One chat completion (blocking). Per-request failures come back as `error`, never raised."""
        return self.chat_many([messages], validate=validate, **params)[0]

    def chat_many(self, batch: list[list[dict]], *, validate: Validator | list[Validator | None] | None = None,
                  **params) -> list[ChatResult]:
        """Many chat completions, up to `endpoint.max_concurrency` in flight; results in input order.
        `validate` is one validator for all requests or a list aligned with `batch`. Blocking; safe to
        call from several threads at once, and from a thread that runs an event loop."""
        if not batch:
            return []
        return _IOLoop.get().run(self._many(batch, validate, params))

    async def achat_many(self, batch: list[list[dict]], *, validate: Validator | list[Validator | None] | None = None,
                         tally: ClientStats | None = None, **params) -> list[ChatResult]:
        """`chat_many` for async callers (any event loop): the requests run on the process's I/O loop,
        the caller's loop stays free; concurrent calls share this client's in-flight limit. `tally`, if
        given, also receives this call's counters (`stats` sums all calls, concurrent ones included)."""
        if not batch:
            return []
        return await _IOLoop.get().arun(self._many(batch, validate, params, tally))

    async def _many(self, batch: list[list[dict]], validate: Validator | list[Validator | None] | None,
                    params: dict, tally: ClientStats | None = None) -> list[ChatResult]:
        checks = validate if isinstance(validate, list) else [validate] * len(batch)
        if len(checks) != len(batch):
            raise ValueError(f"{len(checks)} validators for {len(batch)} requests")
        sem = self._semaphore()
        session = _IOLoop.get().session()

        async def one(messages: list[dict], check: Validator | None) -> ChatResult:
            async with sem:
                return await self._achat(session, messages, check, params, tally)

        self._busy(+1)
        try:
            return list(await asyncio.gather(*(one(m, c) for m, c in zip(batch, checks))))
        finally:
            self._busy(-1)

    def _semaphore(self) -> asyncio.Semaphore:
        """This client's in-flight limit on the I/O loop (a new one after a fork: new loop)."""
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem[0] is not loop:
            self._sem = (loop, asyncio.Semaphore(self.endpoint.max_concurrency))
        return self._sem[1]

    def _busy(self, delta: int) -> None:
        """Count wall time with calls in progress (`stats.busy_s`: throughput = requests / busy_s)."""
        now = time.monotonic()
        if self._active:
            self.stats.add(busy_s=now - self._busy_since)
        self._busy_since = now
        self._active += delta

    # ---- internals --------------------------------------------------------------------------
    def _body(self, messages: list[dict], params: dict) -> tuple[str, dict]:
        params = dict(params)
        model = params.pop("model", None) or self.endpoint.model
        params.setdefault("temperature", self.endpoint.temperature)
        params.setdefault("max_tokens", self.endpoint.max_tokens)
        return model, params

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = get_credential(self.endpoint.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff: uniform(0, min(max, base * 2**attempt))."""
        cap = min(self.endpoint.backoff_max_s, self.endpoint.backoff_base_s * (2 ** attempt))
        return random.uniform(0.5 * cap, cap)

    async def _wait_budget(self, messages: list[dict], max_tokens: int) -> int:
        if self.limiter is None:
            return 0
        estimate = estimate_tokens(messages, max_tokens)
        acquire = getattr(self.limiter, "acquire", None)
        if acquire is not None:
            await acquire(1, estimate)
        else:
            delay = self.limiter.reserve(1, estimate)
            if delay > 0:
                await asyncio.sleep(delay)
        return estimate

    async def _post(self, session: "aiohttp.ClientSession", url: str, body: dict) -> _Response:
        import aiohttp

        if self._timeout is None:
            self._timeout = aiohttp.ClientTimeout(total=self.endpoint.timeout_s)
        async with session.post(url, data=json.dumps(body).encode(), headers=self._headers(),
                                timeout=self._timeout) as resp:
            return _Response(resp.status, resp.headers, await resp.read())

    def _observe(self, resp: _Response) -> None:
        """Tell the budget what the provider said about its limit (429s and x-ratelimit-* headers)."""
        observe = getattr(self.limiter, "observe", None)
        if observe is not None:
            observe(resp.status == 429, parse_rate_limit_headers(resp.headers))

    def _count(self, tally: ClientStats | None, **deltas: int) -> None:
        self.stats.add(**deltas)
        if tally is not None:
            tally.add(**deltas)

    async def _achat(self, session: "aiohttp.ClientSession", messages: list[dict], validate: Validator | None,
                     params: dict, tally: ClientStats | None = None) -> ChatResult:
        import aiohttp

        model, params = self._body(messages, params)
        key = cache_key(model, messages, params)
        if self.cache is not None:
            entry = self.cache.get(key)
            if entry is not None:
                text = entry.get("text") or ""
                passes = bool(text) and (validate is None or validate(text) is None)
                if entry.get("invalid") and not passes:
                    # A paid answer that stayed malformed after retries: reported again, not paid again.
                    self._count(tally, calls=1, cache_hits=1, errors=1)
                    return ChatResult(text=None, reasoning=None, prompt_tokens=entry.get("prompt_tokens", 0),
                                      completion_tokens=entry.get("completion_tokens", 0), cached=True,
                                      error=f"malformed output: {entry['invalid']}", raw=None)
                if passes:
                    self._count(tally, calls=1, cache_hits=1)
                    return ChatResult(text=text, reasoning=entry.get("reasoning"),
                                      prompt_tokens=entry.get("prompt_tokens", 0),
                                      completion_tokens=entry.get("completion_tokens", 0),
                                      cached=True, error=None, raw=entry.get("raw"))

        body = {"model": model, "messages": messages, **params}
        url = f"{self.base_url}/chat/completions"
        failures = 0  # transport/HTTP failures so far
        malformed = 0
        spent = [0, 0]  # tokens billed over all attempts (malformed answers are paid for too)
        error = "no attempt made"
        while True:
            estimate = await self._wait_budget(messages, params.get("max_tokens", self.endpoint.max_tokens))
            wait: float | None = None
            self._count(tally, requests=1)
            try:
                resp = await self._post(session, url, body)
            except asyncio.TimeoutError:  # aiohttp's timeouts are asyncio.TimeoutError subclasses
                error, retryable = f"timeout after {self.endpoint.timeout_s:g} s", True
                self._count(tally, timeouts=1)
            except aiohttp.ClientError as err:
                error, retryable = f"connection error: {type(err).__name__}", True
                self._count(tally, timeouts=1)
            else:
                if self.limiter is not None:
                    self._observe(resp)
                if resp.status == 200:
                    result, problem, text, usage = self._parse(resp, validate, tally)
                    spent = [spent[0] + usage[0], spent[1] + usage[1]]
                    self._settle(estimate, sum(usage))
                    if result is not None:
                        result.prompt_tokens, result.completion_tokens = spent
                        self._count(tally, calls=1)
                        if self.cache is not None:
                            self.cache.put(key, {"text": result.text, "reasoning": result.reasoning,
                                                 "prompt_tokens": result.prompt_tokens,
                                                 "completion_tokens": result.completion_tokens, "raw": result.raw})
                        return result
                    self._count(tally, malformed=1)
                    malformed += 1
                    error = f"malformed output: {problem}"
                    if malformed > self.endpoint.max_malformed_retries:
                        if self.cache is not None:  # remember the paid, unusable answer: a re-run won't re-ask
                            self.cache.put(key, {"text": text or "", "invalid": problem, "raw": None,
                                                 "prompt_tokens": spent[0], "completion_tokens": spent[1]})
                        return self._fail(error, spent, tally)
                    self._count(tally, retries=1)
                    continue
                error = f"HTTP {resp.status}: {_short(resp.text)}"
                retryable = resp.status in _RETRY_STATUSES
                if resp.status == 429:
                    self._count(tally, rate_limited=1)
                    wait = parse_retry_after(resp.headers.get("retry-after"))
                elif retryable:
                    self._count(tally, server_errors=1)
            if not retryable or failures >= self.endpoint.max_retries:
                return self._fail(error, spent, tally)
            # The server's Retry-After wins over our backoff (capped at 10 min against a broken header).
            delay = self._backoff(failures) if wait is None else min(wait, 600.0) + random.uniform(0, 0.05)
            failures += 1
            self._count(tally, retries=1)
            await asyncio.sleep(delay)

    def _parse(self, resp: _Response, validate: Validator | None, tally: ClientStats | None = None
               ) -> tuple[ChatResult | None, str, str | None, tuple[int, int]]:
        """(result, "", text, usage) for a usable answer, else (None, problem, text-if-any, usage);
        usage = (prompt, completion) tokens the server billed for this answer."""
        try:
            data = resp.json()
            message = data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None, "response is not a chat completion JSON", None, (0, 0)
        text = message.get("content")
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        raw_usage = data.get("usage") or {}
        usage = (int(raw_usage.get("prompt_tokens") or 0), int(raw_usage.get("completion_tokens") or 0))
        self._count(tally, prompt_tokens=usage[0], completion_tokens=usage[1])
        if not isinstance(text, str) or not text.strip():
            return None, "empty content", None, usage
        if validate is not None:
            problem = validate(text)
            if problem:
                return None, problem, text, usage
        return ChatResult(text=text, reasoning=reasoning, prompt_tokens=usage[0], completion_tokens=usage[1],
                          cached=False, error=None, raw=data), "", text, usage

    def _settle(self, estimate: int, actual: int) -> None:
        """Correct the budget's token estimate with what the server billed (malformed answers too)."""
        if self.limiter is not None and estimate and actual:
            self.limiter.settle(actual - estimate)

    def _fail(self, error: str, spent: list[int], tally: ClientStats | None = None) -> ChatResult:
        self._count(tally, calls=1, errors=1)
        return ChatResult(text=None, reasoning=None, prompt_tokens=spent[0], completion_tokens=spent[1], cached=False,
                          error=error, raw=None)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
