"""Serve's vLLM path on Ray Serve LLM (`libra_ray.serve.ray_llm`): the LLMConfig we build, the request and
response conversion, and (e2e) the real LLMServer behind our ingress."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json

import httpx
import pytest

from libra_ray.engines import GenParams
from libra_ray.testing import CACHE, serve_replica_log, serve_replica_log_files, wait_for

# Ray's LLMServer has an async __del__; instances made without Serve (the scripted tests) warn about it.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine 'LLMServer.__del__' was never awaited:RuntimeWarning")


def _spec(**kw):
    from libra_ray.serve.config import ServedModelConfig

    return ServedModelConfig(name="policy", path="/models/x", engine="vllm", **kw)


def test_vllm_models_default_to_ray_serve_llm_and_the_choice_is_checked():
    from pydantic import ValidationError

    assert _spec().vllm_server == "ray_serve_llm"
    with pytest.raises(ValidationError, match="vllm_server"):
        _spec(vllm_server="ray")


def test_llm_config_on_a_cpu_box_uses_the_cpu_bundle_our_autoscaling_and_the_vllm_env():
    from libra_ray.serve.ray_llm import llm_config

    cfg = llm_config(_spec(num_cpus=0.5, max_model_len=256, dtype="float32", kv_cache_gib=2))
    assert cfg.model_id == "policy" and cfg.model_loading_config.model_source == "/models/x"
    assert cfg.accelerator_config.kind == "cpu"
    assert cfg.placement_group_config == {"bundles": [{"CPU": 0.5}]}
    assert cfg.deployment_config["ray_actor_options"]["num_cpus"] == 0  # the replica shares the engine's bundle
    # Serve LLM's own default target (1e9) never scales out: ours is passed explicitly.
    assert cfg.deployment_config["autoscaling_config"]["target_ongoing_requests"] == 2.0
    assert cfg.engine_kwargs["max_model_len"] == 256 and cfg.engine_kwargs["dtype"] == "float32"
    assert cfg.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_llm_config_with_gpus_leaves_the_accelerator_to_ray():
    from libra_ray.serve.ray_llm import llm_config

    cfg = llm_config(_spec(num_gpus=1, num_cpus=2))
    assert cfg.accelerator_config is None or cfg.accelerator_config.kind != "cpu"
    assert cfg.deployment_config["ray_actor_options"]["num_cpus"] == 2


def test_completion_request_carries_each_requests_own_sampling_settings():
    from ray.serve.llm.openai_api_models import CompletionRequest

    from libra_ray.serve.ray_llm import completion_request

    greedy = CompletionRequest(**completion_request("policy", [5, 6], GenParams(max_tokens=4, temperature=1e-6, top_p=0.5,
                                                                               seed=3, stop=["x"]), stream=False))
    assert (greedy.prompt, greedy.max_tokens, greedy.temperature, greedy.top_p, greedy.seed) == ([5, 6], 4, 0.0, 1.0, 3)
    assert greedy.stop == ["x"] and greedy.stream_options is None
    sampled = CompletionRequest(**completion_request("policy", [5], GenParams(temperature=0.7, top_p=0.9), stream=True))
    assert (sampled.temperature, sampled.top_p, sampled.stream_options.include_usage) == (0.7, 0.9, True)
    # vLLM's neutral values, so the model's generation config cannot change what bench and serve decode.
    assert (sampled.top_k, sampled.min_p, sampled.repetition_penalty) == (0, 0.0, 1.0)


def test_engine_error_responses_become_per_request_error_values():
    from ray.serve.llm.openai_api_models import ErrorResponse

    from libra_ray.serve.ray_llm import error_dict

    bad = ErrorResponse(error={"message": "bad prompt", "type": "BadRequestError", "code": 400})
    assert error_dict(bad)["error"]["type"] == "invalid_request_error"
    broken = ErrorResponse(error={"message": "engine died", "type": "InternalServerError", "code": 500})
    assert error_dict(broken)["error"]["code"] == "engine_failed"


# --------------------------------------------------------------------------- the adapter, with a scripted engine

class _Scripted:
    """Stands in for `LLMServer.completions`: records the request and answers the given items."""

    def __init__(self, items):
        self.items, self.requests = items, []

    async def __call__(self, request):
        self.requests.append(request)

        async def gen():
            for item in self.items:
                yield item
        return gen()


def _server(tiny_model_path, items):
    from libra_ray.serve.ray_llm import RayLLMModelServer, _Prompts

    srv = RayLLMModelServer.__new__(RayLLMModelServer)  # no Ray, no vLLM: only our two methods
    srv.spec = _spec(max_model_len=64).model_copy(update={"path": str(tiny_model_path)})
    srv.prompts = _Prompts(str(tiny_model_path), 64)
    srv.completions = _Scripted(items)
    return srv


def _req(content="hi", **params):
    return {"messages": [{"role": "user", "content": content}], "params": GenParams(**{"max_tokens": 4, **params}).__dict__}


def test_generate_maps_a_completion_response_and_sends_the_chat_template_as_token_ids(tiny_model_path):
    from ray.serve.llm.openai_api_models import CompletionResponse

    resp = CompletionResponse(model="policy", choices=[{"index": 0, "text": "ab", "finish_reason": "length",
                                                        "token_ids": [7, 8]}],
                              usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})
    srv = _server(tiny_model_path, [resp])
    out = asyncio.run(srv.generate(_req(seed=11)))
    assert out == {"text": "ab", "prompt_tokens": 9, "completion_tokens": 2, "finish_reason": "length",
                   "token_ids": [7, 8]}
    sent = srv.completions.requests[0]
    expected = srv.prompts.encode(srv.prompts.render_chat([{"role": "user", "content": "hi"}]))
    assert sent.prompt == expected and sent.seed == 11 and sent.stream is False


def test_a_request_too_long_is_rejected_before_it_reaches_the_engine(tiny_model_path):
    srv = _server(tiny_model_path, [])
    out = asyncio.run(srv.generate(_req("aspirin " * 100)))
    assert out["error"]["code"] == "context_length_exceeded" and srv.completions.requests == []


def test_stream_yields_deltas_then_the_final_result(tiny_model_path):
    def sse(obj):
        return f"data: {json.dumps(obj)}\n\n"

    def chunk(text, finish=None):
        return sse({"choices": [{"index": 0, "text": text, "finish_reason": finish, "token_ids": [1]}]})

    usage = sse({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}})
    srv = _server(tiny_model_path, [[chunk("a")], [chunk("b", "stop"), usage, "data: [DONE]\n\n"]])

    async def collect():
        return [item async for item in srv.stream(_req())]

    items = asyncio.run(collect())
    assert items[:2] == [{"delta": "a"}, {"delta": "b"}]
    assert items[2] == {"text": "ab", "prompt_tokens": 9, "completion_tokens": 2, "finish_reason": "stop",
                        "token_ids": [1, 1]}
    assert srv.completions.requests[0].stream is True


def test_stream_reports_an_engine_error_before_the_first_token_as_a_value(tiny_model_path):
    from ray.serve.llm.openai_api_models import ErrorResponse

    srv = _server(tiny_model_path, [[ErrorResponse(error={"message": "no", "type": "BadRequestError", "code": 400})]])

    async def collect():
        return [item async for item in srv.stream(_req())]

    assert [i["error"]["type"] for i in asyncio.run(collect())] == ["invalid_request_error"]


# --------------------------------------------------------------------------- e2e: the real LLMServer

@pytest.mark.e2e
def test_ray_serve_llm_server_behind_our_ingress(ray_local, tmp_path):
    """vLLM (CPU build) in Ray Serve LLM's LLMServer, behind our ingress: the same answers, streaming,
    and OpenAI-format 400s as our other engines; bad requests fail only themselves."""
    import vllm  # noqa: F401  (the cpu/gpu extra: without vLLM this fails, never skips)
    import openai
    from ray import serve

    from libra_ray.config import load_config
    from libra_ray.serve import serving

    cfg = load_config(None, [
        f"storage={tmp_path}", f"cache_dir={CACHE}", "serve.port=0", "serve.policy.path=tiny",
        "serve.policy.engine=vllm", "serve.policy.num_cpus=0.5", "serve.policy.max_model_len=256",
        # dtype auto (the default): float32 on CPU for both engines, so greedy answers match the transformers judge
        "serve.judge.num_cpus=0.25", "serve.policy.autoscaling.max_replicas=1",
    ])
    assert cfg.serve.policy.vllm_server == "ray_serve_llm"
    earlier = serve_replica_log_files(cfg.serve.app_name, "model-policy")  # an earlier test's app of this name
    with serving(cfg) as app:
        # It is Ray's LLMServer (only it has `llm_config`), under our deployment name.
        assert serve.get_deployment_handle("model-policy", app.name).llm_config.remote().result().model_id == "policy"
        client = openai.OpenAI(base_url=app.base_url, api_key="none", max_retries=0, timeout=120)
        msgs = [{"role": "user", "content": "Tell me about aspirin"}]
        full = client.chat.completions.create(model="policy", messages=msgs, max_tokens=12, temperature=0)
        assert 0 < full.usage.completion_tokens <= 12
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="policy", messages=msgs, max_tokens=12, temperature=0, stream=True) if c.choices)
        assert streamed == full.choices[0].message.content
        # Greedy vLLM (Ray Serve LLM) and greedy transformers agree token for token on the same weights.
        hf = client.chat.completions.create(model="judge", messages=msgs, max_tokens=12, temperature=0)
        assert hf.choices[0].message.content == full.choices[0].message.content
        # ... and so does the benchmark's engine on the same prompt: bench measures what is served.
        import pyarrow as pa

        from libra_ray.bench.engines import TransformersEngine as BenchEngine
        from libra_ray.tiny import resolve_model

        bench = BenchEngine(resolve_model("tiny", cfg), max_model_len=256, max_tokens=12, temperature=0.0)
        benched = bench(pa.table({"id": ["0"], "prompt": [msgs[0]["content"]]})).to_pylist()[0]
        assert benched["raw_text"] == full.choices[0].message.content, benched

        url = app.base_url + "/chat/completions"
        good = {"model": "policy", "messages": msgs, "max_tokens": 12, "temperature": 0}
        bad = [  # each one a 500 or accepted by Ray's own ingress, or too long for the model
            {"model": "policy", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            {"model": "policy", "messages": msgs, "max_tokens": True},
            {"model": "policy", "messages": msgs, "seed": 10**30},
            {"model": "policy", "messages": [{"role": "user", "content": "aspirin " * 300}], "max_tokens": 8},
            # issue #25: 5 stop strings were a 503 "retry later" and a replica traceback on this path
            {"model": "policy", "messages": msgs, "stop": ["a", "b", "c", "d", "e"]},
            {"model": "policy", "messages": msgs, "max_tokens": "8"},
            {"model": "policy", "messages": msgs, "logprobs": True},
            {"model": "policy", "messages": [{"role": "user", "content": None}]},
            {"model": "policy", "messages": [{"role": "system", "content": "be brief"}]},
            {"model": "policy", "messages": [{"role": "user", "content": "aspirin " * 1_000}]},  # char bound
        ]
        with cf.ThreadPoolExecutor(12) as pool:  # mixed, concurrent: the engine batches them together
            answers = list(pool.map(lambda body: httpx.post(url, json=body, timeout=120), [good, *bad] * 2 + [good] * 2))
        goods = [a for a, body in zip(answers, [good, *bad] * 2 + [good] * 2) if body is good]
        bads = [a for a, body in zip(answers, [good, *bad] * 2 + [good] * 2) if body is not good]
        assert [a.status_code for a in goods] == [200] * 4
        assert {a.json()["choices"][0]["message"]["content"] for a in goods} == {full.choices[0].message.content}
        assert [a.status_code for a in bads] == [400] * (2 * len(bad)), [a.text for a in bads if a.status_code != 400]
        assert all(a.json()["error"]["type"] == "invalid_request_error" for a in bads)
        assert bads[3].json()["error"]["code"] == bads[-1].json()["error"]["code"] == "context_length_exceeded"
        stop4 = client.chat.completions.create(model="policy", messages=msgs, max_tokens=12, temperature=0,
                                               stop=["zq1", "zq2", "zq3", "zq4"])  # 4 stop strings work
        assert stop4.choices[0].message.content == full.choices[0].message.content
        # A request's own seed makes its sampled answer reproducible.
        seeded = [client.chat.completions.create(model="policy", messages=msgs, max_tokens=8, temperature=1.0,
                                                 seed=7).choices[0].message.content for _ in range(2)]
        assert seeded[0] == seeded[1]
        # A body larger than any request whose prompt fits: a 413 from its declared size, unread.
        huge = httpx.post(url, timeout=60, json={"model": "policy", "messages": [
            {"role": "user", "content": "aspirin " * 100_000}]})
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large", huge.text
        # Issue #25: the engine's logging set-up must leave Serve's request log working (see test_serve_e2e.py).
        wait_for(lambda: "CALL generate OK" in serve_replica_log(app.name, "model-policy", earlier), 10,
                 "the policy replica's request log lines in its Serve log file")
