"""The contract between a stage and whoever starts its endpoints (`libra_ray.endpoints.open_endpoint`).

`libra_ray.llm` is a pure client: it never starts a server. A stage that needs an endpoint (the synth
teacher, the bench judge, a hosted baseline) takes an `EndpointOpener` and calls it with the
`EndpointConfig`; the CLI passes `libra_ray.endpoints.open_endpoint`, tests may pass a stand-in.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig
    from libra_ray.llm.config import EndpointConfig

# `with open_endpoint(endpoint, cfg) as base_url:` ("http://host:port/v1", started if need be, stopped on exit).
EndpointOpener = Callable[["EndpointConfig", "PipelineConfig"], AbstractContextManager[str]]
