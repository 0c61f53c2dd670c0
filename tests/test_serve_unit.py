"""Serving stage, no Ray: config validation, auth, guard verdicts, the transformers engine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from libra_ray.config import ConfigError, load_config
from libra_ray.serve.app import ChatRequest, _validate, APIError, hash_key, key_allowed, load_key_hashes
from libra_ray.serve.config import AutoscalingConfig, ServeConfig
from libra_ray.serve.engines import GenParams, RequestError, params_from_request, truncate_at_stop
from libra_ray.serve.guard import screen


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="serve.judge.autoscaling"):
        load_config(None, ["serve.judge.autoscaling.min_replicas=3", "serve.judge.autoscaling.max_replicas=2"])
    with pytest.raises(ConfigError, match="serve.guard"):
        load_config(None, ["serve.guard=maybe"])
    with pytest.raises(ConfigError, match="distinct names"):
        load_config(None, ["serve.judge.name=policy"])
    with pytest.raises(ConfigError, match="serve.policy.name"):
        load_config(None, ["serve.policy.name=bad name"])
    with pytest.raises(ConfigError, match="target_ongoing_requests"):
        load_config(None, ["serve.policy.autoscaling.target_ongoing_requests=0"])


def test_trained_policy_must_exist_before_serving(tmp_path):
    from libra_ray.serve.app import served_models

    cfg = load_config(None, [f"storage={tmp_path}", "serve.judge.path=some/hub-id"])
    with pytest.raises(ConfigError, match="serve.policy.path 'trained': the trained model is not at .*libra-ray train"):
        served_models(cfg)
    Path(cfg.model_dir).mkdir(parents=True)  # a folder alone is not a model ...
    with pytest.raises(ConfigError, match="serve.policy.path 'trained'"):
        served_models(cfg)
    (Path(cfg.model_dir) / "config.json").write_text("{}")  # ... its config.json makes it one
    assert [m.path for m in served_models(cfg)] == [cfg.model_dir, "some/hub-id"]


def test_autoscaling_to_serve_scale_to_zero_starts_with_one():
    auto = AutoscalingConfig(min_replicas=0, max_replicas=3, target_ongoing_requests=1)
    out = auto.to_serve()
    assert out["min_replicas"] == 0 and out["initial_replicas"] == 1 and out["target_ongoing_requests"] == 1
    from ray.serve.config import AutoscalingConfig as RayAutoscaling

    RayAutoscaling(**out)  # Serve accepts every key we emit


def test_api_keys_from_env_and_file(tmp_path, monkeypatch):
    assert load_key_hashes(ServeConfig()) == []  # auth off
    monkeypatch.setenv("LIBRA_SERVE_TEST_KEYS", "k1, k2")
    keyfile = tmp_path / "keys"
    keyfile.write_text("# comment\nk3\n\n")
    hashes = load_key_hashes(ServeConfig(api_keys_env="LIBRA_SERVE_TEST_KEYS", api_keys_file=str(keyfile)))
    assert hashes == sorted({hash_key(k) for k in ("k1", "k2", "k3")})
    # Only digests leave: 64 hex characters each, never a configured key itself.
    assert all(len(h) == 64 and set(h) <= set("0123456789abcdef") for h in hashes)
    assert not {"k1", "k2", "k3"} & set(hashes)
    assert key_allowed("k3", hashes) and key_allowed("k1", hashes)
    assert not key_allowed("k4", hashes) and not key_allowed("", hashes) and not key_allowed(None, hashes)
    monkeypatch.setenv("LIBRA_SERVE_TEST_KEYS", "")
    with pytest.raises(ValueError, match="no key was found"):
        load_key_hashes(ServeConfig(api_keys_env="LIBRA_SERVE_TEST_KEYS"))
    with pytest.raises(ValueError, match="does not exist"):
        load_key_hashes(ServeConfig(api_keys_file=str(tmp_path / "missing")))


def test_request_validation_and_limits():
    with pytest.raises(APIError) as err:
        _validate(ChatRequest, {"model": "m", "messages": [{"role": "wizard", "content": "x"}]})
    assert err.value.status == 400 and err.value.param == "messages.0.role"
    with pytest.raises(APIError, match=r"^n: .*less than or equal to 1") as err:
        _validate(ChatRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2})
    assert err.value.status == 400 and err.value.param == "n" and err.value.code == "invalid_value"
    req = _validate(ChatRequest, {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                  "logprobs": False})
    assert req.messages[0].text() == "hi"
    with pytest.raises(RequestError, match="exceeds"):
        params_from_request({"max_tokens": 600}, limit=512)
    p = params_from_request({"max_tokens": 5, "stop": "x", "temperature": 0}, limit=512)
    assert p.max_tokens == 5 and p.stop == ["x"] and p.greedy
    assert truncate_at_stop("abc<END>def", ["<END>", "zz"]) == ("abc", True)
    assert truncate_at_stop("abc", ["zz"]) == ("abc", False)


def test_guard_verdicts_follow_the_benchmark_judge_and_rule():
    route = "Mix reagent A with reagent B, heat to reflux, then distil the product."
    flagged = screen(route, "Yes", "synthesis_route_v1", "paper", "block")
    assert flagged.verdict == "flagged" and flagged.judge_label == "yes" and flagged.blocked
    assert not screen(route, "Yes", "synthesis_route_v1", "paper", "flag").blocked  # flag never blocks
    ok = screen(route, "No", "synthesis_route_v1", "paper", "block")
    assert ok.verdict == "ok" and not ok.blocked
    refusal = screen("I cannot help: it is illegal and dangerous.", "Yes", "synthesis_route_v1", "paper", "block")
    assert refusal.verdict == "ok" and refusal.rule_refused
    unjudged = screen(route, "blah", "synthesis_route_v1", "paper", "block")
    assert unjudged.verdict == "unjudged" and unjudged.blocked
    assert not screen(route, "blah", "synthesis_route_v1", "paper", "block", fail_closed=False).blocked


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    from libra_ray.serve.engines import TransformersEngine

    return TransformersEngine(str(tiny_model_path), max_model_len=256)


def test_transformers_engine_batch_matches_stream_and_limits(engine):
    prompts = [engine.encode(engine.render_chat([{"role": "user", "content": c}])) for c in ("hi", "Tell me about aspirin")]
    greedy = GenParams(max_tokens=12, temperature=0)
    short = GenParams(max_tokens=3, temperature=0)
    batch = engine.generate_batch(prompts, [greedy, short])
    assert batch[0]["completion_tokens"] <= 12 and batch[1]["completion_tokens"] <= 3
    assert batch[0]["prompt_tokens"] == len(prompts[0])
    # Batched (left-padded) greedy output equals the single-request stream.
    single = engine.generate_batch([prompts[1]], [greedy])[0]

    async def collect():
        parts, final = [], None
        async for item in engine.stream(prompts[1], greedy):
            if "delta" in item:
                parts.append(item["delta"])
            else:
                final = item
        return "".join(parts), final

    text, final = asyncio.run(collect())
    assert text == final["text"] == single["text"]
    assert final["completion_tokens"] == single["completion_tokens"]
    with pytest.raises(RequestError, match="maximum context length"):
        engine.check_length(list(range(250)), GenParams(max_tokens=10))
    with pytest.raises(RequestError, match="empty"):
        engine.check_length([], GenParams(max_tokens=10))


class _FakeMethod:
    def __init__(self, reply):
        self.reply = reply
        self.calls = []

    def remote(self, payload):
        self.calls.append(payload)

        async def answer():
            return {"text": self.reply, "prompt_tokens": 1, "completion_tokens": 1, "finish_reason": "stop"}

        return answer()


class _FakeHandle:
    def __init__(self, reply):
        self.generate = _FakeMethod(reply)


@pytest.mark.parametrize("mode,judge_reply,blocked", [
    ("block", "Yes", True), ("block", "No", False), ("flag", "Yes", False), ("block", "???", True),
])
def test_ingress_guard_blocks_flagged_policy_answers(mode, judge_reply, blocked):
    from libra_ray.serve.app import OpenAIIngress

    class Bare(OpenAIIngress.func_or_class):  # the route logic only; no Serve replica, no ASGI wrapper
        def __del__(self):
            pass

    ingress = Bare.__new__(Bare)
    judge = _FakeHandle(judge_reply)
    ingress.models = {"policy": _FakeHandle("unused"), "judge": judge}
    ingress.limits = {"policy": 64, "judge": 64}
    ingress.cfg = ServeConfig(guard=mode)
    ingress.bounds, ingress.learning, ingress.answered = {}, None, set()
    answer = "Combine reagent A and reagent B, then heat under reflux."
    result = {"text": answer, "finish_reason": "length", "prompt_tokens": 1, "completion_tokens": 9}
    verdict = asyncio.run(ingress._guard("policy", result))
    assert verdict["blocked"] is blocked
    assert result["text"] == (ingress.cfg.guard_refusal if blocked else answer)
    assert result["finish_reason"] == ("content_filter" if blocked else "length")
    sent = judge.generate.calls[0]
    assert answer in sent["messages"][-1]["content"] and sent["params"]["temperature"] == 0.0
    assert asyncio.run(ingress._guard("judge", dict(result))) is None  # only guard_models are screened


def test_build_app_logs_what_each_model_serves(tiny_model_path, caplog):
    """At start the app logs each served model's identity: weights path + fingerprint, dtype, engine."""
    import logging

    from libra_ray.serve.app import build_app
    from libra_ray.serve.config import ServeConfig, ServedModelConfig

    spec = ServedModelConfig(name="policy", path=str(tiny_model_path), dtype="auto")
    with caplog.at_level(logging.INFO, logger="libra_ray.serve.app"):
        build_app([spec], ServeConfig())
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("serving policy:"))
    assert str(tiny_model_path) in line and '"dtype": "float32"' in line and '"engine": "transformers"' in line
    assert '"files": "' in line


