"""`libra-ray submit` without a cluster: entrypoints, runtime_env assembly, config-path and storage
checks, and the clear errors (exit 2) for everything that can be caught before submitting."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from libra_ray import submit as sub
from libra_ray.cli import main
from libra_ray.credentials import CREDENTIALS_PACKAGE
from libra_ray.testing import free_port

ROOT = Path(__file__).resolve().parents[1]


def _args(**kw) -> argparse.Namespace:
    base = dict(runtime_env=None, working_dir=None, env_from=[], config=None, overrides=[])
    return argparse.Namespace(**{**base, **kw})


def test_entrypoint_round_trips_through_a_shell():
    cmd = sub.build_entrypoint("train", "jobs/quickstart.yaml", ["name=my run", "train.loss_type=[sigmoid, ipo]"])
    assert shlex.split(cmd) == ["python", "-m", "libra_ray.cli", "train", "--config", "jobs/quickstart.yaml",
                                "--set", "name=my run", "--set", "train.loss_type=[sigmoid, ipo]"]
    assert shlex.split(sub.build_entrypoint("preflight", None, []))[:4] == ["python", "-m", "libra_ray.submit", "preflight"]


def test_config_path_is_made_relative_to_the_working_dir(tmp_path):
    (tmp_path / "jobs").mkdir()
    cfg = tmp_path / "jobs" / "a.yaml"
    cfg.write_text("name: a\n")
    assert sub.job_config_path(str(cfg), str(tmp_path)) == "jobs/a.yaml"
    assert sub.job_config_path("s3://b/a.yaml", str(tmp_path)) == "s3://b/a.yaml"
    with pytest.raises(sub.SubmitError, match="outside the working dir"):
        sub.job_config_path(str(cfg), str(tmp_path / "jobs" / "other"))
    (tmp_path / "runs").mkdir()
    with pytest.raises(sub.SubmitError, match="not shipped"):
        sub.job_config_path(str(tmp_path / "runs" / "x.yaml"), str(tmp_path))


def test_runtime_env_merges_file_working_dir_and_env_from(tmp_path, monkeypatch):
    env_file = tmp_path / "env.yaml"
    env_file.write_text("pip: [rich]\nenv_vars:\n  HF_HUB_OFFLINE: 1\n")
    monkeypatch.setenv("LIBRA_TEST_KEY", "sk-secret-value")
    env = sub.build_runtime_env(_args(runtime_env=str(env_file), env_from=["LIBRA_TEST_KEY"]), tmp_path / "upload-folder")
    assert env["pip"] == ["rich"] and env["working_dir"] == "."
    assert ".venv" in env["excludes"] and "runs" in env["excludes"]
    # The key is not an env var of the job (Ray shows and logs those) but a private package of it.
    assert env["env_vars"] == {"HF_HUB_OFFLINE": "1"}
    assert "sk-secret-value" not in repr(env)
    (package,) = env["py_modules"]
    assert Path(package).name == CREDENTIALS_PACKAGE
    assert (Path(package) / "LIBRA_TEST_KEY.secret").stat().st_mode & 0o077 == 0  # owner-only
    shown = sub.describe_runtime_env(env, ["LIBRA_TEST_KEY"])
    assert "LIBRA_TEST_KEY" in shown and "sk-secret-value" not in shown and "upload-folder" not in shown


def test_shipped_credentials_are_found_by_name(tmp_path, monkeypatch):
    from libra_ray import credentials

    credentials.write_credentials_package(tmp_path, {"LIBRA_SHIPPED_KEY": "sk-shipped"})
    monkeypatch.syspath_prepend(str(tmp_path))  # as Ray puts a job's py_modules on its workers' path
    credentials._shipped_credentials.cache_clear()
    try:
        assert credentials.get_credential("LIBRA_SHIPPED_KEY") == "sk-shipped"
        monkeypatch.setenv("LIBRA_SHIPPED_KEY", "sk-from-env")  # the node's own environment wins
        assert credentials.get_credential("LIBRA_SHIPPED_KEY") == "sk-from-env"
        assert credentials.get_credential("LIBRA_NOT_SHIPPED") is None and credentials.get_credential(None) is None
    finally:
        credentials._shipped_credentials.cache_clear()
    with pytest.raises(ValueError, match="not an environment variable name"):
        credentials.write_credentials_package(tmp_path / "other", {"../x": "v"})


def test_working_dir_default_follows_the_runtime_env(tmp_path):
    image = tmp_path / "image.yaml"
    image.write_text("image_uri: ghcr.io/x/y:1\n")
    assert "working_dir" not in sub.build_runtime_env(_args(runtime_env=str(image)))  # code is in the image
    assert sub.build_runtime_env(_args(runtime_env=str(image), working_dir="src"))["working_dir"] == "src"
    assert sub.build_runtime_env(_args(runtime_env=str(ROOT / "jobs/runtime_env/local.yaml")))["working_dir"] == "."
    with pytest.raises(sub.SubmitError, match="cannot ship with an image_uri"):  # Ray: image_uri + env_vars only
        sub.build_runtime_env(_args(runtime_env=str(image), env_from=["HOME"]), tmp_path)


@pytest.mark.parametrize("content,match", [(None, "no such file"), ("- a\n- b\n", "mapping"), ("a: [\n", "not valid YAML")])
def test_bad_runtime_env_file_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "env.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(sub.SubmitError, match=match):
        sub.build_runtime_env(_args(runtime_env=str(path)))


def test_env_from_an_unset_variable_is_refused(monkeypatch):
    monkeypatch.delenv("LIBRA_TEST_UNSET", raising=False)
    with pytest.raises(sub.SubmitError, match="LIBRA_TEST_UNSET"):
        sub.build_runtime_env(_args(env_from=["LIBRA_TEST_UNSET"]))


def test_storage_warning_only_for_relative_local_paths():
    from libra_ray.config import load_config

    assert "relative local path" in sub.storage_warning(load_config(None, ["storage=./runs"]))
    assert sub.storage_warning(load_config(None, ["storage=/mnt/shared/runs"])) is None
    assert sub.storage_warning(load_config(None, ["storage=s3://bucket/runs"])) is None


def test_secret_names_come_from_the_config():
    from libra_ray.config import load_config

    cfg = load_config(ROOT / "jobs" / "full_scale.yaml", ["bench.judge.api_key_env=JUDGE_KEY"])
    assert sub.secret_env_names(cfg) == ["JUDGE_KEY", "OPENAI_API_KEY"]


# --- the CLI: every local problem is exit 2 with one clear line, before anything is submitted ---


def test_cli_without_an_address(monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["submit", "--config", "jobs/quickstart.yaml"]) == 2
    assert "--address" in capsys.readouterr().err


def test_cli_invalid_config_fails_before_contacting_the_cluster(capsys):
    address = f"http://127.0.0.1:{free_port()}"
    assert main(["submit", "--address", address, "--config", "jobs/quickstart.yaml", "--set", "train.beta=-1"]) == 2
    err = capsys.readouterr().err
    assert "train.beta" in err and "cannot reach" not in err


def test_cli_unreachable_cluster_is_a_clear_error_and_hides_secrets(monkeypatch, capsys):
    monkeypatch.setenv("LIBRA_TEST_KEY", "sk-do-not-print-me")
    address = f"http://127.0.0.1:{free_port()}"
    code = main(["submit", "--address", address, "--config", "jobs/quickstart.yaml", "--env-from", "LIBRA_TEST_KEY"])
    out = capsys.readouterr()
    assert code == 2 and "cannot reach" in out.err
    assert "sk-do-not-print-me" not in out.out + out.err


def test_cli_config_outside_the_working_dir(tmp_path, capsys):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("name: mine\n")
    address = f"http://127.0.0.1:{free_port()}"
    assert main(["submit", "--address", address, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "outside the working dir" in err and "cannot reach" not in err
