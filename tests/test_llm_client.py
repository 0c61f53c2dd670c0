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
    # Equal content built separately (and params in another order) gives the same key; any change differs.
    assert cache_key("m", [dict(m) for m in MSG], {"t": 1}) == cache_key("m", MSG, {"t": 1})
    assert cache_key("m", MSG, {"a": 1, "t": 1}) == cache_key("m", MSG, {"t": 1, "a": 1})
    assert len({cache_key("m", MSG, {"t": 1}), cache_key("m", MSG, {"t": 2}), cache_key("m2", MSG, {"t": 1}),
                cache_key("m", [{"role": "user", "content": "hello!"}], {"t": 1})}) == 4
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


# ---- the budget that learns the provider's limit (deterministic: fake clocks, no timing) ----------
class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rate_limit_headers_are_parsed():
    from libra_ray.llm.ratelimit import parse_rate_limit_headers, parse_reset

    assert parse_reset("6m0s") == 360 and parse_reset("20ms") == 0.02 and parse_reset("1.5s") == 1.5
    assert parse_reset("1h2m3s") == 3723 and parse_reset("2") == 2 and parse_reset("soon") is None
    info = parse_rate_limit_headers({"x-ratelimit-limit-requests": "1200", "x-ratelimit-remaining-requests": "7",
                                     "x-ratelimit-reset-requests": "250ms", "x-ratelimit-limit-tokens": "90000"})
    assert info["limit_requests"] == 1200 and info["remaining_requests"] == 7 and info["reset_requests"] == 0.25
    assert info["limit_tokens"] == 90000 and info["remaining_tokens"] is None
    assert parse_rate_limit_headers({"content-type": "application/json"}) is None


def test_adapter_takes_the_provider_limit_but_never_exceeds_the_configured_one():
    from libra_ray.llm.ratelimit import RateAdapter

    too_high = RateAdapter(2400, None)
    assert too_high.on_limits(1200, None) and too_high.rates[0] == 20.0  # configured 2x: converges at once
    assert not too_high.on_limits(1200, None)  # the same headers again change nothing
    careful = RateAdapter(600, None)
    assert not careful.on_limits(1200, None) and careful.rates[0] == 10.0  # the user's lower budget wins
    missing = RateAdapter(None, None)
    missing.on_limits(None, 60_000)
    assert missing.rates == [float("inf"), 1000.0]  # a missing tokens budget, discovered from headers


def test_adapter_cuts_on_429_once_per_cooldown_and_recovers_additively():
    from libra_ray.llm.ratelimit import RateAdapter

    a = RateAdapter(1200, None, decrease=0.5, increase=0.1, cooldown_s=1.0, now=0.0)  # 20/s
    assert a.on_rate_limited(0.0, granted_rate=0.0) and a.rates[0] == 10.0
    assert not a.on_rate_limited(0.5, granted_rate=0.0) and a.rates[0] == 10.0  # same burst: no second cut
    a.advance(2.5)  # +0.1 x 20/s per second for 2.5 s
    assert abs(a.rates[0] - 15.0) < 1e-9
    a.advance(100.0)
    assert a.rates[0] == 20.0  # never above the ceiling
    assert a.rate_limited == 2


def test_adapter_discovers_a_missing_budget_from_the_granted_rate():
    from libra_ray.llm.ratelimit import RateAdapter

    a = RateAdapter(None, None, decrease=0.7, now=0.0)
    assert a.rates[0] == float("inf")
    a.on_rate_limited(1.0, granted_rate=50.0)
    assert abs(a.rates[0] - 35.0) < 1e-9
    a.advance(2.0)  # no ceiling: probes upward from the rate before the cut
    assert abs(a.rates[0] - (35.0 + 0.1 * 50.0 * 1.0)) < 1e-9


def test_bucket_grants_within_a_horizon_and_applies_learned_limits():
    from libra_ray.llm.ratelimit import GRANT_HORIZON_S, TokenBucket

    clock = FakeClock()
    bucket = TokenBucket(2400, None, burst_s=0.5, adaptive=True, clock=clock)  # 40/s configured, burst 20
    granted = [bucket.grant(1, 0) for _ in range(40)]
    ok = [g for g in granted if g[0]]
    # Burst 20 now, then at most GRANT_HORIZON_S of budget ahead (10 at 40/s); the rest must ask again.
    assert len(ok) == 20 + int(40 * GRANT_HORIZON_S) and all(d <= GRANT_HORIZON_S + 1e-9 for _, d, _, _ in ok)
    refused = granted[-1]
    assert not refused[0] and refused[1] > 0 and not refused[2]
    # The provider says 1200 rpm with nothing left: the budget drops to 20/s and to its remaining.
    bucket.feedback(limits={"limit_requests": 1200, "remaining_requests": 0})
    assert bucket.rates[0] == 20.0 and bucket.levels[0] <= 0
    clock.t += 10.0
    assert bucket.grant(1, 0)[0]
    assert bucket.stats()["adaptive"]["provider_limit_requests"] == 1200


def test_client_reports_limits_and_429s_to_its_budget():
    from libra_ray.llm.ratelimit import TokenBucket

    with TestOpenAIServer(rpm=600) as srv:  # emits x-ratelimit-* headers
        bucket = TokenBucket(requests_per_minute=1200, adaptive=True)  # configured at 2x the real limit
        client = ChatClient(endpoint(), base_url=srv.base_url, limiter=bucket)
        assert client.chat(MSG).ok
        assert bucket.adapter.learned[0] == 600 and bucket.rates[0] == 10.0
        srv.inject("429")
        assert client.chat([{"role": "user", "content": "again"}]).ok
    assert bucket.adapter.rate_limited == 1 and bucket.rates[0] < 10.0
