"""The command line: version, clean usage errors (the demo has tests/demo/test_demo.py)."""

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


def test_user_errors_are_one_line_and_exit_2_but_bugs_keep_their_traceback(monkeypatch, capsys):
    import pytest

    from mpo_ray import cli
    from mpo_ray.core.errors import UserError

    def user_mistake(args):
        raise UserError("my.yaml: `beta` must be > 0.")

    monkeypatch.setattr(cli, "_cmd_reweight", user_mistake)
    assert main(["reweight", "my.yaml"]) == 2
    assert capsys.readouterr().err == "mpo-ray reweight: error: my.yaml: `beta` must be > 0.\n"

    def bug(args):
        raise ValueError("operands could not be broadcast together")  # numpy's, not the user's

    monkeypatch.setattr(cli, "_cmd_reweight", bug)
    with pytest.raises(ValueError, match="broadcast"):  # not swallowed: Python prints the traceback, exit status 1
        main(["reweight", "my.yaml"])


def test_a_bad_config_fails_in_one_line_before_ray_starts(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "beta: .inf\nreference: {name: ref, model: 'tiny:base'}\npolicies: [{name: a, model: 'tiny:base'}]\n"
        "reweight: {prompts: p.jsonl}\n"
    )
    out = subprocess.run([sys.executable, "-m", "mpo_ray.cli", "reweight", str(cfg)], capture_output=True, text=True)
    assert (
        out.returncode == 2 and out.stderr.count("\n") == 1 and "`beta`" in out.stderr and "Traceback" not in out.stderr
    )
