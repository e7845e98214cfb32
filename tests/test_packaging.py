"""napari finds the plugin through npe2, from the editable install and from a built wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter so the discovery is npe2's own, not this process's imports.
DISCOVER = """
import json, sys
from npe2 import PluginManager
pm = PluginManager()
pm.discover(include_npe1=False)
mf = pm.get_manifest("napari-mtssl")
import napari_mtssl
print(json.dumps({
    "package_file": napari_mtssl.__file__,
    "readers": [r.command for r in mf.contributions.readers],
    "writers": [w.command for w in mf.contributions.writers],
    "widgets": [w.display_name for w in mf.contributions.widgets],
    "samples": [s.key for s in mf.contributions.sample_data],
}))
"""


def _discover(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", DISCOVER], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check_contributions(found: dict) -> None:
    assert found["readers"] == ["napari-mtssl.get_reader"]
    assert set(found["writers"]) == {
        "napari-mtssl.write_labels_nifti",
        "napari-mtssl.write_labels_tiff",
        "napari-mtssl.write_labels_dicom_seg",
    }
    assert found["widgets"] == [
        "All steps (tabs)",
        "Study",
        "Tasks and training",
        "Compare models",
        "Correct and retrain",
    ]
    assert found["samples"] == ["study"]


def test_the_top_level_manifest_is_the_packaged_one():
    top = ROOT / "napari.yaml"
    assert top.is_symlink() and top.resolve() == (ROOT / "src/napari_mtssl/napari.yaml").resolve()


def test_every_manifest_command_resolves():
    from npe2 import PluginManifest

    mf = PluginManifest.from_file(ROOT / "src/napari_mtssl/napari.yaml")
    for cmd in mf.contributions.commands:
        module, _, attr = cmd.python_name.partition(":")
        mod = __import__(module, fromlist=[attr])
        assert callable(getattr(mod, attr)), cmd.python_name


def test_discovered_from_the_installed_environment():
    found = _discover(dict(os.environ))
    _check_contributions(found)


def test_discovered_from_a_wheel(tmp_path):
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if build.returncode != 0 and "No matching distribution" in build.stderr:
        pytest.skip("no package index reachable to fetch the build backend: " + build.stderr[-200:])
    assert build.returncode == 0, build.stderr
    (wheel,) = wheel_dir.glob("napari_mtssl-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_mtssl/napari.yaml" in names
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "napari-mtssl = napari_mtssl:napari.yaml" in zf.read(entry_points).decode()
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    # The wheel's copy must win over the editable install: put it first on the path and run
    # from a folder where src/ is not importable.
    env = dict(os.environ, PYTHONPATH=str(target), PYTHONNOUSERSITE="1")
    found = subprocess.run(
        [sys.executable, "-c", DISCOVER],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout.strip().splitlines()[-1])
    assert Path(result["package_file"]).is_relative_to(target)
    _check_contributions(result)
