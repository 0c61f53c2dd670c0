"""Malformed requests get OpenAI-format 400s (never a 5xx), through the ingress's real FastAPI routes and
error handlers with Starlette's TestClient: no Ray, no model (a fake engine handle answers valid requests)."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from libra_ray.serve.app import OpenAIIngress, api
from libra_ray.serve.config import ServeConfig


class _Handle:
    """A stand-in engine handle: records payloads, answers "ok"."""

    def __init__(self):
        self.calls = []
        handle = self

        class _Generate:
            def remote(self, payload):
                handle.calls.append(payload)

                async def answer():
                    return {"text": "ok", "prompt_tokens": 1, "completion_tokens": 1, "finish_reason": "stop"}

                return answer()

        self.generate = _Generate()
        self.bound: dict | None = {"name": "policy", "engine": "fake", "max_model_len": 100, "max_prompt_chars": 1000}

        class _Info:
            def remote(self):
                async def answer():
                    if handle.bound is None:
                        raise RuntimeError("replica not started")
                    return handle.bound

                return answer()

        self.info = _Info()


@pytest.fixture
def client():
    class Bare(OpenAIIngress.func_or_class):  # the route logic, no Serve replica
        def __del__(self):
            pass

    ingress = Bare.__new__(Bare)
    ingress.models = {"policy": _Handle()}
    ingress.limits = {"policy": 64}
    ingress.cfg = ServeConfig(guard="off")
    ingress.key_hashes = []
    ingress.created = 0
    ingress.bounds = {}
    ingress.learning = None
    ingress.answered = set()
    app = FastAPI()
    for exc, handler in api.exception_handlers.items():  # the ingress's own error handlers
        app.add_exception_handler(exc, handler)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await ingress.chat(request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await ingress.completions(request)

    with TestClient(app, raise_server_exceptions=False) as c:
        c.handle = ingress.models["policy"]
        c.ingress = ingress
        yield c


def _chat(**extra) -> dict:
    return {"model": "policy", "messages": [{"role": "user", "content": "hi"}], **extra}


def _assert_400(resp, param=None):
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["message"] and err["code"]
    if param is not None:
        assert err["param"] == param, err
    return err


def test_a_valid_request_is_answered(client):
    resp = client.post("/v1/chat/completions", json=_chat(max_tokens=5, temperature=0.5, seed=3))
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "ok"
    parts = _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert client.post("/v1/chat/completions", json=parts).status_code == 200
    assert client.handle.calls[-1]["messages"][0]["content"] == "ab"
    # Unsupported fields at their neutral value (what sending nothing means) are accepted.
    neutral = _chat(n=1, logprobs=False, tools=[], tool_choice="none", response_format={"type": "text"},
                    presence_penalty=0, frequency_penalty=0.0, user="u-1", stream=False, stop=["a", "b", "c", "d"])
    assert client.post("/v1/chat/completions", json=neutral).status_code == 200, client.post(
        "/v1/chat/completions", json=neutral).text


@pytest.mark.parametrize("text", [5, None, [1], {"a": 1}])
def test_content_part_with_a_non_string_text(client, text):
    body = _chat(messages=[{"role": "user", "content": [{"type": "text", "text": text}]}])
    _assert_400(client.post("/v1/chat/completions", json=body))


def test_deeply_nested_json(client):
    client.handle.bound = None  # no body limit from the model's bound: these bodies must be read and parsed
    _assert_400(client.post("/v1/chat/completions", content=b"[" * 400_000,
                            headers={"content-type": "application/json"}))
    deep = '{"model": "policy", "messages": [{"role": "user", "content": "hi"}], "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    _assert_400(client.post("/v1/chat/completions", content=deep, headers={"content-type": "application/json"}))


@pytest.mark.parametrize("where", ["content", "model", "stop"])
def test_lone_surrogate(client, where):
    body = json.dumps(_chat()).replace('"hi"', '"a\\ud800b"') if where == "content" else (
        json.dumps(_chat())[:-1] + (', "stop": "\\udfff"}' if where == "stop" else ', "user": "\\ud800"}'))
    if where == "model":
        body = json.dumps(_chat()).replace('"policy"', '"po\\ud800"')
    _assert_400(client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"}))


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed"])
@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_not_numbers(client, field, value):
    _assert_400(client.post("/v1/chat/completions", json=_chat(**{field: value})), param=field)
    assert client.handle.calls == []


@pytest.mark.parametrize("seed", [10**30, -(10**30), 2**63])
def test_seed_out_of_range(client, seed):
    _assert_400(client.post("/v1/chat/completions", json=_chat(seed=seed)), param="seed")


@pytest.mark.parametrize("raw", [b'{"model": "policy", "prompt": "\xff\xfe"}', "{}".encode("utf-16"),
                                 b"\x80\x81\x82"])
def test_non_utf8_body(client, raw):
    err = _assert_400(client.post("/v1/completions", content=raw, headers={"content-type": "application/json"}))
    assert err["code"] == "invalid_json"


@pytest.mark.parametrize("extra", [{"temperature": "NaN"}, {"top_p": "Infinity"}])
def test_non_finite_numbers(client, extra):
    key, word = next(iter(extra.items()))
    raw = json.dumps(_chat())[:-1] + f', "{key}": {word}' + "}"
    _assert_400(client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"}), key)


@pytest.mark.parametrize("field,value", [
    ("max_tokens", "8"), ("max_tokens", 8.0), ("max_tokens", True), ("temperature", "0.5"), ("top_p", "1"),
    ("stream", "yes"), ("stream", 1), ("seed", "3"), ("n", "1"), ("model", 5), ("stop", 5), ("stop", ["a", 1]),
    ("stream_options", {"include_usage": "yes"}),
])
def test_strict_types_as_openai(client, field, value):
    """What OpenAI's API refuses (a string for a number, 1 for a boolean) is a 400 naming the field."""
    err = _assert_400(client.post("/v1/chat/completions", json=_chat(**{field: value})))
    assert err["param"].split(".")[0] == field, err
    assert client.handle.calls == []


