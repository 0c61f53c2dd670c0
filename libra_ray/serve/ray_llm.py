"""Serve's vLLM path on Ray Serve LLM (`ray.serve.llm`): one `LLMServer` deployment per vLLM model.

    client --> Serve proxy --> OpenAIIngress (ours: API keys, guard, OpenAI-format 400s)
                                   '-- handle --> RayLLMModelServer "policy" = ray.serve.llm LLMServer
                                                  (vLLM engine, placement group, autoscaling, health checks)

Ray's `LLMServer` owns the vLLM engine (start, placement, engine_kwargs, health, metrics). The subclass
adds the two methods our ingress calls on every model deployment (`generate`, `stream`, request dict in,
result dict out: the `ModelServer` interface), so the ingress is the same for both engines. The prompt
is rendered and tokenised with the shared `libra_ray.engines` code and sent to `LLMServer.completions`
as token ids, with the same sampling settings as our own vLLM engine (`vllm_engine.sampling_kwargs`):
greedy output is token-identical to the transformers engine's on the same weights.

Why not Ray's own `OpenAiIngress` (`build_openai_app`): it has no API keys or guard mode, and on bad
input it answers 500 for a non-string text content part and accepts `max_tokens: true` as 1 (measured
with Ray 2.60, see benchmarks/README.md); our ingress validates every request first.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ray.serve.llm import LLMConfig, LLMServer

from libra_ray.engines.base import Engine, prepare_tokenizer
from libra_ray.engines.env import log_handlers_kept, vllm_env
from libra_ray.engines.params import GenParams, RequestError, engine_error
from libra_ray.engines.vllm_engine import sampling_kwargs, vllm_engine_args
from libra_ray.serve.config import ServedModelConfig

log = logging.getLogger(__name__)


def engine_kwargs(spec: ServedModelConfig) -> dict:
    """vLLM engine arguments of one served model: the same settings and `engine_kwargs` merge as our own
    vLLM engine (`vllm_engine_args`); the model itself goes in `model_loading_config`."""
    args = vllm_engine_args(spec.path, engine_kwargs=spec.engine_kwargs, max_model_len=spec.max_model_len,
                            enforce_eager=spec.enforce_eager, dtype=spec.resolved_dtype, gpu_memory_utilization=0.5,
                            disable_log_stats=True)
    args.pop("model")
    return args


def llm_config(spec: ServedModelConfig) -> LLMConfig:
    """The `ray.serve.llm.LLMConfig` of one served model (path already resolved).

    On a CPU box (num_gpus 0) the engine gets one placement bundle of `num_cpus` CPUs and the replica
    actor none of its own (it shares the bundle); on GPUs Ray's defaults apply (one GPU per engine worker;
    tensor parallelism via the engine arguments), the replica actor gets `num_cpus`.
    """
    deployment: dict[str, Any] = {
        "autoscaling_config": spec.autoscaling.to_serve(),
        "max_ongoing_requests": spec.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": 0 if spec.num_gpus == 0 else spec.num_cpus},
    }
    extra: dict[str, Any] = {}
    if spec.num_gpus == 0:  # Ray Serve LLM asks for a GPU unless told the accelerator is the CPU
        extra = {"accelerator_config": {"kind": "cpu"}, "placement_group_config": {"bundles": [{"CPU": spec.num_cpus}]}}
    return LLMConfig(
        model_loading_config={"model_id": spec.name, "model_source": spec.path},
        engine_kwargs=engine_kwargs(spec),
        deployment_config=deployment,
        runtime_env={"env_vars": vllm_env(spec.kv_cache_gib)},
        log_engine_metrics=False,
        **extra,
    )


def build_deployment(spec: ServedModelConfig, deployment_name: str, access_log: bool = True):
    """The bound `RayLLMModelServer` deployment of one model (named like our other model deployments)."""
    from ray.serve.llm import build_llm_deployment

    return build_llm_deployment(
        llm_config(spec), deployment_cls=RayLLMModelServer, bind_kwargs={"spec": spec.model_dump()},
        override_serve_options={"name": deployment_name, "logging_config": {"enable_access_log": access_log}},
    )


# --------------------------------------------------------------------------- request/response conversion

def completion_request(model_id: str, prompt_ids: list[int], params: GenParams, stream: bool) -> dict:
    """The body of the `CompletionRequest` for one prepared request (prompt as token ids)."""
    body = {"model": model_id, "prompt": prompt_ids, "stream": stream, "return_token_ids": True,
            **sampling_kwargs(params)}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def error_dict(error: Any) -> dict:
    """An `ErrorResponse` of the engine as our per-request error value (4xx -> the client's mistake)."""
    info = getattr(error, "error", error)
    status = getattr(info, "code", None)
    message = getattr(info, "message", None) or str(info)
    if isinstance(status, int) and 400 <= status < 500:
        return RequestError(message, "invalid_value", getattr(info, "param", None)).to_dict()
    return engine_error(RuntimeError(message))


def result_from_response(resp: Any, prompt_tokens: int) -> dict:
    """Our result dict from a non-streaming `CompletionResponse`."""
    choice = resp.choices[0]
    token_ids = list(getattr(choice, "token_ids", None) or [])
    usage = getattr(resp, "usage", None)
    completion = usage.completion_tokens if usage else len(token_ids)
    return {"text": choice.text, "prompt_tokens": usage.prompt_tokens if usage else prompt_tokens,
            "completion_tokens": completion, "finish_reason": choice.finish_reason or "length", "token_ids": token_ids}


def sse_events(item: Any) -> list[Any]:
    """The events in one item of `LLMServer.completions(stream=True)`: SSE strings (batched in lists) are
    parsed to dicts, [DONE] dropped; an `ErrorResponse` object is passed through."""
    items = item if isinstance(item, list) else [item]
    out: list[Any] = []
    for it in items:
        if not isinstance(it, str):
            out.append(it)
            continue
        for line in it.split("\n"):
            line = line.strip()
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                out.append(json.loads(line[5:]))
    return out


class _Prompts(Engine):
    """The shared chat template, tokenisation and length checks, without a generation engine."""

    def __init__(self, model_path: str, max_model_len: int):
        from transformers import AutoTokenizer

        self.tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(model_path))
        self.max_model_len = max_model_len


