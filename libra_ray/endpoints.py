"""Starting local OpenAI-compatible endpoints: the one module that does it, above serve and synth.

A stage reaches a teacher, judge or hosted baseline through its `EndpointConfig`. With `base_url`
set nothing is started. With `base_url` None the embedded default is started here, on 127.0.0.1, and
torn down on exit: a small Serve app with the light engine hosting `endpoint.model` (e.g. the tiny
model), or, for `model: offline-paraphraser`, the offline stand-in teacher
(`libra_ray.synth.paraphraser`, templates, no LM) on the local test server. Stages that need one
(`synth.run`, `bench.run`) take `open_endpoint` as an argument (the CLI passes this one), so that
`libra_ray.llm` stays a pure client and no stage imports this module.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig
    from libra_ray.llm.config import EndpointConfig


@contextlib.contextmanager
def open_endpoint(endpoint: "EndpointConfig", cfg: "PipelineConfig") -> Iterator[str]:
    """Yield the endpoint's base URL ("http://host:port/v1") (a `libra_ray.llm.endpoint.EndpointOpener`).

    `endpoint.base_url` set: yielded as is (nothing started). None: the embedded default, a local
    OpenAI-compatible Ray Serve app on 127.0.0.1 hosting `endpoint.model` (e.g. the tiny model),
    started on the current Ray cluster and torn down on exit; or, for `model: offline-paraphraser`,
    the offline stand-in teacher (libra_ray.synth.paraphraser) on 127.0.0.1.
    """
    if endpoint.base_url:
        yield endpoint.base_url.rstrip("/")
        return
    from libra_ray.synth.paraphraser import OFFLINE_PARAPHRASER

    if endpoint.model == OFFLINE_PARAPHRASER:  # the offline stand-in teacher (templates, no LM), real HTTP
        with offline_teacher_server(cfg) as base_url:
            yield base_url.rstrip("/")
        return
    try:
        import libra_ray.serve.server  # noqa: F401 - lazy: Serve is heavy
    except ImportError as err:
        raise RuntimeError("endpoint.base_url is not set and the embedded local server "
                           f"(Ray Serve, libra_ray.serve) is unavailable: {err}") from err
    with local_openai_server(cfg, {endpoint.model: endpoint.model}) as base_url:
        yield base_url.rstrip("/")


@contextlib.contextmanager
def offline_teacher_server(cfg: "PipelineConfig") -> Iterator[str]:
    """Start the offline paraphraser on 127.0.0.1 for this run; yields its base URL ("http://127.0.0.1:PORT/v1")."""
    from libra_ray.llm.testserver import TestOpenAIServer
    from libra_ray.synth.paraphraser import responder

    with TestOpenAIServer(responder=responder(cfg.synth.seed, cfg.synth.seeds_csv), keep_log=False) as server:
        yield server.base_url


@contextlib.contextmanager
def local_openai_server(cfg: "PipelineConfig", models: dict[str, str]) -> Iterator[str]:
    """Serve `{served_name: model_ref}` (refs resolved with `resolve_model`); yields the base URL.

    One small transformers replica per model (0.25 CPU, no autoscaling, no auth), e.g.
    `with local_openai_server(cfg, {"tiny": "tiny"}) as url: ...` -> "http://127.0.0.1:PORT/libra-local-ab12cd34/v1".
    If Serve already runs on the cluster, its proxy is reused and this app gets its own name and route prefix.
    """
    from libra_ray.serve.config import AutoscalingConfig, IngressConfig
    from libra_ray.serve.server import running_app
    from libra_ray.tiny import resolve_model

    if not models:
        raise ValueError("local_openai_server needs at least one model")
    template = cfg.serve.judge
    served = [
        template.model_copy(update={
            "name": name, "path": resolve_model(ref, cfg, key=f"local endpoint model {name}"), "engine": "transformers", "num_cpus": 0.25,
            "autoscaling": AutoscalingConfig(min_replicas=1, max_replicas=1),
        })
        for name, ref in models.items()
    ]
    for m in served:  # validate names through the config model (clear error on a bad name)
        type(m).model_validate(m.model_dump())
    serve_cfg = cfg.serve.model_copy(update={
        "api_keys_env": None, "api_keys_file": None, "guard": "off", "port": 0, "host": "127.0.0.1",
        "ingress": IngressConfig(replicas=1, num_cpus=0.1), "access_log": False,
    })
    name = f"libra-local-{uuid.uuid4().hex[:8]}"
    with running_app(served, serve_cfg, name=name, route_prefix=f"/{name}") as app:
        yield app.base_url
