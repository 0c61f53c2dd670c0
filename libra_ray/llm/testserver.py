"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks (the teacher stand-in).

    with TestOpenAIServer(responder=lambda messages, params: "yes", latency_s=0.2) as server:
        client = ChatClient(EndpointConfig(base_url=server.base_url))

It serves `POST /v1/chat/completions` and `GET /v1/models` with uvicorn in a background thread on a
free port, and injects the failures a real provider shows: fixed latency, 429 with `Retry-After`
(scripted, random, or from a server-side requests-per-minute limit, which it announces as a real
provider does in OpenAI-style `x-ratelimit-limit/remaining/reset-requests` headers on every answer), 500s, malformed 200 answers
(non-JSON body, empty content) and hangs (for client timeouts). Faults are either random rates
(seeded, reproducible) or a script consumed one per request (`inject("429", "500")`), so tests can
assert exact retry behaviour. Every request is counted and (optionally) logged.

A responder is `(messages, params) -> str | dict`; a dict may carry `content` and
`reasoning_content` (to test reasoning-leak handling). It runs on the server's event loop: keep it fast.
"""

from __future__ import annotations

import asyncio
import collections
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

Responder = Callable[[list[dict], dict], "str | dict"]

FAULTS = ("429", "500", "malformed", "empty", "hang")


def echo_responder(messages: list[dict], params: dict) -> str:
    """Default reply: names the last user message, so outputs differ per request."""
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    return f"Answer to: {last}"


def _count_tokens(text: str) -> int:
    return max(1, len(text.split())) if text else 0


class TestOpenAIServer:
    """OpenAI-compatible server with fault injection; a context manager (`start`/`stop` also work)."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, responder: Responder | None = None, *, latency_s: float = 0.0, rpm: int | None = None,
                 rate_limit_rate: float = 0.0, error_rate: float = 0.0, malformed_rate: float = 0.0,
                 retry_after_s: float = 0.05, hang_s: float = 30.0, seed: int = 0, api_key: str | None = None,
                 keep_log: bool = True, rate_limit_headers: bool = True):
        self.responder = responder or echo_responder
        self.latency_s = latency_s
        self.rpm = rpm
        self.rate_limit_rate = rate_limit_rate
        self.error_rate = error_rate
        self.malformed_rate = malformed_rate
        self.retry_after_s = retry_after_s
        self.hang_s = hang_s
        self.api_key = api_key
        self.keep_log = keep_log
        self.rate_limit_headers = rate_limit_headers  # emit x-ratelimit-* when `rpm` is set
        self._rng = random.Random(seed)
        self._script: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()  # outcome -> count
        self.log: list[dict] = []  # {"messages", "params", "outcome", "t", "t_in"} per chat request
        self.in_flight = 0
        self.max_in_flight = 0
        # Server-side limiter: a token bucket of `rpm` per minute with a one-second burst.
        self._bucket = float(self._burst()) if rpm else 0.0
        self._bucket_t = time.monotonic()
        self._server = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # ---- control ----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def request_count(self) -> int:
        """Chat-completion requests received (all outcomes)."""
        return sum(self.counts.values())

    def inject(self, *faults: str) -> None:
        """Script the outcome of the next requests, one fault per request, in order."""
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; choose from {FAULTS}")
        with self._lock:
            self._script.extend(faults)

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.log.clear()
            self.max_in_flight = 0

    def start(self) -> "TestOpenAIServer":
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app(), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1, backlog=2048, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"TestOpenAIServer:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("TestOpenAIServer failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> "TestOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- behaviour --------------------------------------------------------------------------
    def _burst(self) -> int:
        return max(1, int(self.rpm / 60)) if self.rpm else 0

    def _take_rate_token(self) -> float | None:
        """None when the request may pass the server-side rpm limit, else seconds until it could."""
        if not self.rpm:
            return None
        rate = self.rpm / 60.0
        now = time.monotonic()
        self._bucket = min(float(self._burst()), self._bucket + (now - self._bucket_t) * rate)
        self._bucket_t = now
        if self._bucket >= 1.0:
            self._bucket -= 1.0
            return None
        return (1.0 - self._bucket) / rate

    def _rate_headers(self) -> dict[str, str]:
        """OpenAI-style limit headers: the per-minute limit, what is left now, time until full."""
        if not self.rpm or not self.rate_limit_headers:
            return {}
        with self._lock:
            left = self._bucket
        reset = max(0.0, (self._burst() - left) / (self.rpm / 60.0))
        return {"x-ratelimit-limit-requests": str(self.rpm), "x-ratelimit-remaining-requests": str(max(0, int(left))),
                "x-ratelimit-reset-requests": f"{reset:.3f}s"}

    def _choose_outcome(self) -> tuple[str, float | None]:
        with self._lock:
            if self._script:
                return self._script.popleft(), None
            wait = self._take_rate_token()
            if wait is not None:
                return "429", wait
            roll = self._rng.random()
        if roll < self.rate_limit_rate:
            return "429", None
        roll -= self.rate_limit_rate
        if roll < self.error_rate:
            return "500", None
        roll -= self.error_rate
        if roll < self.malformed_rate:
            return "malformed", None
        return "ok", None

    def _app(self):
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def models(_: Request):
            return JSONResponse({"object": "list", "data": [{"id": "test", "object": "model", "owned_by": "libra_ray"}]})

        async def chat(request: Request):
            arrived = time.time()
            if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
                self._record(None, None, "401")
                return JSONResponse({"error": {"message": "invalid api key", "type": "auth"}}, status_code=401)
            try:
                body = await request.json()
                messages = body["messages"]
                if not isinstance(messages, list):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                self._record(None, None, "400")
                return JSONResponse({"error": {"message": "body needs a `messages` list"}}, status_code=400)
            params = {k: v for k, v in body.items() if k != "messages"}
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                outcome, wait = self._choose_outcome()
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                self._record(messages, params, outcome, arrived)
                if outcome == "429":
                    retry = self.retry_after_s if wait is None else wait
                    return JSONResponse({"error": {"message": "rate limit exceeded", "type": "rate_limit"}},
                                        status_code=429, headers={"Retry-After": f"{retry:.3f}",
                                                                  "retry-after-ms": str(int(retry * 1000)),
                                                                  **self._rate_headers()})
                if outcome == "500":
                    return JSONResponse({"error": {"message": "injected server error"}}, status_code=500)
                if outcome == "malformed":
                    return Response("{not json: the model server hiccuped", status_code=200, media_type="application/json")
                if outcome == "hang":
                    await asyncio.sleep(self.hang_s)
                try:
                    reply = self.responder(messages, params)
                except Exception as err:  # a responder bug is a 500, visible to the test
                    return JSONResponse({"error": {"message": f"responder failed: {err!r}"}}, status_code=500)
                content, reasoning = (reply.get("content"), reply.get("reasoning_content")) if isinstance(reply, dict) else (reply, None)
                if outcome == "empty":
                    content = ""
                return JSONResponse(self._completion(body.get("model", "test"), messages, content, reasoning),
                                    headers=self._rate_headers())
            finally:
                with self._lock:
                    self.in_flight -= 1

        async def stats(_: Request):
            """Counters and request times, for a server run in another process (benchmarks)."""
            with self._lock:
                return JSONResponse({"counts": dict(self.counts), "max_in_flight": self.max_in_flight,
                                     "times": [e["t"] for e in self.log],
                                     "ok_times": [e["t"] for e in self.log if e["outcome"] == "ok"]})

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                                 Route("/v1/models", models, methods=["GET"]),
                                 Route("/_stats", stats, methods=["GET"])])

    def _record(self, messages: Any, params: Any, outcome: str, arrived: float | None = None) -> None:
        """`t`: when the outcome was decided (after the latency); `t_in`: when the request arrived."""
        now = time.time()
        with self._lock:
            self.counts[outcome] += 1
            if self.keep_log:
                self.log.append({"messages": messages, "params": params, "outcome": outcome, "t": now,
                                 "t_in": arrived if arrived is not None else now})

    @staticmethod
    def _completion(model: str, messages: list[dict], content: str | None, reasoning: str | None) -> dict:
        message: dict = {"role": "assistant", "content": content}
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        prompt_tokens = sum(_count_tokens(str(m.get("content", ""))) for m in messages)
        completion_tokens = _count_tokens(content or "")
        return {
            "id": f"chatcmpl-{random.getrandbits(48):012x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


def chat_log_messages(server: TestOpenAIServer) -> list[list[dict]]:
    """The message lists of the logged chat requests (handy in assertions)."""
    return [entry["messages"] for entry in server.log if entry["messages"] is not None]


__all__ = ["TestOpenAIServer", "echo_responder", "FAULTS", "chat_log_messages"]


def serve_forever(port_file: str, **kwargs) -> None:
    """Run a server until killed, writing its base URL to `port_file` (a process of its own, so a
    benchmark's client does not share the server's GIL). `responder` may be given as "module:function"."""
    import importlib
    import os

    responder = kwargs.pop("responder", None)
    if isinstance(responder, str):
        module, _, name = responder.partition(":")
        responder = getattr(importlib.import_module(module), name)
    with TestOpenAIServer(responder=responder, **kwargs) as server:
        tmp = port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(server.base_url)
        os.replace(tmp, port_file)
        threading.Event().wait()
