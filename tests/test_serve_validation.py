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
    parts = _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}])
    assert client.post("/v1/chat/completions", json=parts).status_code == 200
    assert client.handle.calls[-1]["messages"][0]["content"] == "a"


@pytest.mark.parametrize("text", [5, None, [1], {"a": 1}])
def test_content_part_with_a_non_string_text(client, text):
    body = _chat(messages=[{"role": "user", "content": [{"type": "text", "text": text}]}])
    _assert_400(client.post("/v1/chat/completions", json=body))


def test_deeply_nested_json(client):
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