def test_at_most_four_stop_strings(client):
    """One rule on every path (the ingress checks before any engine): OpenAI's limit of 4 stop sequences."""
    assert client.post("/v1/chat/completions", json=_chat(stop=list("abcd"))).status_code == 200
    _assert_400(client.post("/v1/chat/completions", json=_chat(stop=list("abcde"))), param="stop")
    _assert_400(client.post("/v1/completions", json={"model": "policy", "prompt": "x", "stop": list("abcde")}),
                param="stop")
    assert len(client.handle.calls) == 1


@pytest.mark.parametrize("field,value", [
    ("n", 2), ("logprobs", True), ("top_logprobs", 2), ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "auto"), ("response_format", {"type": "json_object"}), ("presence_penalty", 0.5),
    ("frequency_penalty", 1), ("logit_bias", {"5": 10}), ("modalities", ["text", "audio"]), ("store", True),
    ("brand_new_field", 1),
])
def test_unsupported_fields_are_refused_by_name_never_ignored(client, field, value):
    err = _assert_400(client.post("/v1/chat/completions", json=_chat(**{field: value})), param=field)
    assert field in err["message"]
    assert client.handle.calls == []


def test_completions_logprobs_and_echo_are_refused(client):
    for extra in ({"logprobs": 0}, {"logprobs": 5}, {"echo": True}, {"best_of": 2}, {"suffix": "x"}):
        key = next(iter(extra))
        _assert_400(client.post("/v1/completions", json={"model": "policy", "prompt": "x", **extra}), param=key)
    assert client.handle.calls == []


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    {"type": "file", "file": {"file_id": "f"}},
])
def test_image_and_audio_parts_are_refused(client, part):
    body = _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}])
    err = _assert_400(client.post("/v1/chat/completions", json=body), param="messages.0.content.1.type")
    assert part["type"] in err["message"] and "not supported" in err["message"]
    assert client.handle.calls == []


@pytest.mark.parametrize("messages,param", [
    ([{"role": "user", "content": None}], "messages.0.content"),
    ([{"role": "user"}], "messages.0.content"),
    ([{"role": "system", "content": "be nice"}], None),
    ([{"role": "system", "content": "a"}, {"role": "assistant", "content": "b"}], None),
    ([{"role": "tool", "content": "x", "tool_call_id": "1"}], "messages.0.tool_call_id"),
    ([{"role": "tool", "content": "x"}], "messages.0.role"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}],
     "messages.1.tool_calls"),
])
def test_null_content_and_conversations_without_a_user_message(client, messages, param):
    err = _assert_400(client.post("/v1/chat/completions", json=_chat(messages=messages)), param=param)
    if param is None:
        assert "user" in err["message"]
    assert client.handle.calls == []


def test_stream_options_need_stream(client):
    _assert_400(client.post("/v1/chat/completions", json=_chat(stream_options={"include_usage": True})))


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", _chat(messages=[{"role": "system", "content": "s" * 600},
                                             {"role": "user", "content": "u" * 401}])),
    ("/v1/completions", {"model": "policy", "prompt": ["p" * 1001]}),
])
def test_a_prompt_over_the_replicas_bound_is_refused_before_it_is_sent(client, path, body):
    """The ingress asks a replica for its character bound once and refuses a longer prompt itself: a 1 MB prompt
    is not shipped to a replica just to be refused there (issue #25's head-of-line finding)."""
    err = _assert_400(client.post(path, json=body), "messages")
    assert err["code"] == "context_length_exceeded" and "1001 characters" in err["message"]
    assert client.handle.calls == []  # never reached the engine
    at_bound = _chat(messages=[{"role": "user", "content": "u" * 1000}])
    assert client.post("/v1/chat/completions", json=at_bound).status_code == 200


