import subprocess
import sys

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
