"""The command line: version, the built-in demo, clean errors."""

import json
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


def test_demo_writes_weights_and_mpo_beats_every_single_policy(tmp_path, capsys):
    assert main(["demo", "--quick", "--output", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "weights.json").read_text())
    assert summary["sampled"]["gap"] <= 1e-9
    compare = summary["compare"]
    mpo = compare["MPO (sampled λ)"]["maxmin_value"]
    assert all(mpo >= row["maxmin_value"] for name, row in compare.items() if name != "MPO (sampled λ)")
    assert "λ" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys):
    try:
        main(["nope"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "invalid choice" in capsys.readouterr().err
