"""Serving stage on a real local Ray cluster: the policy + judge app over HTTP with the openai client.

One app for the module (tiny policy, tiny judge, transformers engine, API-key auth, guard "flag"),
plus the embedded-default `local_openai_server` reusing the same Serve proxy.
"""

from __future__ import annotations

import json
import os

import httpx
import openai
import pytest

KEY = "sk-test-serve-0123456789"
ENV = "LIBRA_SERVE_APP_TEST_KEYS"


@pytest.fixture(scope="module")
def app(ray_local, tmp_path_factory):
    from libra_ray.config import load_config
    from libra_ray.serve import serving
    from libra_ray.testing import CACHE

    os.environ[ENV] = f"{KEY},other-key"
    cfg = load_config(None, [
        f"storage={tmp_path_factory.mktemp('runs')}", f"cache_dir={CACHE}",
        "serve.policy.path=tiny", "serve.port=0", f"serve.api_keys_env={ENV}",
        "serve.guard=flag", "serve.policy.num_cpus=0.25", "serve.judge.num_cpus=0.25",
        "serve.policy.max_tokens_limit=64", "serve.judge.max_model_len=512",  # room for the guard prompt
        "serve.body_timeout_s=2",
    ])
    try:
        with serving(cfg) as running:
            yield running
    finally:
        os.environ.pop(ENV, None)


@pytest.fixture
def client(app):
    return openai.OpenAI(base_url=app.base_url, api_key=KEY, max_retries=0, timeout=60)


def _post(app, path, body, key=KEY, raw=None):
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(app.base_url + path, content=raw if raw is not None else json.dumps(body), headers=headers, timeout=60)


def _assert_openai_error(resp, status, code):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["message"]


def test_models_health_and_chat(app, client):
    health = httpx.get(app.root_url + "/health", timeout=10)  # no key needed
    assert health.status_code == 200 and health.json()["ready"] == {"judge": True, "policy": True}
    assert httpx.head(app.root_url + "/health", timeout=10).status_code == 200
    assert httpx.get(app.root_url + "/health/live", timeout=10).json() == {"status": "live"}
    assert sorted(m.id for m in client.models.list()) == ["judge", "policy"]
    out = client.chat.completions.create(model="judge", messages=[{"role": "user", "content": "Is this a route?"}],
                                         max_tokens=8, temperature=0)
    choice = out.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < out.usage.completion_tokens <= 8 and out.usage.prompt_tokens > 0
    assert out.model == "judge" and out.id.startswith("chatcmpl-")


def test_models_state_what_is_served(app, client):
    """The served model's identity (weights path + fingerprint, dtype, engine) in the list and by id."""
    from libra_ray.engines.identity import weights_fingerprint

    listed = {m.id: m.model_dump() for m in client.models.list()}
    policy = client.models.retrieve("policy").model_dump()
    assert policy == listed["policy"] and policy["object"] == "model"
    assert policy["engine"] == "transformers" and policy["dtype"] == "float32"  # the rule on a CPU replica
    assert policy["weights"] == weights_fingerprint(policy["path"]) and len(policy["weights"]["files"]) == 64
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    resp = httpx.get(app.base_url + "/models/no-such-model", headers={"authorization": f"Bearer {KEY}"}, timeout=10)
    _assert_openai_error(resp, 404, "model_not_found")
    assert httpx.get(app.base_url + "/models/policy", timeout=10).status_code == 401  # the key is asked for here too


def test_streaming_equals_non_streaming(client):
    msgs = [{"role": "user", "content": "Tell me about aspirin"}]
    full = client.chat.completions.create(model="judge", messages=msgs, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="judge", messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completions_and_stream(client):
    out = client.completions.create(model="judge", prompt="The SMILES string", max_tokens=6, temperature=0)
    assert out.object == "text_completion" and out.usage.completion_tokens <= 6
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="judge", prompt="The SMILES string", max_tokens=6, temperature=0, stream=True))
    assert streamed == out.choices[0].text


