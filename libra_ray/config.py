"""Typed pipeline configuration, loaded from YAML with `--set key=value` overrides.

Each stage owns its config class in its own sub-package (`libra_ray/<stage>/config.py`, light
imports only: no Ray, no torch); this module composes them into `PipelineConfig`, loads YAML,
applies dotted overrides and turns validation failures into one `ConfigError` that names the key
and the reason, so a bad config fails before any Ray worker starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from libra_ray._config_base import ConfigError, StrictModel, folder_name, join_uri  # noqa: F401 - re-exported

from libra_ray.bench.config import BenchConfig
from libra_ray.serve.config import ServeConfig
from libra_ray.synth.config import SynthConfig
from libra_ray.tiny.config import PretrainedTinyConfig, TinyModelConfig
from libra_ray.train.config import TrainConfig


class RayConfig(StrictModel):
    """How to reach Ray. `address` None means: `RAY_ADDRESS` if set, else a local embedded cluster."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1, description="local cluster only")
    num_gpus: int | None = Field(default=None, ge=0, description="local cluster only")
    namespace: str = "libra_ray"
    include_dashboard: bool = False
    # Extra runtime_env for every task (env vars by name only; secrets stay in the environment).
    runtime_env: dict[str, Any] = Field(default_factory=dict)


class PipelineConfig(StrictModel):
    """The whole run. Stage outputs live under `{storage}/{name}/` (a local path or a pyarrow URI)."""

    name: str = "quickstart"
    storage: str = "./runs"
    # Where built artefacts that are not run outputs go (tiny model, DeepSpeed extension cache).
    cache_dir: str = "./.cache/libra_ray"
    ray: RayConfig = Field(default_factory=RayConfig)
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    tiny_pretrained: PretrainedTinyConfig = Field(default_factory=PretrainedTinyConfig,
                                                  description="the pretrained tiny base model ('tiny-pretrained')")
    synth: SynthConfig = Field(default_factory=SynthConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    _folder_name = field_validator("name")(folder_name)

    # Run layout: one place that says where each stage reads and writes.
    @property
    def run_dir(self) -> str:
        # Local paths are made absolute so Ray workers (other cwd) resolve them the same way.
        base = self.storage if "://" in self.storage else os.path.abspath(self.storage)
        return join_uri(base, self.name)

    @property
    def dataset_dir(self) -> str:
        return join_uri(self.run_dir, "dataset")

    @property
    def checkpoint_dir(self) -> str:
        return join_uri(self.run_dir, "checkpoints")

    @property
    def model_dir(self) -> str:
        return join_uri(self.run_dir, "model")

    @property
    def bench_dir(self) -> str:
        return join_uri(self.run_dir, "bench")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.beta=0.2` -> (["train", "beta"], 0.2). The value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.beta=0.2")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({err.problem})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `libra-ray config --defaults`)"
        got = item.get("input")
        shown = "" if item["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a `PipelineConfig` from YAML (or defaults when `path` is None) plus overrides."""
    source = "defaults"
    data: dict[str, Any] = {}
    if path is not None:
        source = str(path)
        file = Path(path)
        if file.is_dir():
            raise ConfigError(f"config file {source} is a directory, not a YAML file")
        if not file.is_file():
            raise ConfigError(f"config file {source} does not exist")
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {source} is not UTF-8 text (byte {err.start}: {err.reason})") from None
        except OSError as err:
            raise ConfigError(f"config file {source} cannot be read ({err.strerror})") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {source} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {source} must hold a mapping at the top level, not {type(loaded).__name__}")
        data = loaded
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides"
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
