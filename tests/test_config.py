import textwrap

import pytest

from libra_ray.config import ConfigError, PipelineConfig, apply_overrides, dump_config, load_config, parse_override


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_are_the_embedded_quickstart():
    cfg = load_config()
    assert cfg.name == "quickstart"
    assert cfg.train.model == "tiny" and cfg.synth.teacher.base_url is None
    assert cfg.ray.address is None


def test_yaml_and_overrides_merge(tmp_path):
    path = write(tmp_path, """
        name: exp1
        train:
          beta: 0.3
          replicas: 4
    """)
    cfg = load_config(path, ["train.beta=0.2", "synth.forms=[TEXT]", "train.deepspeed=zero3"])
    assert cfg.name == "exp1"
    assert cfg.train.beta == 0.2 and cfg.train.replicas == 4
    assert cfg.synth.forms == ["TEXT"] and cfg.train.deepspeed == "zero3"


def test_dump_roundtrips(tmp_path):
    cfg = load_config(None, ["train.beta=0.25", "bench.rule=both"])
    path = tmp_path / "dumped.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "override, key, reason",
    [
        ("train.beta=-1", "train.beta", "greater than 0"),
        ("train.betta=0.2", "train.betta", "unknown key"),
        ("train.replicas=two", "train.replicas", "valid integer"),
        ("synth.forms=[INCHI]", "synth.forms.0", "'TEXT' or 'SMILES'"),
        ("name=a/b", "name", "slashes"),
        ("tiny_model.num_heads=8", "tiny_model.num_heads", "head_dim 16"),
    ],
)
def test_bad_values_name_key_and_reason(override, key, reason):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert f"{key}:" in message and reason in message


def test_unknown_section_in_file(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer: unknown key"):
        load_config(write(tmp_path, "trainer:\n  beta: 0.1\n"))


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2\n"))
    assert load_config(write(tmp_path, "")) == PipelineConfig()


def test_override_syntax():
    assert parse_override("train.loss_type=[sigmoid, ipo]") == (["train", "loss_type"], ["sigmoid", "ipo"])
    assert parse_override("ray.address=null") == (["ray", "address"], None)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.beta")
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_run_layout_is_absolute_for_local_storage(tmp_path):
    cfg = load_config(None, [f"storage={tmp_path}", "name=r1"])
    assert cfg.dataset_dir == f"{tmp_path}/r1/dataset"
    remote = load_config(None, ["storage=s3://bucket/prefix/"])
    assert remote.model_dir == "s3://bucket/prefix/quickstart/model"


def test_bench_gpus_cover_tensor_parallel_workers():
    with pytest.raises(ConfigError, match="fewer than tensor_parallel_size=2"):
        load_config(None, ["bench.tensor_parallel_size=2", "bench.num_gpus=1"])
    assert load_config(None, ["bench.tensor_parallel_size=2", "bench.num_gpus=2"]).bench.num_gpus == 2
