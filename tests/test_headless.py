"""The engine without the viewer: scripts and clusters import the api and train from the
command line on a machine where no Qt binding, napari or its widgets can be imported."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GUI = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "pyqtgraph")

# A child interpreter in which every GUI package fails to import, as on a server that has none.
_BLOCK = textwrap.dedent(
    f"""
    import importlib.abc, sys
    GUI = {GUI!r}
    class NoGui(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in GUI:
                raise ImportError(f"{{name}} is not installed on this machine")
            return None
    sys.meta_path.insert(0, NoGui())
    """
)


def _child(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )


def test_the_api_imports_without_any_gui_package(tmp_path):
    got = _child(
        """
        import sys
        try:
            import napari  # the blocker works: napari cannot be imported here
        except ImportError as exc:
            print("blocked:", exc)
        import napari_mtssl.api, napari_mtssl.cli, napari_mtssl.io
        print(sorted(m for m in sys.modules if m.split(".")[0] in GUI))
        """,
        tmp_path,
    )
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.strip().splitlines() == [
        "blocked: napari is not installed on this machine",
        "[]",
    ]


@pytest.mark.slow
def test_train_runs_from_the_command_line_without_any_gui_package(tmp_path):
    got = _child(
        """
        import sys
        from napari_mtssl.cli import main
        code = main(["train", "sample", "--out", "ws", "--profile", "tiny", "--device", "cpu",
                     "--what", "baseline", "--quiet"])
        print("exit", code)
        print(sorted(m for m in sys.modules if m.split(".")[0] in GUI))
        """,
        tmp_path,
    )
    assert got.returncode == 0, got.stderr[-2000:]
    lines = got.stdout.strip().splitlines()
    assert lines[-2:] == ["exit 0", "[]"], got.stdout[-2000:]
    (run,) = (tmp_path / "ws" / "runs").iterdir()
    report = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= report["models"]["baseline"]["mean_dice"] <= 1.0


ROOT = Path(__file__).resolve().parents[1]


def _requirement_names(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower() for spec in specs}


def test_the_core_requirements_name_no_gui_package_and_the_napari_extra_does():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _requirement_names(project["dependencies"])
    gui = {name.lower() for name in GUI} | {"pyqt5", "pyqt6", "pyside2", "pyside6"}
    assert not core & gui, f"the headless install would pull {sorted(core & gui)}"
    plugin = _requirement_names(project["optional-dependencies"]["napari"])
    assert {"napari", "magicgui", "qtpy"} <= plugin


@pytest.mark.slow
def test_pip_install_in_a_fresh_venv_trains_without_qt(tmp_path):
    """What a cluster user does: ``pip install .`` into a new environment (PyTorch first, the
    CPU build here, as ``make install`` does), then the api and ``napari-mtssl train``; no Qt
    binding and no napari are installed by it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"

    def run(*cmd: str | Path, timeout: float = 1200) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(c) for c in cmd], capture_output=True, text=True, cwd=tmp_path, timeout=timeout
        )

    torch = run(py, ROOT / "scripts" / "install_torch.py")
    if torch.returncode != 0:
        pytest.skip(
            f"no PyTorch wheel could be installed here (no package index?): {torch.stderr[-500:]}"
        )
    pip = run(py, "-m", "pip", "install", "--quiet", ROOT)
    assert pip.returncode == 0, pip.stderr[-3000:]

    probe = run(
        py,
        "-c",
        "import importlib.util, napari_mtssl.api; "
        f"print([m for m in {GUI!r} if importlib.util.find_spec(m) is not None])",
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip() == "[]", f"GUI packages installed by the core: {probe.stdout}"

    train = run(
        venv / "bin" / "napari-mtssl",
        *("train", "sample", "--out", tmp_path / "ws", "--profile", "tiny"),
        *("--device", "cpu", "--what", "baseline", "--quiet"),
    )
    assert train.returncode == 0, train.stderr[-2000:]
    assert "baseline" in train.stdout
    gui = run(venv / "bin" / "napari-mtssl", "demo", "--gui")
    assert gui.returncode == 2 and "napari-mtssl[napari]" in gui.stderr, gui.stderr
    assert "Traceback" not in gui.stderr
