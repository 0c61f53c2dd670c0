"""The config documents itself: a description on every field, `libra-ray config --defaults` prints them
and loads back, the reference in jobs/README.md is generated from the models, every key the docs name exists,
and a renamed key is an error that names the new one."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from libra_ray._config_base import StrictModel
from libra_ray.config import ConfigError, PipelineConfig, documented_config, load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted(ROOT.glob("*/README.md")), *sorted(ROOT.glob("libra_ray/*/README.md"))]


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def reachable_models(root: type[BaseModel] = PipelineConfig) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    todo = [root]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.append(model)
        for field in model.model_fields.values():
            todo += _models_in(field.annotation)
    return seen


def test_every_config_field_has_a_description():
    models = reachable_models()
    assert len(models) >= 10  # the walk really descends (sections, endpoints, served models, ...)
    missing = [f"{m.__name__}.{name}" for m in models for name, f in m.model_fields.items()
               if not (f.description or "").strip()]
    assert not missing, f"config fields without a description: {missing}"


@pytest.mark.parametrize("source", [None, "jobs/quickstart.yaml", "jobs/full_scale.yaml"])
def test_documented_config_loads_back_to_the_same_config(source):
    cfg = load_config(ROOT / source if source else None, ["synth.gate_judge={model: judge}"])
    text = documented_config(cfg)
    assert yaml.safe_load(text) == cfg.model_dump(mode="json")
    # Every key carries its description right above it.
    for name, field in PipelineConfig.model_fields.items():
        assert f"# {field.description.split()[0]}" in text and f"\n{name}:" in f"\n{text}"


def test_config_defaults_cli_prints_descriptions(capsys):
    from libra_ray.cli import main

    assert main(["config", "--defaults"]) == 0
    out = capsys.readouterr().out
    assert "# Ray Train workers (data-parallel ranks)\n  replicas: 2" in out
    assert "(one of: paper, start, both, opening)" in out  # a Literal's choices are listed
    assert yaml.safe_load(out) == PipelineConfig().model_dump(mode="json")


def test_readme_config_reference_is_generated_from_the_models():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_reference.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    readme = (ROOT / "jobs" / "README.md").read_text()
    block = readme.split("<!-- config-reference:start -->")[1].split("<!-- config-reference:end -->")[0]
    assert documented_config(PipelineConfig()) in block
    for section in PipelineConfig.model_fields:  # every top-level section is in the reference
        assert re.search(rf"^{section}:", block, re.M), section


# Ray's own API in prose (ray.data.llm, ray.serve.llm, ray.init, ...) is not a config key.
RAY_API = {"data", "serve", "train", "init", "tune", "util", "job_submission", "shutdown", "remote", "get", "io"}
KEY = re.compile(r"(?<![\w./-])(ray|tiny_model|tiny_pretrained|synth|train|bench|serve)((?:\.(?:[A-Za-z_][\w]*|\*|\[\]|<[\w-]+>))+)")


def _field_exists(model: type[BaseModel], parts: list[str]) -> bool:
    if not parts:
        return True
    head, rest = parts[0], parts[1:]
    if head == "*" and not rest:  # tiny_pretrained.*: every key of the section
        return bool(model.model_fields)
    if head.startswith(("*", "<")):  # serve.*.num_gpus, serve.<model>.autoscaling
        return any(_field_exists(m, rest) for f in model.model_fields.values() for m in _models_in(f.annotation))
    field = model.model_fields.get(head)
    if field is None:
        return False
    if rest and rest[0] == "[]":  # bench.models[].engine_kwargs
        rest = rest[1:]
    if not rest:
        return True
    sub = _models_in(field.annotation)
    if not sub:  # a dict value (class_values.safe, runtime_env.env_vars) has free keys
        origin = typing.get_origin(field.annotation) or field.annotation
        return origin is dict or any(typing.get_origin(a) is dict for a in typing.get_args(field.annotation))
    return any(_field_exists(m, rest) for m in sub)


def doc_keys() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in KEY.finditer(text):
            section, tail = match.group(1), match.group(2)
            path = tail.replace("[]", ".[]").strip(".").split(".")
            path = [p for p in path if p]
            if section == "ray" and path[0] in RAY_API:
                continue
            if text.startswith(" was renamed to", match.end()):  # an old name, quoted as such
                continue
            if path[-1] in ("py", "yaml", "json", "md", "html", "parquet", "csv", "safetensors"):  # a file name
                continue
            found.append((doc.relative_to(ROOT).as_posix(), f"{section}{tail}"))
    return found


def test_every_config_key_the_docs_name_exists():
    keys = doc_keys()
    assert len(keys) > 30  # the scan finds the keys the docs talk about
    bad = []
    for doc, key in keys:
        section, *rest = key.replace("[]", ".[]").split(".")
        rest = [p for p in rest if p]
        model = PipelineConfig.model_fields[section].annotation
        if not _field_exists(model, rest):
            bad.append(f"{doc}: {key}")
    assert not bad, f"docs name config keys that do not exist: {sorted(set(bad))}"


def _renames() -> list[tuple[str, str, str]]:
    """(section path, old key, new key) for every `_renamed` entry reachable from PipelineConfig."""
    paths = {"synth": "synth", "train": "train", "train.lora": "train.lora", "bench": "bench",
             "serve": "serve", "serve.policy": "serve.policy", "serve.judge": "serve.judge"}
    out = []
    for path in paths:
        model: type[BaseModel] = PipelineConfig
        for part in path.split("."):
            model = _models_in(model.model_fields[part].annotation)[0]
        out += [(path, old, new) for old, new in model._renamed.items()]
    return out


def test_every_model_with_renames_is_covered():
    covered = {type(None)}
    for path, _, _ in _renames():
        model: type[BaseModel] = PipelineConfig
        for part in path.split("."):
            model = _models_in(model.model_fields[part].annotation)[0]
        covered.add(model)
    with_renames = {m for m in reachable_models() if m._renamed}
    assert with_renames <= covered, with_renames - covered
    assert len(_renames()) >= 15


@pytest.mark.parametrize("path,old,new", _renames(), ids=lambda v: str(v))
def test_a_renamed_key_names_the_new_one(path, old, new, tmp_path):
    assert _field_exists(PipelineConfig, [*path.split("."), *new.split(".")]), f"{path}.{new} does not exist"
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{path}.{old}=1"])
    assert str(err.value) == f"defaults + overrides: {path}.{old} was renamed to {path}.{new}"
    # The same from a YAML file, nested as a user writes it.
    doc: dict = {old: 1}
    for part in reversed(path.split(".")):
        doc = {part: doc}
    file = tmp_path / "old.yaml"
    file.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=re.escape(f"{path}.{old} was renamed to {path}.{new}")):
        load_config(file)


def test_a_renamed_key_in_a_users_yaml_is_one_line_and_exit_2(tmp_path, capsys):
    from libra_ray.cli import main

    file = tmp_path / "old.yaml"
    file.write_text("train:\n  num_workers: 4\n")
    assert main(["config", "--config", str(file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"libra-ray: {file}: train.num_workers was renamed to train.replicas"
    assert "\n" not in err


def test_renamed_table_lives_on_the_base_class():
    class Old(StrictModel):
        _renamed = {"size": "replicas"}
        replicas: int = 1

    assert Old(replicas=2).replicas == 2
    with pytest.raises(ValueError, match="size was renamed to replicas"):
        Old(size=2)


def test_rule_and_judge_ids_are_declared_once_and_accepted_everywhere():
    from libra_ray.bench.config import JUDGE_PROMPT_IDS, REFUSAL_JUDGE_IDS, BenchConfig
    from libra_ray.policy.judge_prompts import JUDGE_PROMPTS, refused_by_judge
    from libra_ray.policy.rules import RULES
    from libra_ray.serve.config import ServeConfig

    assert set(JUDGE_PROMPTS) == set(JUDGE_PROMPT_IDS)
    assert set(REFUSAL_JUDGE_IDS) < set(JUDGE_PROMPT_IDS)
    for rule in RULES:  # every rule the library implements is accepted where a rule is configured
        assert BenchConfig(rule=rule).rule == ServeConfig(guard_rule=rule).guard_rule == rule
    for judge in REFUSAL_JUDGE_IDS:
        assert ServeConfig(guard_prompt=judge).guard_prompt == judge
        assert refused_by_judge(judge, "no") is not None or refused_by_judge(judge, "compliance") is not None
    with pytest.raises(ConfigError, match="synthesis_route_v1"):
        load_config(None, ["bench.judge_prompts=[nope_v1]"])
    with pytest.raises(ConfigError, match="serve.guard_prompt"):
        load_config(None, ["serve.guard_prompt=utility_ref_v1"])  # scores quality, says nothing of refusal


def test_engine_kwargs_merge_over_ours_and_only_for_vllm():
    from libra_ray.engines.vllm_engine import vllm_engine_args

    args = vllm_engine_args("m", max_model_len=1024, enforce_eager=True, engine_kwargs={"max_model_len": 2048,
                                                                                      "max_num_seqs": 4})
    assert args == {"model": "m", "max_model_len": 2048, "enforce_eager": True, "max_num_seqs": 4}
    cfg = load_config(None, ["bench.models=[{name: a, engine: vllm, engine_kwargs: {max_num_seqs: 4}}]",
                             "serve.policy.engine=vllm", "serve.policy.engine_kwargs={max_num_seqs: 8}"])
    assert cfg.bench.models[0].engine_kwargs == {"max_num_seqs": 4}
    assert cfg.serve.policy.engine_kwargs == {"max_num_seqs": 8}
    with pytest.raises(ConfigError, match="engine 'transformers' takes none"):
        load_config(None, ["bench.models=[{name: a, engine: transformers, engine_kwargs: {x: 1}}]"])
    with pytest.raises(ConfigError, match="engine 'transformers' takes none"):
        load_config(None, ["serve.policy.engine_kwargs={max_num_seqs: 8}"])
    with pytest.raises(ConfigError, match="set path instead"):
        load_config(None, ["bench.models=[{name: a, engine_kwargs: {model: other}}]"])


def test_engine_kwargs_are_part_of_the_generation_key(monkeypatch):
    from libra_ray.bench import fingerprint

    monkeypatch.setattr(fingerprint, "model_identity", lambda cfg, model: {"ref": model.path})
    plain = load_config(None, ["bench.models=[{name: a}]"])
    tuned = load_config(None, ["bench.models=[{name: a, engine_kwargs: {max_num_seqs: 4}}]"])
    fp_plain = fingerprint.generation_fingerprint(plain, plain.bench.models[0])
    fp_tuned = fingerprint.generation_fingerprint(tuned, tuned.bench.models[0])
    assert "engine_kwargs" not in fp_plain["settings"]  # keys made before engine_kwargs existed stay valid
    assert fp_plain["hash"] != fp_tuned["hash"]
