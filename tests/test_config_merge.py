"""One merge rule for every config section: an override changes the keys it names and nothing else.

Walks the whole schema of `PipelineConfig`: for every leaf key, an override to a valid different value
(generated from the field's type and constraints) must change that key and leave every other resolved
value as it was, both over the defaults and over jobs/quickstart.yaml. The same holds for the Serve
YAMLs' `set:` lists (`libra_ray.deploy`) and for `submit` (it forwards `--set` to the job's `load_config`).
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path

import annotated_types
import pytest
import yaml
from pydantic import BaseModel

from libra_ray.config import ConfigError, PipelineConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "jobs" / "quickstart.yaml"

# Leaves that are not walked one by one, and why.
SKIPPED = {
    # A list is one value (documented): given, it replaces the default list whole. Its items' keys cannot be
    # named by an override (`bench.models.0.path` is not a key), so "every other key" has no meaning inside it.
    "bench.models",
    "synth.prompt_version",  # one allowed value (Literal["v1"]): there is no different valid value
    "train.num_gpus",  # > 0 needs train.use_gpu: true (a cross-field rule): no single-key override is valid
}

# Values that need knowledge of other keys (cross-field rules) or of valid names; everything else is generated.
ALTERNATIVES: dict[str, list] = {
    "serve.policy.engine_kwargs": [],  # engine transformers takes none: checked with engine=vllm below
    "serve.judge.engine_kwargs": [],
    "train.loss_type": [["sigmoid", "sft"], ["sigmoid"]],
    "train.deepspeed": ["zero2"],
    "bench.class_values": [{"a": "legitimate"}],
    "bench.detector": ["local", "cascade"],
}
# Keys valid only together with another: set with that companion override; only the two may change.
COMPANIONS: dict[str, str] = {
    "train.pure_bf16": "train.precision=bf16",
}


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict) and obj:
        out = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def _unwrap(annotation):
    """(base annotation, optional?) with Optional/Union-with-None removed."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return annotation, False


def _bounds(field) -> tuple[float | None, float | None, bool, bool]:
    lo = hi = None
    lo_open = hi_open = False
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, annotated_types.Le):
            hi = m.le
        elif isinstance(m, annotated_types.Lt):
            hi, hi_open = m.lt, True
    return lo, hi, lo_open, hi_open


def _within(x, bounds) -> bool:
    lo, hi, lo_open, hi_open = bounds
    return ((lo is None or (x > lo if lo_open else x >= lo)) and (hi is None or (x < hi if hi_open else x <= hi)))


def _candidates(field, value) -> list:
    """Valid-looking values different from `value`, from the field's type and constraints."""
    base, optional = _unwrap(field.annotation)
    origin, args = typing.get_origin(base), typing.get_args(base)
    out: list = []
    if origin is typing.Literal:
        out = [c for c in args if c != value]
    elif base is bool:
        out = [not value]
    elif base in (int, float):
        bounds = _bounds(field)
        lo, hi = bounds[0], bounds[1]
        pool = [1, 2, 3, 64, 0, 100, 10**6] if value is None else [value + 1, value - 1, value * 2, value + 64]
        if base is float:
            pool = [x * 1.0 for x in pool] + ([value / 2, value + 0.5, value + 0.01] if value is not None else [0.5])
            if lo is not None and hi is not None:
                pool += [(lo + hi) / 2]
        if lo is not None:
            pool += [lo, lo + 1]
        if hi is not None:
            pool += [hi, hi - 1]
        out = [x for x in pool if x != value and _within(x, bounds)]
    elif isinstance(base, type) and issubclass(base, BaseModel):
        out = [{}] if value is None else []
    elif base is str or (origin in (typing.Union, types.UnionType) and str in args):
        out = ["alt"] if value is None else [f"{value}x", "/alt", "alt"]
    elif origin is dict:
        out = [{"alt": 1}, {"alt": "x"}]
    elif origin is list:
        (item,) = args
        if typing.get_origin(item) is typing.Literal:
            out = [[c] for c in typing.get_args(item) if [c] != value]
        elif item is str:
            out = [value[:1] if value and len(value) > 1 else [*(value or []), "alt"]]
    if optional and value is not None:
        out.append(None)
    return [c for c in out if c != value]