class RayLLMModelServer(LLMServer):
    """Ray Serve LLM's `LLMServer` with the `ModelServer` interface (`generate`, `stream`) our ingress calls.

    Request errors come back as values (never raised), as from `ModelServer`.
    """

    async def __init__(self, llm_config: LLMConfig, *, spec: dict, **kwargs):
        self.spec = ServedModelConfig.model_validate(spec)
        self.prompts = _Prompts(self.spec.path, self.spec.max_model_len)
        with log_handlers_kept():  # the engine starts here: vLLM would close Serve's request-log handler
            await super().__init__(llm_config, **kwargs)
        from libra_ray.serve.engines import served_identity

        log.info("model %s ready; serving %s", self.spec.name, json.dumps(served_identity(self.spec)))

    async def _prepare(self, req: dict, stream: bool):
        """Everything that can reject one request (cheapest first, tokenising off the event loop), then the
        `CompletionRequest` for it."""
        from ray.serve.llm.openai_api_models import CompletionRequest

        ids, params = await asyncio.to_thread(self.prompts.prepare, req)
        return ids, CompletionRequest(**completion_request(self.spec.name, ids, params, stream))

    async def ping(self) -> bool:
        """Readiness: the replica answers (the ingress's `/health` asks every model)."""
        return True

    async def info(self) -> dict:
        """What the ingress checks before sending a request here (as `ModelServer.info`)."""
        return {"name": self.spec.name, "engine": "vllm", "max_model_len": self.prompts.max_model_len,
                "max_prompt_chars": self.prompts.max_prompt_chars()}

    async def generate(self, req: dict) -> dict:
        try:
            ids, request = await self._prepare(req, stream=False)
        except RequestError as err:
            return err.to_dict()
        try:
            async for resp in await self.completions(request):
                if hasattr(resp, "choices"):
                    return result_from_response(resp, len(ids))
                return error_dict(resp)
        except Exception as err:  # this request only: the engine keeps serving the others
            log.warning("vLLM request failed: %s", err)
            return engine_error(err)
        return engine_error(RuntimeError("the engine returned no response"))

    async def stream(self, req: dict):
        """Yield {"delta": str} as text arrives, then the final result dict (or one error dict first)."""
        try:
            ids, request = await self._prepare(req, stream=True)
        except RequestError as err:
            yield err.to_dict()
            return
        text, finish, usage, token_ids = "", None, None, []
        async for item in await self.completions(request):
            for event in sse_events(item):
                if not isinstance(event, dict):  # an ErrorResponse before the stream started
                    yield error_dict(event)
                    return
                if "error" in event:  # mid-stream: the ingress reports it in-band
                    raise RuntimeError(event["error"].get("message", "generation failed"))
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    if choice.get("text"):
                        text += choice["text"]
                        yield {"delta": choice["text"]}
                    token_ids += choice.get("token_ids") or []
                    finish = choice.get("finish_reason") or finish
        yield {"text": text, "prompt_tokens": (usage or {}).get("prompt_tokens", len(ids)),
               "completion_tokens": (usage or {}).get("completion_tokens", len(token_ids)),
               "finish_reason": finish or "length", "token_ids": token_ids}
