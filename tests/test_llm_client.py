"""The shared OpenAI-compatible client against the real local test server (HTTP on 127.0.0.1)."""

from __future__ import annotations

import json
import time

import pytest

from libra_ray.llm.client import ChatClient, ResponseCache, cache_key, parse_retry_after
from libra_ray.llm.config import EndpointConfig
from libra_ray.llm.ratelimit import TokenBucket
from libra_ray.llm.testserver import TestOpenAIServer

MSG = [{"role": "user", "content": "hello"}]


def endpoint(**kw) -> EndpointConfig:
    defaults = dict(backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5, api_key_env=None)
    return EndpointConfig(**{**defaults, **kw})


@pytest.fixture
def server():
    with TestOpenAIServer() as srv:
        yield srv


def test_basic_chat_usage_and_reasoning():
    reply = {"content": "final", "reasoning_content": "thinking about it"}
    with TestOpenAIServer(responder=lambda m, p: reply) as srv:
        res = ChatClient(endpoint(), base_url=srv.base_url).chat(MSG, max_tokens=7)
    assert res.ok and res.text == "final" and res.reasoning == "thinking about it"
    assert res.prompt_tokens == 1 and res.completion_tokens == 1 and not res.cached
    assert srv.log[0]["params"]["max_tokens"] == 7 and srv.log[0]["params"]["model"] == "tiny"


def test_429_retry_after_is_honoured(server):
    server.retry_after_s = 0.4
    server.inject("429")
    client = ChatClient(endpoint(), base_url=server.base_url)
    start = time.monotonic()
    res = client.chat(MSG)
    assert res.ok and time.monotonic() - start >= 0.4
    assert client.stats.rate_limited == 1 and client.stats.retries == 1 and server.request_count == 2


def test_500_and_timeouts_retry_then_fail_without_raising(server):
    server.hang_s = 2
    server.inject("500", "hang")
    client = ChatClient(endpoint(timeout_s=0.3), base_url=server.base_url)
    assert client.chat(MSG).ok
    assert client.stats.server_errors == 1 and client.stats.timeouts == 1
    server.inject(*["500"] * 3)
    res = ChatClient(endpoint(max_retries=2), base_url=server.base_url).chat(MSG)
    assert not res.ok and res.text is None and "HTTP 500" in res.error


def test_malformed_and_validation_are_retried_then_reported(server):
    server.inject("malformed", "empty")
    client = ChatClient(endpoint(), base_url=server.base_url)
    res = client.chat(MSG)
    assert res.ok and client.stats.malformed == 2
    # The result carries every token billed for it, the malformed attempts' included.
    assert (res.prompt_tokens, res.completion_tokens) == (client.stats.prompt_tokens, client.stats.completion_tokens)
    bad = ChatClient(endpoint(max_malformed_retries=1), base_url=server.base_url)
    res = bad.chat(MSG, validate=lambda text: "contains 'Answer'" if "Answer" in text else None)
    assert res.error == "malformed output: contains 'Answer'" and bad.stats.requests == 2


def test_client_error_is_not_retried():
    with TestOpenAIServer(api_key="sk-right") as srv:
        res = ChatClient(endpoint(), base_url=srv.base_url).chat(MSG)
    assert res.error.startswith("HTTP 401") and srv.request_count == 1


def test_api_key_sent_but_never_stored(tmp_path, monkeypatch):
    monkeypatch.setenv("LIBRA_TEST_KEY", "sk-secret-123")
    with TestOpenAIServer(api_key="sk-secret-123") as srv:
        client = ChatClient(endpoint(api_key_env="LIBRA_TEST_KEY"), base_url=srv.base_url, cache_dir=str(tmp_path))
        res = client.chat(MSG)
    assert res.ok
    stored = "".join(p.read_text() for p in tmp_path.rglob("*.json"))
    assert stored and "sk-secret" not in stored and "sk-secret" not in json.dumps(res.raw)


def test_cache_makes_rerun_free(server, tmp_path):
    batch = [[{"role": "user", "content": f"q{i}"}] for i in range(20)]
    first = ChatClient(endpoint(), base_url=server.base_url, cache_dir=str(tmp_path))
    out1 = first.chat_many(batch)
    sent = server.request_count
    second = ChatClient(endpoint(), base_url=server.base_url, cache_dir=str(tmp_path))
    out2 = second.chat_many(batch)
    assert sent == 20 and server.request_count == 20  # zero new calls
    assert [r.text for r in out1] == [r.text for r in out2] and all(r.cached for r in out2)
    assert second.stats.cache_hits == 20 and second.stats.requests == 0
    # Different params are a different call.
    second.chat(batch[0], temperature=0.0)
    assert server.request_count == 21
    assert len(ResponseCache(str(tmp_path))) == 21


def test_chat_many_keeps_order_and_concurrency_limit():
    with TestOpenAIServer(latency_s=0.2) as srv:
        client = ChatClient(endpoint(max_concurrency=8), base_url=srv.base_url)
        out = client.chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(32)])
    assert [r.text for r in out] == [f"Answer to: q{i}" for i in range(32)]
    assert srv.max_in_flight == 8  # concurrent up to the limit, never beyond (throughput: benchmarks/)


def test_sync_chat_works_inside_a_running_event_loop(server):
    import asyncio

    async def main():
        return ChatClient(endpoint(), base_url=server.base_url).chat(MSG)

    assert asyncio.run(main()).ok


def test_helpers():
    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert cache_key("m", MSG, {"t": 1}) == cache_key("m", MSG, {"t": 1}) != cache_key("m", MSG, {"t": 2})
    with pytest.raises(ValueError, match="no base_url"):
        ChatClient(EndpointConfig())


def test_token_bucket_paces_requests_and_tokens():
    bucket = TokenBucket(requests_per_minute=600, tokens_per_minute=None)  # 10/s, burst 10
    delays = [bucket.reserve(1, 0) for _ in range(30)]
    assert delays[9] == 0 and 0.9 < delays[19] < 1.1 and 1.9 < delays[29] < 2.1
    tokens = TokenBucket(requests_per_minute=None, tokens_per_minute=6000)  # 100 tok/s
    assert tokens.reserve(1, 100) == 0 and 0.9 < tokens.reserve(1, 100) < 1.1


def test_malformed_answers_are_cached_as_failures(tmp_path):
    with TestOpenAIServer(responder=lambda m, p: "not a list") as srv:
        check = lambda text: None if text.startswith("[") else "not a JSON list"  # noqa: E731
        first = ChatClient(endpoint(max_malformed_retries=1), base_url=srv.base_url, cache_dir=str(tmp_path))
        res = first.chat(MSG, validate=check)
        assert res.error == "malformed output: not a JSON list" and srv.request_count == 2
        # Paid for, though unusable: both attempts' tokens are reported (datasets count their cost) ...
        assert res.prompt_tokens == first.stats.prompt_tokens > 0 and res.completion_tokens == first.stats.completion_tokens > 0
        again = ChatClient(endpoint(max_malformed_retries=1), base_url=srv.base_url, cache_dir=str(tmp_path))
        res = again.chat(MSG, validate=check)
        assert res.cached and res.error == "malformed output: not a JSON list" and srv.request_count == 2
        assert res.prompt_tokens == first.stats.prompt_tokens  # ... and again from the cache, not paid again
        # A looser validator accepts the stored answer without a new call.
        assert again.chat(MSG, validate=lambda text: None).text == "not a list" and srv.request_count == 2