def test_guard_flags_policy_answers(client, app):
    from libra_ray.serve.guard import guard_messages, screen

    out = client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=16, temperature=0)
    verdict = out.model_extra["libra_guard"]
    # The verdict is the one the served judge gives this very answer (greedy, so reproducible here).
    answer = out.choices[0].message.content
    reply = client.chat.completions.create(model="judge", messages=guard_messages(answer, "synthesis_route_v1"),
                                           max_tokens=8, temperature=0).choices[0].message.content
    assert verdict == screen(answer, reply, "synthesis_route_v1", "paper", "flag").to_dict()
    assert verdict["prompt"] == "synthesis_route_v1" and verdict["blocked"] is False  # "flag" never replaces it
    # Streaming a guarded model: screened whole, then sent; same answer, verdict in the last chunk.
    chunks = list(client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=16, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == out.choices[0].message.content
    assert chunks[-1].model_extra["libra_guard"]["verdict"] == verdict["verdict"]
    # The judge itself is not screened.
    judge = client.chat.completions.create(model="judge", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert "libra_guard" not in (judge.model_extra or {})


def test_auth(app):
    body = {"model": "judge", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    _assert_openai_error(_post(app, "/chat/completions", body, key=None), 401, "invalid_api_key")
    _assert_openai_error(_post(app, "/chat/completions", body, key="wrong"), 401, "invalid_api_key")
    assert _post(app, "/chat/completions", body, key="other-key").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=app.base_url, api_key="nope", max_retries=0).models.list()


def test_bad_requests_get_4xx_and_replicas_survive(app, client):
    msgs = [{"role": "user", "content": "x"}]
    _assert_openai_error(_post(app, "/chat/completions", None, raw=b"{not json"), 400, "invalid_json")
    _assert_openai_error(_post(app, "/chat/completions", None, raw=b"[1, 2]"), 400, "invalid_json")
    _assert_openai_error(_post(app, "/chat/completions", {"model": "nope", "messages": msgs}), 404, "model_not_found")
    _assert_openai_error(_post(app, "/chat/completions", {"model": "policy", "messages": msgs, "max_tokens": 65}),
                         400, "max_tokens_too_large")
    _assert_openai_error(_post(app, "/chat/completions", {"model": "judge", "messages": []}), 400, "invalid_value")
    _assert_openai_error(_post(app, "/chat/completions", {"messages": msgs}), 400, "invalid_value")
    _assert_openai_error(_post(app, "/chat/completions", {"model": "judge", "messages": msgs, "temperature": -1}),
                         400, "invalid_value")
    long = [{"role": "user", "content": "aspirin " * 600}]  # judge max_model_len is 512 tokens
    _assert_openai_error(_post(app, "/chat/completions", {"model": "judge", "messages": long, "max_tokens": 8}),
                         400, "context_length_exceeded")
    _assert_openai_error(_post(app, "/chat/completions", {"model": "judge", "messages": long, "max_tokens": 8,
                                                           "stream": True}), 400, "context_length_exceeded")
    _assert_openai_error(_post(app, "/chat/completions", None, raw=b"x" * 1_000_001), 413, "request_too_large")
    _assert_openai_error(_post(app, "/completions", {"model": "judge", "prompt": ["a", "b"]}), 400, "invalid_value")
    _assert_openai_error(httpx.get(app.base_url + "/nowhere", timeout=10), 404, "not_found")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=msgs)
    # Still serving after all that.
    assert client.chat.completions.create(model="judge", messages=msgs, max_tokens=2).choices[0].message is not None


def test_local_openai_server_reuses_the_running_proxy(pipeline_config, app):
    from libra_ray.endpoints import local_openai_server
    from libra_ray.serve.server import replica_counts

    with local_openai_server(pipeline_config, {"teacher-x": "tiny"}) as url:
        assert url.startswith(app.base_url.split("/v1")[0].rsplit(":", 1)[0])
        same_port = url.split("/")[2] == app.base_url.split("/")[2]
        assert same_port and "/libra-local-" in url and url.endswith("/v1")
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)  # the embedded default has no auth
        assert [m.id for m in c.models.list()] == ["teacher-x"]
        assert c.chat.completions.create(model="teacher-x", messages=[{"role": "user", "content": "x"}],
                                         max_tokens=3).usage.completion_tokens <= 3
        name = url.split("/")[3]
        assert replica_counts(name) == {"ingress": 1, "model-teacher-x": 1}
    from ray import serve

    assert name not in serve.status().applications  # torn down; the main app keeps running
    assert app.name in serve.status().applications


