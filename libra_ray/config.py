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

    address: str | None = Field(default=None, description="Ray address (ray://HOST:10001, auto, ...); null = "
                                "RAY_ADDRESS if set, else a local embedded cluster")
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of the local cluster (local cluster only; "
                                 "null = all)")
    num_gpus: int | None = Field(default=None, ge=0, description="GPUs of the local cluster (local cluster only; "
                                 "null = all)")
    namespace: str = Field(default="libra_ray", description="Ray namespace of the run's actors and Serve app")
    include_dashboard: bool = Field(default=False, description="start the dashboard with the local cluster")
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="extra Ray runtime_env for every task "
                                        "(env vars by name only: secrets stay in the environment)")


class PipelineConfig(StrictModel):
    """The whole run. Stage outputs live under `{storage}/{name}/` (a local path or a pyarrow URI)."""

    name: str = Field(default="quickstart", description="run name: outputs go to {storage}/{name}/")
    storage: str = Field(default="./runs", description="where runs are written: a local path or a pyarrow URI "
                         "(s3://, gs://, ...) that every node can reach")
    cache_dir: str = Field(default="./.cache/libra_ray", description="built artefacts that are not run outputs "
                           "(tiny models, DeepSpeed extension cache, call caches)")
    ray: RayConfig = Field(default_factory=RayConfig, description="how to reach Ray")
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig, description="the random tiny model ('tiny')")
    tiny_pretrained: PretrainedTinyConfig = Field(default_factory=PretrainedTinyConfig,
                                                  description="the pretrained tiny base model ('tiny-pretrained')")
    synth: SynthConfig = Field(default_factory=SynthConfig, description="stage 1: synthesis of preference triplets")
    train: TrainConfig = Field(default_factory=TrainConfig, description="stage 2: SFT + DPO on Ray Train")
    bench: BenchConfig = Field(default_factory=BenchConfig, description="stage 3: generation and refusal scoring")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="stage 4: the OpenAI-compatible Serve app")

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
    renamed = [item for item in err.errors() if item["type"] == "renamed_key"]
    if renamed:  # an old key: one line that names the new one (other problems show once it is fixed)
        def path(item, key):
            return ".".join([*(str(p) for p in item["loc"]), key])
        return f"{source}: " + "; ".join(f"{path(i, i['ctx']['old'])} was renamed to {path(i, i['ctx']['new'])}"
                                         for i in renamed)
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


def _choices(annotation: Any) -> tuple[str, ...]:
    """The allowed values of a Literal field (also inside list[...] or Optional[...]), else ()."""
    from typing import Literal, get_args, get_origin

    if get_origin(annotation) is Literal:
        return tuple(str(a) for a in get_args(annotation))
    return tuple(c for arg in get_args(annotation) for c in _choices(arg))


def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return text[:-4].rstrip() if text.endswith("\n...") else text


def documented_config(cfg: StrictModel, indent: int = 0, width: int = 100) -> str:
    """`cfg` as YAML with each key's description (and choices) as a comment above it: what
    `libra-ray config` prints and what the README's config reference is generated from. It loads back
    to the same config."""
    import textwrap

    pad, lines = " " * indent, []
    values = cfg.model_dump(mode="json")
    for name, field in type(cfg).model_fields.items():
        doc = field.description or ""
        choices = _choices(field.annotation)
        if choices and not all(c in doc for c in choices):
            doc += f" (one of: {', '.join(choices)})"
        lines += [f"{pad}# {line}" for line in textwrap.wrap(doc, max(40, width - indent - 2), break_on_hyphens=False)]
        value = getattr(cfg, name)
        if isinstance(value, StrictModel):
            lines += [f"{pad}{name}:", documented_config(value, indent + 2, width)]
        elif isinstance(value, list) and value and all(isinstance(v, StrictModel) for v in value):
            lines.append(f"{pad}{name}:")
            for item in value:
                lines += [f"{pad}  -", documented_config(item, indent + 4, width)]
        else:
            lines.append(f"{pad}{name}: {_yaml_scalar(values[name])}")
    return "\n".join(lines)
