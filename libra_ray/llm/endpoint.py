"""Resolve an `EndpointConfig` to a live base URL: the configured one, or the embedded default."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig
    from libra_ray.llm.config import EndpointConfig


@contextlib.contextmanager
def open_endpoint(endpoint: "EndpointConfig", cfg: "PipelineConfig") -> Iterator[str]:
    """Yield the endpoint's base URL ("http://host:port/v1").

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
        from libra_ray.synth.paraphraser import offline_teacher_server

        with offline_teacher_server(cfg) as base_url:
            yield base_url.rstrip("/")
        return
    try:
        from libra_ray.serve.local import local_openai_server  # lazy: Serve is heavy
    except ImportError as err:
        raise RuntimeError("endpoint.base_url is not set and the embedded local server "
                           f"(libra_ray.serve.local) is unavailable: {err}") from err
    with local_openai_server(cfg, {endpoint.model: endpoint.model}) as base_url:
        yield base_url.rstrip("/")
