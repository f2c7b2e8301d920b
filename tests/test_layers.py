"""The package's architecture and style are contracts: import-linter checks the layer order, ruff the layout and
lint rules (both configured in pyproject.toml)."""

import os
import shutil
import subprocess
import sys

from tiny import ROOT


def test_import_contracts_are_kept():
    out = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _tool(name):
    return shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)


def test_the_tree_is_ruff_formatted_and_lint_clean():
    for args in (["format", "--check", "."], ["check", "."]):
        out = subprocess.run([_tool("ruff"), *args], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, f"ruff {' '.join(args)}:\n" + out.stdout[-3000:] + out.stderr[-2000:]
