"""Fixtures for the dock tests: a viewer with all four docks, the sample study loaded."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


@dataclass
class Docks:
    viewer: Any
    study: Any
    training: Any
    compare: Any
    correct: Any

    @property
    def session(self) -> Any:
        return self.study.session


@pytest.fixture(autouse=True)
def no_blocking_dialogs(monkeypatch: Any) -> list[str]:
    """A question box nobody answers would hang the run: answer Yes (e.g. napari closing at
    teardown while a job runs: stop it, then close) and keep the titles. Tests that are about a
    dialog set their own answer."""
    from qtpy.QtWidgets import QMessageBox

    asked: list[str] = []

    def yes(parent: Any, title: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(title)
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", yes)
    return asked


@pytest.fixture(autouse=True)
def spare_worker_only_where_marked(request: Any, monkeypatch: Any) -> None:
    """The docks start a job process ahead of the next job (a torch import in a new process,
    seconds of CPU); a test that starts no job gains nothing from it. Only tests marked
    ``spare_worker`` (those about it, and the walks through the whole product) get one; the
    others start their job's process when the job starts, the path a viewer takes when no
    spare is ready."""
    if request.node.get_closest_marker("spare_worker") is not None:
        return
    from napari_mtssl.widgets._jobs import JobController

    monkeypatch.setattr(JobController, "prepare", lambda self: None)


@pytest.fixture(autouse=True)
def collector_thawed_after() -> Any:
    """The docks' warm-up freezes what lives (``_warm.freeze_survivors``, once per process):
    right for a session, but in a test process it would keep that test's viewer for all the
    tests after it. Thawed after each test, the viewer is collected as before."""
    yield
    gc.unfreeze()


@pytest.fixture
def docks(make_napari_viewer: Any) -> Docks:
    """All four docks opened through npe2 (the names napari.yaml gives)."""
    from napari_mtssl.widgets import DOCKS, add_docks

    viewer = make_napari_viewer()
    widgets = add_docks(viewer)
    out = Docks(viewer, *(widgets[name] for name in DOCKS))
    yield out
    # A job still running at teardown would make napari's close ask; end it first.
    if out.session.jobs.is_running:
        out.session.jobs.stop_and_wait(60)


@pytest.fixture
def sample_docks(docks: Docks, tmp_path: Any, monkeypatch: Any) -> Docks:
    """The docks with the sample study loaded into a workspace under tmp_path."""
    import napari.utils.notifications as notifications

    errors: list[str] = []
    with monkeypatch.context() as m:
        m.setattr(notifications, "show_error", errors.append)
        ws = docks.study.load_sample(str(tmp_path / "ws"))
    assert ws is not None, f"loading the sample study failed: {errors}"
    return docks


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    # napari's make_napari_viewer reads item.rep_call in its teardown (as napari's own conftest
    # provides); without it a failing test is reported as an AttributeError instead.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
    if report.when == "setup" and report.failed:  # no call phase follows: report the setup
        item.rep_call = report
