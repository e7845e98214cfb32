"""Shared test settings: where the real data lives (``../shared/data/acdc`` from the project root,
or ``$MTSSL_ACDC``). Tests that need it skip, naming the path they looked at."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACDC = Path(os.environ.get("MTSSL_ACDC", ROOT.parent / "shared" / "data" / "acdc"))


@pytest.fixture(scope="session", autouse=True)
def _own_kept_timings(tmp_path_factory):
    """The timings kept between sessions (``kept_timings``) go to a folder of the test session's
    own (inherited by the processes it starts): a test neither takes the developer's timings
    nor writes into their cache folder."""
    from napari_mtssl.training import kept_timings

    patch = pytest.MonkeyPatch()
    patch.setenv(kept_timings.CACHE_ENV, str(tmp_path_factory.mktemp("kept_timings")))
    yield
    patch.undo()


@pytest.fixture(scope="session", autouse=True)
def _alike_sample():
    """Tests that train on the built-in sample train for seconds: they get the study whose scans
    are alike (5 scans, 3 labelled, 1 for validation; ``make_sample_study(varied=False)``),
    which a few steps learn, so their models answer the same in every process. The demo's
    varied study (``api.SAMPLE_STUDY``) is tested in ``test_sample.py``, and by the tests that
    run the command line in a process of its own."""
    from napari_mtssl import api

    patch = pytest.MonkeyPatch()
    patch.setattr(api, "SAMPLE_STUDY", {"n_scans": 5, "n_labelled": 3, "varied": False})
    patch.setattr(api, "SAMPLE_VAL_SCANS", 1)
    yield
    patch.undo()


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """The built-in sample (2 labelled scans) prepared for training at the tiny profile's plan:
    (StudyData, shaped config), for tests that drive ``train_unit`` directly."""
    from napari_mtssl import api
    from napari_mtssl.training.data.slices import StudyData
    from napari_mtssl.training.planning.fingerprint import fingerprint
    from napari_mtssl.training.planning.planner import make_plan

    ws = api.create_workspace(tmp_path_factory.mktemp("tiny") / "ws", source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu")
    plan = make_plan(fingerprint(ws), cfg, "baseline", allocate_steps=False)
    return StudyData.from_workspace(ws, plan.preprocessing(), plan.patch), plan.apply(cfg)


# -- one trained workspace for the whole session ------------------------------------------------


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """What a test may not change in a shared workspace: every file's size and modification
    time, but the caches (reading a model fills them) and the lock files."""
    out = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] != "cache" and not p.name.endswith(".lock"):
            st = p.stat()
            out[str(rel)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="session")
def _trained_once(tmp_path_factory):
    from napari_mtssl import api

    ws = api.create_workspace(
        tmp_path_factory.mktemp("trained") / "ws", source="sample", labelled=2
    )
    api.run(api.train(ws, api.make_config("tiny", device="cpu"), "baseline"))
    return ws


@pytest.fixture
def trained_workspace(_trained_once):
    """The built-in sample (2 labelled scans) with the tiny profile's baseline trained on the CPU
    (one run, the profile's seed), trained once per test session (once per pytest-xdist worker).

    Shared, so read-only: a test that adds a run, a label or a correction asks for
    ``trained_workspace_copy`` instead. A test that changes it anyway fails at its teardown."""
    ws = _trained_once
    before = _files(ws.root)
    yield ws
    changed = sorted(set(before.items()) ^ set(_files(ws.root).items()))
    assert not changed, (
        "this test changed the shared trained workspace (use trained_workspace_copy): "
        f"{sorted({name for name, _ in changed})}"
    )


@pytest.fixture
def trained_workspace_copy(_trained_once, tmp_path):
    """A copy of ``trained_workspace`` under ``tmp_path``, for a test that changes it."""
    import shutil

    from napari_mtssl.workspace import Workspace

    copied = shutil.copytree(
        _trained_once.root, tmp_path / "trained", ignore=shutil.ignore_patterns("*.lock")
    )
    return Workspace.open(copied)
