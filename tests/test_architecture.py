"""The engine's layers hold: import-linter's contracts in ``pyproject.toml`` (one room per
purpose, each importing only the rooms below it; no torch under the workspace; no Qt under the
docks), and they catch a circle when one is added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "importlinter", reason="import-linter is in the test extra, which make test installs"
)

ROOT = Path(__file__).resolve().parents[1]


def _lint(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contracts over the package found under ``src``."""
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [str(exe), "--config", str(ROOT / "pyproject.toml"), "--no-cache"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_contracts_hold(tmp_path):
    r = _lint(ROOT / "src", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 broken" in r.stdout and "KEPT" in r.stdout


def test_a_circle_breaks_them(tmp_path):
    """io importing the api (a room above it) is refused, naming the import."""
    copy = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "napari_mtssl",
        copy / "napari_mtssl",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    io_init = copy / "napari_mtssl" / "io" / "__init__.py"
    circle = "\n\ndef _circle():\n    from napari_mtssl import api  # noqa: F401\n"
    io_init.write_text(io_init.read_text() + circle)
    r = _lint(copy, tmp_path)
    assert r.returncode != 0, r.stdout
    assert "BROKEN" in r.stdout
    assert "napari_mtssl.io -> napari_mtssl.api" in r.stdout
