"""The command line: version, clean usage errors (the demo has tests/test_demo.py)."""

import subprocess
import sys

import mpo_ray
from mpo_ray.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"mpo-ray {mpo_ray.__version__}"


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "mpo_ray.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "mpo-ray" in out.stdout


def test_unknown_command_is_a_usage_error(capsys):
    try:
        main(["nope"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "invalid choice" in capsys.readouterr().err
