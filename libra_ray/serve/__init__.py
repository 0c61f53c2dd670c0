"""Stage 4, serving: the policy and the judge on Ray Serve behind one OpenAI-compatible API.

- `run(cfg)`: start the app from `cfg.serve` and block until Ctrl-C (the CLI's `libra-ray serve`).
- `start_app(cfg) -> RunningApp` / `stop_app(app)`: start and stop it programmatically;
  `serving(cfg)`: the same as a context manager yielding the `RunningApp` (`.base_url`, `.name`).
- The Serve YAMLs under `serve/` import `libra_ray.deploy:app_builder` (it loads the pipeline config);
  the embedded default endpoint other stages start is `libra_ray.endpoints.local_openai_server`.

Heavy imports stay inside functions: `libra_ray.config` imports this package for its config.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libra_ray.config import PipelineConfig


def check_models(cfg: "PipelineConfig") -> None:
    """The served models' paths exist and configured API keys are found (a ConfigError naming the key
    otherwise, e.g. an empty `serve.api_keys_env` variable): checked before Ray starts."""
    from libra_ray.serve.app import load_key_hashes
    from libra_ray.tiny import check_model_ref

    for role in ("policy", "judge"):
        check_model_ref(getattr(cfg.serve, role).path, cfg, key=f"serve.{role}.path")
    load_key_hashes(cfg.serve)


def start_app(cfg: "PipelineConfig"):
    """Deploy the policy+judge app on the current Ray cluster and wait until it answers on HTTP."""
    from libra_ray.serve.app import served_models
    from libra_ray.serve.server import start_app as _start

    return _start(served_models(cfg), cfg.serve)


def stop_app(app) -> None:
    """Delete the app; shut Serve down too if `start_app` started it and nothing else runs on it."""
    from libra_ray.serve.server import stop_app as _stop

    _stop(app)


@contextlib.contextmanager
def serving(cfg: "PipelineConfig"):
    """Run the policy+judge app on the current Ray cluster; yields a `RunningApp` (has `.base_url`)."""
    app = start_app(cfg)
    try:
        yield app
    finally:
        stop_app(app)


def run(cfg: "PipelineConfig") -> dict:
    """Serve until interrupted (Ctrl-C / SIGTERM), then delete the app and shut Serve down if we started it."""
    import signal

    def _term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _term)
    try:
        with serving(cfg) as app:
            print(f"[libra-ray] serving {cfg.serve.policy.name} and {cfg.serve.judge.name} at {app.base_url} "
                  "(OpenAI-compatible; Ctrl-C to stop)", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                print("[libra-ray] shutting down Serve", flush=True)
        return {"base_url": app.base_url, "status": "stopped"}
    finally:
        signal.signal(signal.SIGTERM, previous)

