"""The embedded default OpenAI-compatible endpoint: a Serve app with the light engine on 127.0.0.1.

Used when an `EndpointConfig` has `base_url` None (synth teacher, bench judge): the stage opens it,
calls it with the ordinary OpenAI client, and it is torn down on exit. If Serve already runs on the
cluster, its proxy is reused and this app gets its own name and route prefix.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig


@contextlib.contextmanager
def local_openai_server(cfg: "PipelineConfig", models: dict[str, str]) -> Iterator[str]:
    """Serve `{served_name: model_ref}` (refs resolved with `resolve_model`); yields the base URL.

    One small transformers replica per model (0.25 CPU, no autoscaling, no auth), e.g.
    `with local_openai_server(cfg, {"tiny": "tiny"}) as url: ...` -> "http://127.0.0.1:PORT/libra-local-ab12cd34/v1".
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
