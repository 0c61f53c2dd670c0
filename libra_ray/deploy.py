"""The Serve application from a pipeline config: the import path of `serve run` / `serve deploy` YAMLs and
KubeRay's RayService (`libra_ray.deploy:app_builder`).

It loads the pipeline YAML (`libra_ray.config`), so it sits above the config layer; the app itself is
`libra_ray.serve.app.build_app`.
"""

from __future__ import annotations

import os
from pathlib import Path

from libra_ray.config import load_config
from libra_ray.serve.app import build_app, served_models


def _project_path(path: str) -> str:
    """Relative paths resolve against the cwd, else the project root (the `serve deploy` worker's cwd differs)."""
    if os.path.isabs(path) or "://" in path or os.path.exists(path):
        return os.path.abspath(path) if "://" not in path else path
    root = Path(__file__).resolve().parents[1]
    return str(root / path)


def app_builder(args: dict | None = None):
    """Import path for `serve run` / `serve deploy` YAMLs: `libra_ray.deploy:app_builder`.

    args: `config` (a pipeline YAML, optional) and `set` (a list of KEY=VALUE overrides), e.g.
    `{"config": "jobs/quickstart.yaml", "set": ["serve.policy.path=tiny"]}`.
    """
    args = dict(args or {})
    config = args.pop("config", None)
    overrides = list(args.pop("set", []) or [])
    if args:
        raise ValueError(f"unknown app args {sorted(args)}; expected 'config' and 'set'")
    pcfg = load_config(_project_path(config) if config else None, overrides)
    pcfg = pcfg.model_copy(update={"cache_dir": _project_path(pcfg.cache_dir), "storage": _project_path(pcfg.storage)})
    return build_app(served_models(pcfg), pcfg.serve)
