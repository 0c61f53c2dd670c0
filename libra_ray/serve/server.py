"""Start, wait for and stop the Serve app on the current Ray cluster (the caller owns `ray.init`)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from libra_ray.runtime import free_port
from libra_ray.serve.config import ServeConfig, ServedModelConfig

log = logging.getLogger(__name__)




@dataclass
class RunningApp:
    name: str
    base_url: str               # "http://127.0.0.1:PORT[/prefix]/v1"
    started_serve: bool         # this process started Serve (and so shuts it down)

    @property
    def root_url(self) -> str:
        return self.base_url[: -len("/v1")]


def ensure_serve(host: str, port: int) -> tuple[str, int, bool]:
    """Start Serve with HTTP on host:port (0 = free port) or reuse the running one. -> (host, port, started)."""
    from ray import serve
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    started = client is None
    if started:
        serve.start(http_options={"host": host, "port": port or free_port(host)})
        client = _get_global_client()
    http = client.http_config
    if not started and port and http.port != port:
        log.warning("Serve already runs on this cluster with HTTP port %s; reusing it (requested %s)", http.port, port)
    return http.host, http.port, started


def wait_healthy(root_url: str, timeout_s: float = 180.0, api_key: str | None = None) -> None:
    """Poll `<root>/health` until the proxy routes to a live ingress (route tables propagate async)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{root_url}/health", timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as err:
            last = type(err).__name__
        time.sleep(0.3)
    raise TimeoutError(f"Serve app at {root_url} not healthy after {timeout_s:.0f} s ({last})")


def start_app(models: list[ServedModelConfig], cfg: ServeConfig, name: str | None = None,
              route_prefix: str | None = None, timeout_s: float = 300.0) -> RunningApp:
    """Deploy the app (engines + ingress) and wait until it answers on HTTP."""
    from ray import serve

    from libra_ray.serve.app import build_app

    app = build_app(models, cfg)
    host, port, started = ensure_serve(cfg.host, cfg.port)
    name = name or cfg.app_name
    prefix = route_prefix or cfg.route_prefix
    try:
        serve.run(app, name=name, route_prefix=prefix, blocking=False)
        connect = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        root = f"http://{connect}:{port}{prefix.rstrip('/')}"
        wait_healthy(root, timeout_s)
    except BaseException:
        _teardown(name, started)
        raise
    log.info("Serve app %s up at %s/v1 (models: %s)", name, root, ", ".join(m.name for m in models))
    return RunningApp(name=name, base_url=f"{root}/v1", started_serve=started)


def stop_app(app: RunningApp) -> None:
    _teardown(app.name, app.started_serve)


def _teardown(name: str, started_serve: bool) -> None:
    from ray import serve

    try:
        serve.delete(name)
    except Exception:  # already gone
        log.debug("serve.delete(%s) failed", name, exc_info=True)
    if started_serve:
        # Only when no other app (e.g. another stage's) still runs on the Serve we started.
        try:
            remaining = [a for a in serve.status().applications if a != name]
        except Exception:
            remaining = []
        if not remaining:
            serve.shutdown()


@contextlib.contextmanager
def running_app(models: list[ServedModelConfig], cfg: ServeConfig, **kwargs) -> Iterator[RunningApp]:
    app = start_app(models, cfg, **kwargs)
    try:
        yield app
    finally:
        stop_app(app)


def replica_counts(app_name: str) -> dict[str, int]:
    """RUNNING replicas per deployment of an app (for autoscaling checks and benchmarks)."""
    from ray import serve

    status = serve.status().applications.get(app_name)
    if status is None:
        return {}
    return {name: d.replica_states.get("RUNNING", 0) for name, d in status.deployments.items()}
