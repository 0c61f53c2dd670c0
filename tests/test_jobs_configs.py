"""jobs/: every pipeline config loads, runtime_env files are valid Ray runtime_envs without secrets,
every stage has a job entrypoint the CLI accepts, and the full-scale config fits the clusters in cluster/."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

# Env var names that hold credentials: OPENAI_API_KEY, LIBRA_SERVE_KEYS, HF_TOKEN, DB_PASSWORD, ...
SECRET_NAME = re.compile(r"(^|_)(KEYS?|TOKEN|SECRET|PASSWORD)(_|$)")
ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
CLUSTER = ROOT / "cluster"


@pytest.mark.parametrize("path", sorted(JOBS.glob("*.yaml")), ids=lambda p: p.name)
def test_job_config_loads(path):
    from libra_ray.config import load_config

    cfg = load_config(path)
    assert cfg.name


def test_quickstart_is_local_and_full_scale_is_the_paper():
    from libra_ray.config import load_config

    quick = load_config(JOBS / "quickstart.yaml")
    assert quick.ray.address is None and quick.train.model == "tiny-pretrained"
    assert quick.synth.teacher.model == "offline-paraphraser" and quick.synth.teacher.base_url is None
    assert (quick.synth.n_prompt, quick.synth.n_chosen, quick.synth.n_rejected) == (5, 5, 5)
    assert [m.path for m in quick.bench.models] == ["trained", "tiny-pretrained"]  # aligned vs its own base
    full = load_config(JOBS / "full_scale.yaml")
    assert (full.synth.num_legitimate, full.synth.num_illegitimate) == (632, 632)
    assert (full.synth.n_prompt, full.synth.n_chosen, full.synth.n_rejected) == (5, 5, 5)
    assert full.train.deepspeed == "zero3" and full.train.use_gpu and full.train.replicas == 16
    assert full.storage.startswith("s3://") and full.dataset_dir.startswith("s3://")
    assert full.bench.tensor_parallel_size > 1 and full.bench.num_gpus == full.bench.tensor_parallel_size
    assert full.synth.teacher.api_key_env == "OPENAI_API_KEY"


@pytest.mark.parametrize("path", sorted((JOBS / "runtime_env").glob("*.yaml")), ids=lambda p: p.name)
def test_runtime_env_file_is_valid_and_holds_no_secret(path):
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(path.read_text())
    RuntimeEnv(**env)  # Ray's own validation of the fields
    for name, value in (env.get("env_vars") or {}).items():
        assert isinstance(value, str)
        assert not SECRET_NAME.search(name.upper()), \
            f"{path.name}: {name} looks like a secret; pass it with --env-from {name}"


@pytest.mark.parametrize("stage", ["run", "synth", "train", "bench", "serve"])
def test_every_stage_has_a_job_entrypoint_the_cli_accepts(stage):
    from libra_ray.cli import build_parser
    from libra_ray.submit import build_entrypoint

    argv = shlex.split(build_entrypoint(stage, "jobs/full_scale.yaml", ["train.beta=0.2"]))
    assert argv[:3] == ["python", "-m", "libra_ray.cli"]
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.config, args.overrides) == (stage, "jobs/full_scale.yaml", ["train.beta=0.2"])


def _gpu_worker_groups_kuberay(doc: dict) -> list[tuple[int, int, int]]:
    """(max nodes, GPUs per node, CPUs per node) of each GPU worker group of a KubeRay manifest."""
    spec = doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]
    out = []
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus = int(limits.get("nvidia.com/gpu", 0))
        if gpus:
            out.append((group["maxReplicas"], gpus, int(limits["cpu"])))
    return out


def _gpu_worker_groups_launcher(config: dict) -> list[tuple[int, int, int]]:
    return [(t["max_workers"], t["resources"]["GPU"], t["resources"]["CPU"])
            for name, t in config["available_node_types"].items() if t["resources"].get("GPU")]


def _clusters() -> list[tuple[str, list[tuple[int, int, int]]]]:
    out = [("launcher-aws-gpu.yaml", _gpu_worker_groups_launcher(yaml.safe_load((CLUSTER / "launcher-aws-gpu.yaml").read_text())))]
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["kind"] in ("RayCluster", "RayJob"):  # those that run the pipeline
            out.append((path.name, _gpu_worker_groups_kuberay(doc)))
    return out


@pytest.mark.parametrize("name,groups", _clusters(), ids=[n for n, _ in _clusters()])
def test_full_scale_resources_fit_the_cluster(name, groups):
    """Resource requests in jobs/full_scale.yaml are schedulable on the GPU worker groups."""
    from libra_ray.config import load_config

    full = load_config(JOBS / "full_scale.yaml")
    assert groups, f"{name}: no GPU worker group"
    total_gpus = sum(n * g for n, g, _ in groups)
    gpus_per_node = max(g for _, g, _ in groups)
    cpus_per_gpu = min(c / g for _, g, c in groups)
    train_gpus = full.train.replicas * full.train.num_gpus
    assert train_gpus <= total_gpus, f"{name}: DPO needs {train_gpus} GPUs, the cluster has {total_gpus}"
    assert train_gpus > gpus_per_node, "full scale must span more than one node (2 x 8 GPUs)"
    assert full.train.num_cpus <= cpus_per_gpu * full.train.num_gpus
    tp = full.bench.tensor_parallel_size
    assert tp <= gpus_per_node and gpus_per_node % tp == 0, "a TP group must fit in one node"
    assert tp * full.bench.replicas <= total_gpus


def test_quickstart_benchmarks_enough_held_out_compounds_never_seen_in_alignment():
    """>= 100 benchmark prompts, all on compounds the train split (SFT and DPO's only data) never holds."""
    from libra_ray.config import load_config
    from libra_ray.synth.pipeline import phase1_rows

    quick = load_config(JOBS / "quickstart.yaml")
    rows = phase1_rows(quick.synth)
    train = {r["compound_id"] for r in rows if r["split"] == "train"}
    test = {r["compound_id"] for r in rows if r["split"] == "test"}
    assert train and test and not train & test
    test_seeds = [r for r in rows if r["split"] == "test"]
    # A test seed gives one benchmark row per unique prompt: the seed request plus n_prompt paraphrases.
    assert len(test_seeds) * (1 + quick.synth.n_prompt) >= 100
    assert quick.train.dataset is None and quick.bench.prompts is None  # train split in, test split benchmarked
