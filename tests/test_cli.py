import subprocess
import sys

import pytest

from libra_ray.cli import COMMANDS, main


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "libra_ray.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for name in ("synth", "train", "bench", "serve", "run", "submit", "tiny-model"):
        assert name in out and COMMANDS[name][:30] in out


def test_console_script_installed():
    import shutil

    exe = shutil.which("libra-ray") or str(__import__("pathlib").Path(sys.executable).parent / "libra-ray")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "usage: libra-ray" in out


def test_config_command_applies_overrides(capsys):
    assert main(["config", "--set", "train.beta=0.2"]) == 0
    assert "beta: 0.2" in capsys.readouterr().out


def test_bad_config_is_a_clear_error_not_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "libra_ray.cli", "train", "--set", "train.beta=zero"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "train.beta:" in proc.stderr and "Traceback" not in proc.stderr


# ---- seeds CSV errors: one line, exit 2, before Ray starts --------------------------------------
GOOD_ROW = "a,Aspirin,CC(=O)OC1=CC=CC=C1C(O)=O,legitimate,pharmaceutical,x\n"
HEADER = "compound_id,name,smiles,class,category,source\n"


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if anything tries to start Ray."""
    import libra_ray.runtime

    def refuse(*_a, **_k):
        raise AssertionError("Ray was started although the seeds were bad")

    monkeypatch.setattr(libra_ray.runtime, "ray_session", refuse)


@pytest.mark.parametrize("content,expected", [
    (HEADER + GOOD_ROW + "b,Broken,C1CC(,legitimate,industrial,x\n", "line 3 (Broken): invalid SMILES 'C1CC('"),
    ("compound_id,name,smiles\n" + "a,Aspirin,CCO\n", "line 1: missing column(s) class, category"),
    ("", "the file is empty"),
    (HEADER + "d,Thing,CCO,maybe,industrial,x\n", "line 2 (Thing): class 'maybe' must be one of"),
    (HEADER, "no compounds"),
])
@pytest.mark.parametrize("command", ["synth", "run"])
def test_bad_seeds_csv_is_one_line_exit_2_before_ray(tmp_path, capsys, no_ray, command, content, expected):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text(content)
    assert main([command, "--set", f"synth.seeds_csv={seeds}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and str(seeds) in err and "synth.seeds_csv" in err


@pytest.mark.parametrize("overrides,expected", [
    (["synth.num_illegitimate=5000"], "synth.num_illegitimate=5000 but"),
    (["synth.num_legitimate=2"], "synth.num_legitimate=2 but"),  # with the small CSV below
    (["synth.forms=[SMILES]", "synth.num_legitimate=1"], "holds only 0 legitimate compounds with a SMILES"),
])
def test_counts_larger_than_the_catalogue_are_one_line_exit_2(tmp_path, capsys, no_ray, overrides, expected):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text(HEADER + "w,Petroleum jelly,,legitimate,industrial,x\n" + "i,Opium,,illegitimate,controlled,x\n")
    sets = [a for o in [f"synth.seeds_csv={seeds}", "synth.num_legitimate=1", "synth.num_illegitimate=1", *overrides]
            for a in ("--set", o)]
    assert main(["synth", *sets]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err


def test_bad_seeds_csv_from_the_real_entrypoint(tmp_path):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text(HEADER + GOOD_ROW + "b,Broken,C1CC(,legitimate,industrial,x\n")
    proc = subprocess.run([sys.executable, "-m", "libra_ray.cli", "synth", "--set", f"synth.seeds_csv={seeds}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "line 3 (Broken)" in proc.stderr and "ray" not in proc.stdout.lower()


def test_submit_checks_the_seeds_before_contacting_the_cluster(tmp_path, capsys):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text(HEADER + GOOD_ROW + "b,Broken,C1CC(,legitimate,industrial,x\n")
    code = main(["submit", "--address", "http://127.0.0.1:9", "--config", "jobs/quickstart.yaml", "--stage", "synth",
                 "--set", f"synth.seeds_csv={seeds}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "line 3 (Broken)" in err and "cannot reach" not in err
