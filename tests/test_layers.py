"""The layers of docs/architecture.md hold: import-linter's contracts (pyproject.toml) pass, and a
forbidden import makes them fail.

import-linter (grimp) finds a package's modules by walking its directory, and the card's folders
are mapped into the namespace by setuptools' package-dir (``genealogy.producers`` is
``producers/``), so the check runs on a view of the namespace as one directory tree, made of
symlinks from that same mapping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.paths import REPO

LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent))


def namespace_view(root: Path, source: Path) -> Path:
    """root/genealogy as one tree: every package of the package-dir mapping where its name puts it."""
    mapping = tomllib.loads((source / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top = root / "genealogy"
    top.mkdir(parents=True)
    for entry in (source / mapping["genealogy"]).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for package, folder in mapping.items():
        if package != "genealogy":
            (root / package.replace(".", "/")).symlink_to(source / folder)
    return root


def lint(view: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(view)}  # before the editable install's finder
    return subprocess.run([LINT_IMPORTS, str(config), "--no-cache"], cwd=view, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed (pip install -e '.[test]')")
def test_imports_point_down_only(tmp_path):
    result = lint(namespace_view(tmp_path / "view", REPO), REPO / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "KEPT" in result.stdout


@pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed (pip install -e '.[test]')")
def test_an_upward_import_breaks_the_contract(tmp_path):
    """The same check on a copy where the domain imports an entry point: it must fail."""
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "tests", "bench",
                                                                "genealogy-data", "*.egg-info"))
    ids = source / "genealogy" / "domain" / "ids.py"
    ids.write_text(ids.read_text() + "\nfrom genealogy import cli  # noqa: upward on purpose\n")
    result = lint(namespace_view(tmp_path / "view", source), source / "pyproject.toml")
    assert result.returncode != 0
    assert "genealogy.domain.ids -> genealogy.cli" in result.stdout
