"""Every YAML under cluster/ and serve/ is validated against a real schema:
- Ray cluster launcher YAMLs against `ray/autoscaler/ray-schema.json` shipped in the ray package (and
  Ray's own `prepare_config` + `validate_config`, what `ray up` runs);
- KubeRay manifests against the vendored ray.io/v1 schema (cluster/schemas/kuberay-v1.schema.json);
- Serve configs (serve/*.yaml and RayService.serveConfigV2) against Serve's `ServeDeploySchema`, with
  their import paths resolved.
Negative cases prove each validator actually rejects bad input.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

# Env var names that hold credentials: OPENAI_API_KEY, LIBRA_SERVE_KEYS, HF_TOKEN, DB_PASSWORD, ...
SECRET_NAME = re.compile(r"(^|_)(KEYS?|TOKEN|SECRET|PASSWORD)(_|$)")
ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY_SCHEMA = CLUSTER / "schemas" / "kuberay-v1.schema.json"


def _yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _launcher_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*.yaml") if any("provider" in d for d in _yaml_docs(p)))


def _kuberay_docs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(CLUSTER.rglob("*.yaml")):
        for i, doc in enumerate(_yaml_docs(path)):
            if str(doc.get("apiVersion", "")).startswith("ray.io/"):
                out.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return out


def test_every_cluster_yaml_is_covered():
    """No YAML under cluster/ escapes validation."""
    launchers = {str(p) for p in _launcher_files()}
    kuberay = {name.split("#")[0] for name, _ in _kuberay_docs()}
    for path in CLUSTER.rglob("*.yaml"):
        assert str(path) in launchers or str(path.relative_to(ROOT)) in kuberay, f"{path} is not validated"
    assert launchers and len(kuberay) >= 3


# --- Ray cluster launcher ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", _launcher_files(), ids=lambda p: p.name)
def test_launcher_yaml_matches_ray_schema(path, ray_schema):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, ray_schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` does, offline
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert any(t.get("resources", {}).get("GPU", 0) > 0 for t in workers), "no GPU worker group"
    assert all(t.get("max_workers", 0) > t.get("min_workers", 0) for t in workers), "worker groups must autoscale"


def test_launcher_schema_rejects_bad_config(ray_schema):
    config = yaml.safe_load((CLUSTER / "launcher-aws-gpu.yaml").read_text())
    bad = copy.deepcopy(config)
    bad["max_worker"] = 3  # misspelled key
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, ray_schema)
    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_8x_a100"]["resources"]["GPU"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, ray_schema)


# --- KubeRay -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kuberay_schema() -> dict:
    return json.loads(KUBERAY_SCHEMA.read_text())


def _validator(schema: dict, kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**schema, "$ref": f"#/$defs/{kind}"})


def _errors(schema: dict, doc: dict) -> list[str]:
    v = _validator(schema, doc.get("kind", "?"))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in v.iter_errors(doc)]


@pytest.mark.parametrize("name,doc", _kuberay_docs(), ids=[n for n, _ in _kuberay_docs()])
def test_kuberay_manifest_matches_crd_schema(name, doc, kuberay_schema):
    assert doc["kind"] in ("RayCluster", "RayJob", "RayService")
    assert _errors(kuberay_schema, doc) == []
    jsonschema.Draft202012Validator(kuberay_schema).validate(doc)  # the oneOf over all three kinds


def test_kuberay_schema_rejects_common_mistakes(kuberay_schema):
    doc = next(d for _, d in _kuberay_docs() if d["kind"] == "RayCluster")
    bad = copy.deepcopy(doc)
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string for KubeRay
    assert _errors(kuberay_schema, bad)
    bad = copy.deepcopy(doc)
    bad["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}  # typo
    assert _errors(kuberay_schema, bad)
    bad = copy.deepcopy(doc)
    del bad["spec"]["workerGroupSpecs"][0]["groupName"]
    assert _errors(kuberay_schema, bad)
    bad = copy.deepcopy(doc)
    bad["apiVersion"] = "ray.io/v1alpha1"
    assert _errors(kuberay_schema, bad)


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize("name,doc", _kuberay_docs(), ids=[n for n, _ in _kuberay_docs()])
def test_kuberay_secrets_only_by_reference(name, doc):
    spec = doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]
    for container in _containers(spec):
        for env in container.get("env", []):
            if SECRET_NAME.search(env["name"].upper()):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"], f"{name}: {env['name']}"


def test_rayjob_entrypoint_is_the_cli_on_a_valid_config():
    from libra_ray.cli import build_parser
    from libra_ray.config import load_config

    from ray.runtime_env import RuntimeEnv

    jobs = [d for _, d in _kuberay_docs() if d["kind"] == "RayJob"]
    assert jobs
    for job in jobs:
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[:3] == ["python", "-m", "libra_ray.cli"]
        args = build_parser().parse_args(argv[3:])
        load_config(ROOT / args.config, args.overrides)
        RuntimeEnv(**yaml.safe_load(job["spec"].get("runtimeEnvYAML") or "{}"))


# --- Serve configs -------------------------------------------------------------------------------


def _serve_configs() -> list[tuple[str, dict]]:
    out = [(str(p.relative_to(ROOT)), yaml.safe_load(p.read_text())) for p in sorted((ROOT / "serve").glob("*.yaml"))]
    for name, doc in _kuberay_docs():
        if doc["kind"] == "RayService":
            out.append((f"{name}:serveConfigV2", yaml.safe_load(doc["spec"]["serveConfigV2"])))
    return out


@pytest.mark.parametrize("name,config", _serve_configs(), ids=[n for n, _ in _serve_configs()])
def test_serve_config_matches_serve_schema_and_imports_resolve(name, config):
    from ray.serve.schema import ServeDeploySchema

    from libra_ray.config import load_config

    schema = ServeDeploySchema.model_validate(config)
    assert schema.applications
    for app in schema.applications:
        module, _, attr = app.import_path.replace(":", ".").rpartition(".")
        assert callable(getattr(importlib.import_module(module), attr)), app.import_path
        args = app.args or {}
        if "config" in args:  # the app's pipeline config must load, overrides included
            load_config(ROOT / args["config"], list(args.get("set", [])))


def test_serve_schema_rejects_bad_config():
    from ray.serve.schema import ServeDeploySchema

    from pydantic import ValidationError

    ServeDeploySchema.model_validate({"applications": [{"name": "x", "import_path": "a:b"}]})  # the right key passes
    with pytest.raises(ValidationError) as err:  # a misspelt key leaves the required import_path missing
        ServeDeploySchema.model_validate({"applications": [{"name": "x", "import_pth": "a:b"}]})
    assert [(e["loc"], e["type"]) for e in err.value.errors()] == [(("applications", 0, "import_path"), "missing")]
