"""The foundations every config section and stage imports (kept apart from `libra_ray.config`, which
composes the stage configs, so that no stage imports `libra_ray.config` at runtime): the base class of
every config section, the one error a user can fix, and URI joining."""

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError


def _deep_merge(base: dict, over: dict) -> dict:
    """`over` onto `base`, recursively where both hold a mapping; anything else (a list included) replaces."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class StrictModel(BaseModel):
    """Unknown keys are errors (typos never pass silently); assignments are validated too.

    One merge rule for every section, whatever the nesting: a mapping given for a sub-section is merged
    onto that field's default (its default factory's explicitly set values, e.g. `serve.policy`'s
    `path: trained`), so an override changes the keys it names and nothing else. A list (e.g.
    `bench.models`) is one value: given, it replaces the default list whole; each item given as a mapping
    takes its class defaults for the keys it omits.

    A section that renames a key lists it in `_renamed` (old key -> new key, relative to the section,
    dots for a subsection, e.g. {"ingress_replicas": "ingress.replicas"}): a config that still uses the
    old key fails with one line naming the new one instead of a bare "unknown key".
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    _renamed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _merge_onto_field_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = None
        for name, field in cls.model_fields.items():
            value = data.get(name)
            if not isinstance(value, dict) or (field.default_factory is None and not isinstance(field.default, BaseModel)):
                continue
            default = field.get_default(call_default_factory=True)
            if not isinstance(default, BaseModel):
                continue  # e.g. a dict field: the given mapping is the value
            # The default's explicitly set values (recursively): what its factory chose over class defaults.
            preset = default.model_dump(exclude_unset=True, by_alias=True)
            if preset:
                merged = dict(data) if merged is None else merged
                merged[name] = _deep_merge(preset, value)
        return data if merged is None else merged

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