def _leaves(model: BaseModel, prefix: str = ""):
    """(dotted key, field, current value) for every leaf of a config instance."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from _leaves(value, key + ".")
        else:
            yield key, field, value


def _check_every_leaf(path: Path | None) -> list[str]:
    base_cfg = load_config(path)
    before = _flatten(base_cfg.model_dump(mode="json"))
    problems, walked = [], 0
    for key, field, value in _leaves(base_cfg):
        if key in SKIPPED:
            continue
        if key in ALTERNATIVES:
            cands = [c for c in ALTERNATIVES[key] if c != value]
            if not ALTERNATIVES[key]:
                continue
        else:
            cands = _candidates(field, value)
        for cand in cands:
            try:
                extra = [COMPANIONS[key]] if key in COMPANIONS else []
                cfg = load_config(path, [*extra, f"{key}={json.dumps(cand)}"])
            except ConfigError:
                continue
            break
        else:
            problems.append(f"{key}: no valid alternative value among {cands!r} (add one to ALTERNATIVES)")
            continue
        walked += 1
        after = _flatten(cfg.model_dump(mode="json"))
        changed = sorted(k for k in set(before) | set(after)
                         if before.get(k, "<absent>") != after.get(k, "<absent>") and k != key
                         and k != COMPANIONS.get(key, "=").split("=")[0]
                         and not k.startswith(key + "."))
        if changed:
            problems.append(f"--set {key}={json.dumps(cand)} also changed {', '.join(changed)}")
        if after.get(key, _flatten(cand, key + ".")) == before.get(key):
            problems.append(f"--set {key}={json.dumps(cand)} did not change {key}")
    assert walked > 150, f"only {walked} leaves walked: the schema walk is broken"
    return problems


@pytest.mark.parametrize("path", [None, QUICKSTART], ids=["defaults", "quickstart"])
def test_every_leaf_override_changes_only_that_key(path):
    problems = _check_every_leaf(path)
    assert not problems, "\n".join(problems)


def test_engine_kwargs_override_changes_only_that_key():
    base = load_config(QUICKSTART, ["serve.policy.engine=vllm"])
    cfg = load_config(QUICKSTART, ["serve.policy.engine=vllm", "serve.policy.engine_kwargs={max_num_seqs: 4}"])
    before, after = _flatten(base.model_dump(mode="json")), _flatten(cfg.model_dump(mode="json"))
    assert {k for k in after if before.get(k) != after.get(k)} == {"serve.policy.engine_kwargs.max_num_seqs"}


def test_partial_section_keeps_the_default_factory_values():
    """The issue's case: any serve.policy.* key without path used to serve the random tiny model."""
    cfg = load_config(QUICKSTART, ["serve.policy.num_cpus=1"])
    assert cfg.serve.policy.path == "trained" and cfg.serve.policy.name == "policy"
    cfg = load_config(None, ["bench.judge.model=x"])
    assert (cfg.bench.judge.temperature, cfg.bench.judge.max_tokens) == (0.0, 16)
    # In YAML too, at any depth.
    assert PipelineConfig.model_validate({"serve": {"policy": {"autoscaling": {"max_replicas": 4}}}}).serve.policy.path \
        == "trained"


def test_a_list_is_replaced_whole():
    cfg = load_config(QUICKSTART, ['bench.models=[{name: only, engine: transformers, path: tiny}]'])
    assert [m.name for m in cfg.bench.models] == ["only"]


def _serve_yaml_config(name: str):
    spec = yaml.safe_load((ROOT / "serve" / name).read_text())
    args = spec["applications"][0]["args"]
    return load_config(ROOT / args["config"], args.get("set") or []), args.get("set") or []


def test_production_serve_yaml_serves_the_trained_model():
    cfg, overrides = _serve_yaml_config("libra_ray.yaml")
    assert cfg.serve.policy.path == "trained", overrides
    assert cfg.serve.policy.engine == "vllm" and cfg.serve.policy.num_cpus == 1
    # Only the keys its `set:` names differ from the config file it starts from.
    before = _flatten(load_config(ROOT / "jobs" / "quickstart.yaml").model_dump(mode="json"))
    after = _flatten(cfg.model_dump(mode="json"))
    named = {o.split("=", 1)[0] for o in overrides}
    assert {k for k in after if before.get(k) != after.get(k)} <= named


def test_submit_forwards_overrides_to_the_same_loader():
    from libra_ray.submit import build_entrypoint

    entry = build_entrypoint("serve", "jobs/quickstart.yaml", ["serve.policy.num_cpus=1"])
    assert "--set serve.policy.num_cpus=1" in entry and "--config" in entry
