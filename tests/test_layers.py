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


def test_the_design_notes_layer_table_names_every_module():
    """docs/design.md §2 says what each module holds; a module missing from its package's row is a note gone stale."""
    import re

    text = open(os.path.join(ROOT, "docs", "design.md"), encoding="utf-8").read()
    section = text[text.index("## 2. Layers") : text.index("## 3.")]
    rows = {}
    for line in section.splitlines():
        cells = line.split("|")
        if line.startswith("| `") and len(cells) > 2:
            for package in re.findall(r"`([a-z_.]+)/?`", cells[1]):
                rows[package.rstrip("/")] = cells[2]
    missing = []
    package_root = os.path.join(ROOT, "mpo_ray")
    for dirpath, _, files in os.walk(package_root):
        package = os.path.relpath(dirpath, package_root)
        if "data" in package.split(os.sep) or "__pycache__" in package:
            continue
        for name in sorted(files):
            if not name.endswith(".py") or name == "__init__.py":
                continue
            row = rows.get(package if package != "." else name[:-3] + ".py", "")
            if f"`{name}`" not in row:
                missing.append(os.path.join(package, name))
    assert not missing, f"docs/design.md §2 does not name: {missing}"
