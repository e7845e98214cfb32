"""The engine without the viewer: scripts and clusters import the api and train from the
command line on a machine where no Qt binding, napari or its widgets can be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

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
