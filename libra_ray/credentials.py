"""API keys by name: from the process environment, else from the job's private credentials package.

Configs only ever name a key (`api_key_env`); the value is looked up at call time, in the process
that makes the call. `libra-ray submit --env-from NAME` ships a value to a cluster as a tiny package
in the job's runtime_env `py_modules` rather than as an env var: Ray keeps a job's env_vars in the
job's info (shown by `ray job list` and the dashboard) and logs them in runtime_env_agent.log, while a
py_modules entry shows up only as a content-hash URI. Every process of the job (driver, tasks,
actors, on every node) can import the package, so a lookup works wherever the call happens.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path

CREDENTIALS_PACKAGE = "libra_ray_job_credentials"
SUFFIX = ".secret"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def get_credential(name: str | None) -> str | None:
    """The value of credential `name`: the environment wins, then the package shipped with the job."""
    if not name:
        return None
    return os.environ.get(name) or _shipped_credentials().get(name)


def has_credential(name: str) -> bool:
    return bool(get_credential(name))


@functools.cache
def _shipped_credentials() -> dict[str, str]:
    spec = importlib.util.find_spec(CREDENTIALS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return {}
    values = {}
    for folder in spec.submodule_search_locations:
        for path in Path(folder).glob(f"*{SUFFIX}"):
            values[path.name[: -len(SUFFIX)]] = path.read_text()
    return values


def write_credentials_package(parent: Path, values: dict[str, str]) -> Path:
    """Write `values` as the credentials package under `parent` (owner-only permissions)."""
    bad = [name for name in values if not _ENV_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"{', '.join(map(repr, bad))}: not an environment variable name")
    folder = Path(parent) / CREDENTIALS_PACKAGE
    folder.mkdir(mode=0o700, parents=True)
    (folder / "__init__.py").write_text('"""Shipped by `libra-ray submit --env-from`; read with '
                                        'libra_ray.credentials.get_credential."""\n')
    for name, value in values.items():
        path = folder / f"{name}{SUFFIX}"
        path.touch(mode=0o600)  # owner-only before the value is written
        path.write_text(value)
    return folder
