"""Bad inputs fail before anything starts: one line on stderr naming the file or key, exit 2, Ray never
asked to start (a non-UTF-8 or directory --config; serve with a model path that does not exist; a stage
without `run`)."""

from __future__ import annotations

import pytest

from libra_ray.cli import main
from libra_ray.config import ConfigError
from libra_ray.tiny import check_model_ref


@pytest.fixture(autouse=True)
def ray_starts(monkeypatch) -> list:
    """Every call to `ray.init` (the only way libra_ray starts or joins Ray), recorded and refused, so "Ray
    never started" means it was never asked to, not that it started and stopped again."""
    import ray

    calls: list = []

    def refused(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", refused)
    return calls


def _one_line_exit_2(argv, capsys, ray_starts) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("libra-ray: "), err
    assert "Traceback" not in err
    assert ray_starts == [], "Ray was started"
    return err


def test_non_utf8_config_names_the_file(tmp_path, capsys, ray_starts):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    err = _one_line_exit_2(["synth", "--config", str(path)], capsys, ray_starts)
    assert str(path) in err and "UTF-8" in err


def test_directory_config_names_the_file(tmp_path, capsys, ray_starts):
    err = _one_line_exit_2(["config", "--config", str(tmp_path)], capsys, ray_starts)
    assert str(tmp_path) in err and "directory" in err


@pytest.mark.parametrize("role", ["policy", "judge"])
def test_serve_missing_model_path_names_the_key(role, tmp_path, capsys, ray_starts):
    missing = tmp_path / "no-such-model"
    others = ["--set", f"serve.{'judge' if role == 'policy' else 'policy'}.path=tiny"]
    err = _one_line_exit_2(["serve", "--set", f"storage={tmp_path}", "--set", f"serve.{role}.path={missing}", *others], capsys, ray_starts)
    assert f"serve.{role}.path" in err and str(missing) in err


def test_serve_before_training_names_the_key(tmp_path, capsys, ray_starts):
    err = _one_line_exit_2(["serve", "--set", f"storage={tmp_path}"], capsys, ray_starts)  # policy path "trained" by default
    assert "serve.policy.path 'trained'" in err


def test_check_model_ref(tmp_path):
    from libra_ray.config import load_config

    cfg = load_config(None, [f"storage={tmp_path}"])
    check_model_ref("tiny", cfg)
    check_model_ref("Qwen/Qwen2.5-7B-Instruct", cfg)  # hub ids are not checked here
    with pytest.raises(ConfigError, match="not a model folder"):
        check_model_ref(str(tmp_path), cfg, "train.model")
    (tmp_path / "config.json").write_text("{}")
    check_model_ref(str(tmp_path), cfg)
    with pytest.raises(ConfigError, match="bench.models.x.path: model path ./nope does not exist"):
        check_model_ref("./nope", cfg, "bench.models.x.path")


def _empty_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({c: pa.array([], pa.string()) for c in ("prompt", "class", "category")}), path)


@pytest.mark.parametrize("name, write", [
    ("header-only.csv", lambda p: p.write_text("prompt,class,category\n")),
    ("empty.jsonl", lambda p: p.write_text("")),
    ("blank-prompts.jsonl", lambda p: p.write_text('{"prompt": "", "class": "legitimate", "category": "x"}\n')),
    ("no-rows.parquet", _empty_parquet),
    ("empty-folder", lambda p: p.mkdir()),
])
@pytest.mark.parametrize("command", ["bench", "run"])
def test_empty_benchmark_prompt_set_is_one_line_exit_2(tmp_path, capsys, ray_starts, command, name, write):
    """Nothing to benchmark is a mistake, not an empty report: said in a line before Ray starts."""
    path = tmp_path / name
    write(path)
    err = _one_line_exit_2([command, "--set", f"storage={tmp_path / 'runs'}", "--set", f"bench.prompts={path}"], capsys, ray_starts)
    assert "bench.prompts" in err and str(path) in err and "hold no prompt" in err and "nothing to benchmark" in err


@pytest.mark.parametrize("command", ["train", "run"])
def test_train_set_smaller_than_one_global_batch_is_one_line_exit_2(tmp_path, capsys, ray_starts, command):
    from libra_ray.testing import write_train_set

    data = write_train_set(tmp_path / "small", n=8)
    err = _one_line_exit_2([command, "--set", f"storage={tmp_path / 'runs'}", "--set", f"train.dataset={data}",
                            "--set", "train.replicas=2", "--set", "train.per_device_train_batch_size=8"], capsys, ray_starts)
    assert "train.dataset: 8 rows is fewer than one global batch (2 workers x 8)" in err


def test_a_stage_without_run_is_exit_3_before_ray_starts_never_skipped(tmp_path, capsys, ray_starts, monkeypatch):
    import libra_ray.bench

    monkeypatch.delattr(libra_ray.bench, "run")
    assert main(["run", "--config", "jobs/quickstart.yaml", "--set", f"storage={tmp_path}"]) == 3
    out, err = capsys.readouterr()
    assert err.strip() == "libra-ray: stage 'bench' is not yet implemented" and "skipping" not in out + err
    assert ray_starts == [] and "=== stage" not in out  # no stage ran: the pipeline refuses, it does not skip