def test_without_the_bound_the_replica_decides(client):
    """A replica that cannot tell its bound yet (still starting): the request goes on, the replica checks."""
    client.handle.bound = None
    assert client.post("/v1/chat/completions", json=_chat(messages=[{"role": "user", "content": "u" * 5000}])
                       ).status_code == 200
    assert len(client.handle.calls) == 1


def test_a_large_body_is_parsed_off_the_event_loop(client, monkeypatch):
    """Parsing and validating a 1 MB body must not stop the ingress's event loop (issue #25's head-of-line
    finding): a body over PARSE_INLINE_BYTES is parsed in a worker thread, and its errors are still 4xx."""
    import asyncio

    # The route's own globals: Serve's ingress decorator may hold a copy of the module's namespace.
    names = OpenAIIngress.func_or_class._request.__globals__
    on_loop: list[bool] = []
    parse = names["_parse_as"]

    def recording(cls, raw):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:  # no loop runs in a worker thread
            on_loop.append(False)
        return parse(cls, raw)

    monkeypatch.setitem(names, "_parse_as", recording)
    pad = "x" * names["PARSE_INLINE_BYTES"]  # `user` is accepted and ignored: a valid body this large
    assert client.post("/v1/chat/completions", json=_chat()).status_code == 200
    assert client.post("/v1/chat/completions", json=_chat(user=pad)).status_code == 200
    _assert_400(client.post("/v1/chat/completions", content=b'{"model": "policy", "x": "' + pad.encode()))
    err = _assert_400(client.post("/v1/chat/completions", json=_chat(messages=[{"role": "user", "content": pad}])))
    assert err["code"] == "context_length_exceeded"
    assert on_loop == [True, False, False, False]


def test_a_body_too_large_for_any_prompt_is_refused_unread(client):
    """Once every model's bound is known, a body larger than any request whose prompt fits (`body_bound`) is a
    413 from its declared size, before a byte of it is read: receiving 8 such bodies slowed the requests beside
    them ~2x on 2 cores; refused unread, 0.88-1.03x (benchmarks/serve_probe.py, serve/README.md)."""
    import libra_ray.serve.app as app_module

    limit = app_module.body_bound(1000, 100)
    fits = _chat(user="x" * (limit - 200))  # `user` is ignored: a valid body just under the limit
    assert client.post("/v1/chat/completions", json=fits).status_code == 200  # bound unknown yet: read, answered
    assert client.post("/v1/chat/completions", json=fits).status_code == 200  # known now: still under the limit

    class Unread:  # a body whose bytes must never be pulled
        def __iter__(self):
            raise AssertionError("the body was read")

    resp = client.post("/v1/chat/completions", content=Unread(),
                       headers={"content-type": "application/json", "content-length": str(limit + 1)})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large", resp.text
    assert "larger than any request whose prompt fits" in resp.json()["error"]["message"]
    assert len(client.handle.calls) == 2


def test_without_every_bound_no_body_limit_but_the_configured_one(client):
    client.handle.bound = None  # the replica cannot tell its bound yet
    big = _chat(user="x" * 200_000)
    assert client.post("/v1/chat/completions", json=big).status_code == 200
    assert client.post("/v1/chat/completions", json=big).status_code == 200


def test_a_scale_to_zero_model_is_not_woken_for_its_bound(client):
    """A model that may have no replica is not asked for its bound (the call would start one): until it answers
    a request, only `max_request_bytes` limits the body."""
    judge = _Handle()
    asked = []
    judge.info.remote = lambda: asked.append(1)  # must never be called
    client.ingress.models["judge"] = judge
    client.ingress.limits["judge"] = 64
    client.ingress.cfg = ServeConfig(guard="off", judge={"path": "tiny", "autoscaling": {"min_replicas": 0}})
    big = _chat(user="x" * 200_000)
    for _ in range(3):
        assert client.post("/v1/chat/completions", json=big).status_code == 200
    assert asked == [] and set(client.ingress.bounds) == {"policy"}
    # Once it has answered a call (here the guard's, as in serve/libra_ray.yaml), it is asked; the limit applies.
    judge.info.remote = _Handle().info.remote
    client.ingress.cfg = client.ingress.cfg.model_copy(update={"guard": "flag"})
    assert client.post("/v1/chat/completions", json=_chat()).json()["libra_guard"]
    assert client.post("/v1/chat/completions", json=big).status_code == 413