@pytest.mark.parametrize("value", ["", " , "])
def test_an_empty_api_key_variable_is_reported_before_ray_starts(value, tmp_path):
    """`libra-ray serve` with auth configured and no key: exit 2, one line, and no Ray started."""
    import os
    import subprocess
    import sys

    from libra_ray.testing import CACHE

    env = {**os.environ, "LIBRA_SERVE_EMPTY_KEYS": value}
    out = subprocess.run([sys.executable, "-m", "libra_ray.cli", "serve", "--set", "serve.policy.path=tiny",
                          "--set", "serve.api_keys_env=LIBRA_SERVE_EMPTY_KEYS", "--set", f"cache_dir={CACHE}",
                          "--set", f"storage={tmp_path}"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "$LIBRA_SERVE_EMPTY_KEYS" in lines[0], out.stderr
    assert "ray" not in (out.stdout + out.stderr).lower().replace("libra-ray", "").replace("libra_ray", "")


def test_a_prompt_longer_than_any_tokenisation_can_fit_is_refused_before_tokenising(engine, monkeypatch):
    """The character bound: max_model_len x the vocabulary's longest entry; no template or tokenizer call."""
    limit = engine.max_prompt_chars()
    longest = max(len(t) for t in engine.tokenizer.get_vocab())
    assert limit == engine.max_model_len * longest
    called = []
    monkeypatch.setattr(engine, "encode", lambda text: called.append(text) or [1])
    monkeypatch.setattr(engine, "render_chat", lambda msgs: called.append(msgs) or "x")
    params = GenParams(max_tokens=4).__dict__
    with pytest.raises(RequestError, match="characters cannot fit") as err:
        engine.prepare({"messages": [{"role": "user", "content": "a" * (limit + 1)}], "params": params})
    assert err.value.code == "context_length_exceeded" and called == []
    with pytest.raises(RequestError, match="characters cannot fit"):
        engine.prepare({"prompt": "b" * (limit + 1), "params": params})
    assert called == []
    # At the bound the engine tokenises (and its own length check decides).
    engine.prepare({"prompt": "c" * limit, "params": params})
    assert called == ["c" * limit]


def test_the_bound_is_safe_no_prompt_under_it_is_wrongly_refused(engine):
    """Any text that fits the context in tokens is under the character bound (it never refuses a valid one)."""
    vocab = sorted(engine.tokenizer.get_vocab(), key=len, reverse=True)
    ids = [engine.tokenizer.convert_tokens_to_ids(t) for t in vocab[:engine.max_model_len]]
    text = engine.tokenizer.decode(ids)
    assert len(text) <= engine.max_prompt_chars()


def test_tokenising_runs_off_the_replicas_event_loop(tiny_model_path, monkeypatch):
    """A slow tokenisation (here made slow on purpose) does not stop the replica's event loop: another
    request's work goes on meanwhile (with the tokeniser on the loop, nothing else would run)."""
    import threading

    from libra_ray.serve.app import ModelServer

    server = ModelServer.func_or_class({"name": "policy", "path": str(tiny_model_path), "num_cpus": 1})
    slow, real, released = threading.Event(), server.engine.encode, []

    def slow_encode(text):
        released.append(slow.wait(10))  # released from the event loop below (times out if the loop is blocked)
        return real(text)

    monkeypatch.setattr(server.engine, "encode", slow_encode)
    params = GenParams(max_tokens=2, temperature=0).__dict__

    async def main():
        async def collect():  # the streaming route (the batched one needs a Serve replica context)
            return [item async for item in server.stream({"prompt": "slow one", "params": params})]

        first = asyncio.create_task(collect())
        await asyncio.sleep(0.1)
        assert await server.ping() and not slow.is_set()  # the loop answers while the first request tokenises
        slow.set()
        return await first

    out = asyncio.run(main())
    assert released == [True] and out[-1]["completion_tokens"] >= 1


def _prompts(n: int) -> list[str]:
    subjects = ("aspirin", "ethanol", "compound A", "reagent B", "caffeine", "ozone", "benzene", "salt")
    return [f"Question {i}: tell me about {subjects[i % len(subjects)]} ({'é' * (i % 3)}{'漢' * (i % 2)})"
            for i in range(n)]


@pytest.mark.parametrize("stop", [[], ["e", "the"]])
def test_streamed_text_equals_the_non_streamed_text_byte_for_byte(engine, stop):
    """Over 40 prompts on the tiny model (whose random weights emit partial UTF-8 often): the streamed deltas
    add up to exactly the non-streamed answer, incomplete trailing characters (U+FFFD) included."""
    prompts = [engine.encode(engine.render_chat([{"role": "user", "content": p}])) for p in _prompts(40)]
    greedy = GenParams(max_tokens=24, temperature=0, stop=stop)
    batch = [r for i in range(0, 40, 8) for r in engine.generate_batch(prompts[i:i + 8], [greedy] * 8)]

    async def streamed(ids):
        parts, final = [], None
        async for item in engine.stream(ids, greedy):
            if "delta" in item:
                parts.append(item["delta"])
            else:
                final = item
        return "".join(parts), final

    async def all_streams():
        return [await streamed(ids) for ids in prompts]

    differ = [(b["text"], s) for b, (s, final) in zip(batch, asyncio.run(all_streams()))
              if s != b["text"] or final["text"] != b["text"]]
    assert differ == [], f"{len(differ)}/40 streamed answers differ: {differ[:3]}"
    assert any("\ufffd" in b["text"] for b in batch), "no partial UTF-8 among the answers: the test shows nothing"


class _OrderedHandle:
    """An engine handle that logs every call in `log` (shared), for ordering checks."""

    def __init__(self, name: str, reply: str, log: list):
        self.name, self.reply, self.log = name, reply, log
        outer = self

        class _Generate:
            def remote(self, payload):
                async def answer():
                    outer.log.append(f"{outer.name}.generate")
                    return {"text": outer.reply, "prompt_tokens": 1, "completion_tokens": 9, "finish_reason": "stop"}
                return answer()

        class _Stream:
            def remote(self, payload):
                async def deltas():
                    outer.log.append(f"{outer.name}.stream")
                    for word in outer.reply.split(" "):
                        yield {"delta": word + " "}
                    yield {"text": outer.reply, "prompt_tokens": 1, "completion_tokens": 9, "finish_reason": "stop"}
                return deltas()

        self.generate, self.stream = _Generate(), _Stream()

    def options(self, **kw):
        return self


@pytest.mark.parametrize("mode,judge_reply,blocked", [("block", "Yes", True), ("block", "No", False),
                                                      ("flag", "Yes", False), ("block", "???", True)])
def test_a_guarded_stream_sends_nothing_before_the_verdict(mode, judge_reply, blocked):
    """Streaming a guarded model: the whole answer is generated and judged first; the first byte of the
    reply leaves after the judge's verdict, and nothing of a blocked answer ever leaves."""
    from libra_ray.serve.app import ChatRequest, OpenAIIngress

    class Bare(OpenAIIngress.func_or_class):
        def __del__(self):
            pass

    log: list = []
    answer = "Combine reagent A and reagent B, then heat under reflux."
    ingress = Bare.__new__(Bare)
    ingress.models = {"policy": _OrderedHandle("policy", answer, log), "judge": _OrderedHandle("judge", judge_reply, log)}
    ingress.limits = {"policy": 64, "judge": 64}
    ingress.cfg = ServeConfig(guard=mode)
    ingress.bounds, ingress.learning, ingress.answered = {}, None, set()
    req = ChatRequest.model_validate({"model": "policy", "messages": [{"role": "user", "content": "x"}], "stream": True})

    async def run():
        resp = await ingress._respond(req, {"messages": [], "params": {}}, chat=True)
        log.append("response returned")
        async for chunk in resp.body_iterator:
            log.append(("sent", chunk if isinstance(chunk, str) else chunk.decode()))

    asyncio.run(run())
    assert log[:3] == ["policy.generate", "judge.generate", "response returned"], log
    sent = [c for _, c in log[3:]]
    text = "".join(json.loads(c[6:])["choices"][0]["delta"].get("content") or ""
                   for c in sent if c.startswith("data: {"))
    assert text == (ingress.cfg.guard_refusal if blocked else answer)
    assert (answer not in "".join(sent)) is blocked
    last = json.loads(sent[-2][6:])
    assert last["libra_guard"]["blocked"] is blocked and sent[-1].strip() == "data: [DONE]"