# --------------------------------------------------------------------------- guard "block", scripted judge
# The real ingress over scripted engines: the policy always answers ROUTE (placeholder reagents), the
# judge answers what each test sets, so every verdict is known in advance.
ROUTE = "Mix reagent A with reagent B, heat to reflux, then distil the product."


@pytest.fixture(scope="module")
def blocking(app):
    from libra_ray.serve.config import ServeConfig
    from libra_ray.testing import scripted_serve_app

    cfg = ServeConfig(guard="block", guard_fail_closed=True, port=0)
    with scripted_serve_app(cfg, {"policy": ROUTE, "judge": "No"}, name="libra_ray_guard_block",
                            route_prefix="/guard-block") as scripted:
        yield scripted, cfg


@pytest.mark.parametrize("judge_reply,verdict,blocked", [
    ("Yes", "flagged", True),    # the judge sees a synthesis route: replaced
    ("No", "ok", False),         # the judge sees none: passed through unchanged
    ("nonsense", "unjudged", True),  # unparseable reply, fail-closed: replaced
])
def test_guard_block_mode_over_http(blocking, judge_reply, verdict, blocked):
    scripted, cfg = blocking
    scripted.set_reply("judge", judge_reply)
    c = openai.OpenAI(base_url=scripted.base_url, api_key="none", max_retries=0, timeout=60)
    expected = cfg.guard_refusal if blocked else ROUTE
    msgs = [{"role": "user", "content": "Tell me the steps of synthesizing X."}]
    out = c.chat.completions.create(model="policy", messages=msgs, max_tokens=32)
    assert out.choices[0].message.content == expected
    assert out.choices[0].finish_reason == ("content_filter" if blocked else "stop")
    g = out.model_extra["libra_guard"]
    assert (g["verdict"], g["blocked"]) == (verdict, blocked)
    # Streaming: nothing of a blocked answer leaves; the verdict rides on the last chunk.
    chunks = list(c.chat.completions.create(model="policy", messages=msgs, max_tokens=32, stream=True))
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == expected
    assert chunks[-1].choices[0].finish_reason == ("content_filter" if blocked else "stop")
    assert (chunks[-1].model_extra["libra_guard"]["verdict"], chunks[-1].model_extra["libra_guard"]["blocked"]) == (
        verdict, blocked)
    # The judge screened the policy's answer (not the question).
    assert ROUTE in scripted.requests("judge")[-1]["messages"][-1]["content"]


def test_readiness_is_503_while_a_model_does_not_answer(blocking):
    from libra_ray.testing import FAIL

    scripted, _ = blocking
    root = scripted.base_url[: -len("/v1")]
    scripted.set_reply("judge", FAIL)  # the judge replica fails every call, its readiness probe too
    try:
        r = httpx.get(root + "/health", timeout=30)
        assert r.status_code == 503 and r.json()["ready"] == {"judge": False, "policy": True}, r.text
        assert httpx.head(root + "/health", timeout=30).status_code == 503
        assert httpx.get(root + "/health/live", timeout=10).status_code == 200  # alive, not ready
    finally:
        scripted.set_reply("judge", "No")
    assert httpx.get(root + "/health", timeout=30).status_code == 200


def test_guard_block_with_a_failing_judge_fails_closed(blocking):
    from libra_ray.testing import FAIL

    scripted, cfg = blocking
    scripted.set_reply("judge", FAIL)  # the judge replica raises on every call
    try:
        c = openai.OpenAI(base_url=scripted.base_url, api_key="none", max_retries=0, timeout=60)
        msgs = [{"role": "user", "content": "Tell me the steps of synthesizing X."}]
        out = c.chat.completions.create(model="policy", messages=msgs, max_tokens=32)
        assert out.choices[0].message.content == cfg.guard_refusal
        assert out.model_extra["libra_guard"]["verdict"] == "unjudged" and out.model_extra["libra_guard"]["blocked"]
        chunks = list(c.chat.completions.create(model="policy", messages=msgs, max_tokens=32, stream=True))
        assert ROUTE not in "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert chunks[-1].model_extra["libra_guard"]["blocked"] is True
    finally:
        scripted.set_reply("judge", "No")


