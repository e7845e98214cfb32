"""The release build for a package index: the README's links and pictures absolute, and
``project.urls``, from the project's public address (scripts/release.py); refused without one."""

from __future__ import annotations

import importlib.util
import re
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
URL = "https://example.org/owner/napari-mtssl"


def _release():
    spec = importlib.util.spec_from_file_location("release", ROOT / "scripts" / "release.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_link_of_the_readme_becomes_absolute():
    release = _release()
    readme = (ROOT / "README.md").read_text()
    assert release.LINK.search(readme), "the README has relative links to fix"
    out = release.absolute_links(readme, URL)
    assert not release.LINK.search(out)
    assert f"]({URL}/raw/main/docs/images/" in out  # pictures: the file itself
    assert f"]({URL}/blob/main/docs/benchmarks.md#" in out  # pages, anchors kept
    # nothing else changed
    assert re.sub(r"\]\([^)]*\)", "]()", out) == re.sub(r"\]\([^)]*\)", "]()", readme)


def test_project_urls_are_added_once():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    release = _release()
    text = release.with_project_urls((ROOT / "pyproject.toml").read_text(), URL)
    again = release.with_project_urls(text, URL + "/")
    for t in (text, again):
        project = tomllib.loads(t)["project"]
        assert project["urls"]["Homepage"] == URL
        assert project["scripts"]["napari-mtssl"]  # the rest is intact


def test_no_address_no_release(capsys):
    assert _release().main(["--out", "unused"]) == 2
    assert "public address" in capsys.readouterr().err


@pytest.mark.slow
def test_the_release_wheel_carries_the_urls_and_absolute_links(tmp_path):
    assert _release().main(["--url", URL, "--out", str(tmp_path)]) == 0
    (wheel,) = tmp_path.glob("napari_mtssl-*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    assert f"Project-URL: Homepage, {URL}" in text
    assert f"]({URL}/raw/main/docs/images/real_compare.png)" in text
    assert "](docs/" not in text
