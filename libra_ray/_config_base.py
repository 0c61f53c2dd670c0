"""The foundations every config section and stage imports (kept apart from `libra_ray.config`, which
composes the stage configs, so that no stage imports `libra_ray.config` at runtime): the base class of
every config section, the one error a user can fix, and URI joining."""

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError


class StrictModel(BaseModel):
    """Unknown keys are errors (typos never pass silently); assignments are validated too.

    A section that renames a key lists it in `_renamed` (old key -> new key, relative to the section,
    dots for a subsection, e.g. {"ingress_replicas": "ingress.replicas"}): a config that still uses the
    old key fails with one line naming the new one instead of a bare "unknown key".
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    _renamed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls._renamed:
            for old, new in cls._renamed.items():
                if old in data:
                    # The loader adds the section's path (see config._format_validation_error).
                    raise PydanticCustomError("renamed_key", "{old} was renamed to {new}", {"old": old, "new": new})
        return data


def folder_name(name: str) -> str:
    """A config name that becomes a folder under the run's storage: no path tricks."""
    if not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise ValueError("must be a non-empty name without slashes, spaces or a leading dot (it names a folder)")
    return name


class ConfigError(ValueError):
    """A config problem the user can fix: the message names the key and the reason."""


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI such as s3://bucket/prefix."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out