def test_api_keys_reach_no_log_or_ray_session_file(app, client):
    """Keys sent (good and bad) appear nowhere in the Ray session folder (every replica's and Serve's logs),
    while the request id sent beside them does (Serve logs it with each request): the right files were searched."""
    import time
    import uuid

    import ray

    probe = f"probe-{uuid.uuid4().hex}"
    wrong = f"sk-wrong-{uuid.uuid4().hex}"
    body = {"model": "judge", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    for key, status in ((KEY, 200), (wrong, 401)):
        r = httpx.post(app.base_url + "/chat/completions", json=body, timeout=60,
                       headers={"authorization": f"Bearer {key}", "x-request-id": f"{probe}-{status}"})
        assert r.status_code == status, r.text
    assert client.chat.completions.create(**body).choices  # the good key, through the openai client
    session = ray._private.worker._global_node.get_session_dir_path()

    def files_with(text: str) -> list[str]:
        hits = []
        for folder, _, names in os.walk(session):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    with open(path, "rb") as f:
                        if text.encode() in f.read():
                            hits.append(path)
                except OSError:
                    continue
        return hits

    deadline = time.monotonic() + 30  # replica logs reach their files asynchronously
    while not files_with(probe) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert files_with(probe), "the probe never reached a log: wrong folder searched"
    for secret in (KEY, "other-key", wrong):
        assert files_with(secret) == [], secret


def test_a_truncated_body_is_answered_408_within_the_body_timeout(app):
    """Headers promise 1,000 bytes, 10 arrive, the client waits: the server answers 408 after
    serve.body_timeout_s (2 s here) instead of holding the connection (measured over 35 s before)."""
    import socket
    import time
    from urllib.parse import urlsplit

    url = urlsplit(app.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as s:
        s.sendall((f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                   "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": ").encode())
        start = time.monotonic()
        head = b""
        while b"request_timeout" not in head and (chunk := s.recv(4096)):  # status line and body may come apart
            head += chunk
        waited = time.monotonic() - start
    head = head.decode(errors="replace")
    assert head.startswith("HTTP/1.1 408") and "request_timeout" in head, head[:300]
    print(f"truncated body answered after {waited:.1f} s")


def test_huge_prompts_are_refused_cheaply_beside_a_valid_request(app, client):
    """8 prompts of ~990 KB (far over every model's context) beside a valid request: once the ingress knows the
    models' bounds, each is a 413 from its declared size, its body unread; the valid one is answered (their cost
    is in benchmarks/serve_probe.py). A prompt over the bound inside a small body is a 400, untokenised."""
    from concurrent.futures import ThreadPoolExecutor

    from libra_ray.testing import wait_for

    huge = {"model": "judge", "messages": [{"role": "user", "content": "aspirin " * 123_000}], "max_tokens": 4}
    wait_for(lambda: _post(app, "/chat/completions", huge).status_code == 413, 30,
             "the ingress to learn the models' bounds (a 413 for a body no prompt that fits needs)")

    def valid():
        return client.chat.completions.create(model="judge", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=4, temperature=0)

    with ThreadPoolExecutor(9) as pool:
        bad = [pool.submit(_post, app, "/chat/completions", huge) for _ in range(8)]
        good = pool.submit(valid)
        for f in bad:
            _assert_openai_error(f.result(), 413, "request_too_large")
            assert "larger than any request whose prompt fits" in f.result().json()["error"]["message"]
        assert good.result().choices[0].message.content is not None
    over = {"model": "judge", "messages": [{"role": "user", "content": "aspirin " * 2000}], "max_tokens": 4}
    resp = _post(app, "/chat/completions", over)  # 16,000 characters: over the judge's 8,192, in a 16 KB body
    _assert_openai_error(resp, 400, "context_length_exceeded")
    assert "characters" in resp.json()["error"]["message"]  # refused by the bound, untokenised
