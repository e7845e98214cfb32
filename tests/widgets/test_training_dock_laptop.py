"""The Tasks tab on a 1366 x 768 laptop: what a click changes is in view without scrolling,
a refused budget says what fits, and a smoke test is never mistaken for a trained model.

Set ``MTSSL_SCREENSHOTS=docs/images`` to keep the window's pictures (training_dock_1366*.png;
``make screenshots`` does).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from napari_mtssl import events as ev

pytestmark = pytest.mark.gui

SCREEN = (1366, 768)
# What the planner says when 10 minutes cannot train the whole method (planner._too_small).
REFUSED = (
    "a 10 min budget gives each of the 8 model(s) of this run about 0 training steps on this "
    "machine; it needs at least 300; give sdm, vicreg, inpaint a budget of at least 35 min"
)
REFUSED_FITS = (
    "a 20 min budget gives each of the 8 model(s) of this run about 120 training steps on this "
    "machine; it needs at least 300. 20 min allows baseline + 1 task (sdm); give sdm, vicreg, "
    "inpaint a budget of at least 1 h 5 min"
)


# -- helpers ------------------------------------------------------------------------------------
def _scroll_ancestors(widget: Any) -> list[Any]:
    from qtpy.QtWidgets import QScrollArea

    out, parent = [], widget.parentWidget()
    while parent is not None:
        if isinstance(parent, QScrollArea):
            out.append(parent)
        parent = parent.parentWidget()
    return out


def hidden_by_scrolling(widget: Any) -> list[str]:
    """Why ``widget`` is not wholly in view where every scroll area above it stands now
    (empty: in view): hidden, outside the window, or outside a scroll area's viewport."""
    from qtpy.QtCore import QPoint, QRect

    if not widget.isVisible():
        return [f"{widget.objectName() or type(widget).__name__} is hidden"]
    why = []
    window = widget.window()
    rect = QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())
    if not window.rect().contains(rect):
        why.append(f"outside the window: {rect} not in {window.rect()}")
    for area in _scroll_ancestors(widget):
        port = area.viewport()
        shown = QRect(port.mapTo(window, QPoint(0, 0)), port.size())
        if not shown.contains(rect):
            why.append(f"below the fold of {type(area).__name__}: {rect} not in {shown}")
    return why


def save_shot(viewer: Any, name: str, tmp_path: Path) -> Path:
    """The whole window as a PNG, kept in MTSSL_SCREENSHOTS when set."""
    folder = Path(os.environ.get("MTSSL_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path, tmp = folder / name, folder / f".{Path(name).stem}.part.png"
    assert viewer.window._qt_window.grab().save(str(tmp)), tmp
    os.replace(tmp, path)  # a picture in the docs is never half written
    return path


def fake_start(monkeypatch: Any, jobs: Any) -> list[tuple[str, Any, dict]]:
    """Record what the dock asks the job controller to run, and announce it as started."""
    calls: list[tuple[str, Any, dict]] = []

    def start(ws: Any, config: Any, what: str, **kwargs: Any) -> object:
        calls.append((what, config, kwargs))
        jobs.what = what
        jobs.job_started.emit(what)
        return object()

    monkeypatch.setattr(jobs, "start", start)
    return calls


def refuse(jobs: Any, message: str) -> None:
    """The job the dock started ends refused by the planner."""
    jobs.last_state, jobs.last_result, jobs.last_error = "failed", None, message
    jobs.job_finished.emit(None)


def pretend_running(training: Any) -> None:
    """The events a run sends in its first quarter hour, without a worker process."""
    jobs = training.jobs
    jobs.job_started.emit("all")
    jobs.running_changed.emit(True)
    models = ["baseline", "sdm:pretrain", "inpaint:pretrain", "student"]
    jobs.job_event.emit(ev.Start(run="r1", what="all", plan=models))
    jobs.job_event.emit(ev.ModelDone(model="baseline", mean_dice=0.61))
    for step in range(10, 410, 10):
        jobs.job_event.emit(
            ev.Progress(
                model="sdm:pretrain",
                mode="finetune",
                stage="stage1",
                step=step,
                total=1200,
                losses={"total": 0.9 * 0.996**step},
                val_dice=0.3 + 0.3 * step / 400 if step % 100 == 0 else None,
                run_elapsed_s=900.0 + step,
                run_budget_s=3600.0,
            )
        )


def tiny_report(steps: int = 4, profile: str = "tiny") -> dict:
    line = "student 0.120 vs 0.110 for the baseline of this run (+0.010)"
    entry = {"mean_dice": 0.12, "steps": steps}
    baseline = {"mean_dice": 0.11, "steps": steps}  # the numbers of the line
    return {
        "models": {"baseline": baseline, "teacher:sdm": entry, "student": entry},
        "selected": {"sdm": {"joint": 0.1, "pretrain": 0.12, "mode": "pretrain"}},
        "comparison": {"line": line},
        "config": {"profile": profile},
    }


def fingerprint() -> Any:
    """A study like ACDC's (10 training scans, 3 labelled) as the planner sees it."""
    from napari_mtssl.training.planning.fingerprint import Fingerprint

    z, size = 10, (256, 216)
    return Fingerprint(
        n_train=10,
        n_val=2,
        n_labelled_scans=3,
        labelled_slices=3 * z,
        unlabelled_slices=7 * z,
        spacing=(1.5, 1.5),
        spacing_range=(1.5, 1.5),
        size=size,
        size_range=(min(size), max(size)),
        slice_spacing=5.0,
        slices=(z, z, z),
        modalities={"MR": 10},
        intensity={},
        class_freq={"0": 0.9, "1": 0.1},
        num_classes=4,
        val_shapes=[(z, *size)] * 2,
    )


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture
def no_dev(monkeypatch: Any) -> None:
    monkeypatch.delenv("MTSSL_DEV", raising=False)


@pytest.fixture
def laptop(no_dev: None, make_napari_viewer: Any, qtbot: Any, tmp_path: Any, monkeypatch: Any):
    """napari at 1366 x 768 with the plugin's tabs on the Tasks step, the sample study loaded
    (no training)."""
    import napari.utils.notifications as notifications

    from napari_mtssl.widgets import add_docks

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.showNormal()
    window.resize(*SCREEN)
    widgets = add_docks(viewer)
    training = widgets["Tasks and training"]
    errors: list[str] = []
    monkeypatch.setattr(notifications, "show_error", errors.append)
    assert widgets["Study"].load_sample(str(tmp_path / "ws")) is not None, errors
    tabs = training.parentWidget()
    while not hasattr(tabs, "show_step"):
        tabs = tabs.parentWidget()
    tabs.show_step("Tasks and training")
    qtbot.wait(300)
    window.resize(*SCREEN)
    qtbot.wait(300)
    yield viewer, training
    training.jobs.running_changed.emit(False)


# -- at 1366 x 768 ------------------------------------------------------------------------------
def test_status_strip_in_view_at_1366x768(laptop, qtbot, tmp_path):
    viewer, training = laptop
    page = _scroll_ancestors(training)[0]  # the tab's own scroll area
    assert not page.verticalScrollBar().isVisible(), "the whole tab scrolls, strip and all"
    # nothing is wider than the dock: no sideways scrolling, no cut button
    assert training.body.minimumSizeHint().width() <= training.body_scroll.viewport().width()
    before = training.now_label.text()
    pretend_running(training)
    qtbot.wait(400)
    assert training.now_label.text() != before
    assert "sdm (pre-train)" in training.now_label.text()
    assert "about 38 min left" in training.now_label.text()  # 3600 - 1300 s
    assert "1 of 4 models done" in training.now_label.text()
    for w in (
        training.status_strip,
        training.now_label,
        training.stop_button,
        training.progress_panel.bar,
        training.train_buttons["all"],
        training.budget,
        training.estimate_button,
    ):
        assert not hidden_by_scrolling(w), (w, hidden_by_scrolling(w))
    assert training.stop_button.isEnabled()
    save_shot(viewer, "training_dock_1366.png", tmp_path)


def test_a_refused_budget_shows_what_fits_in_view(laptop, qtbot, monkeypatch, tmp_path):
    viewer, training = laptop
    calls = fake_start(monkeypatch, training.jobs)
    # the user scrolled down to the results, then trains all in 10 minutes
    training.body_scroll.verticalScrollBar().setValue(10_000)
    training.budget.setCurrentText("10 min")
    training.train_buttons["all"].click()
    assert [c[0] for c in calls] == ["all"]
    refuse(training.jobs, REFUSED)
    qtbot.wait(300)
    baseline = training.fits_buttons["baseline"]
    for w in (training.fits_box, baseline, training.now_label, training.budget):
        assert not hidden_by_scrolling(w), (w, hidden_by_scrolling(w))
    assert "10 min" in baseline.text() and "baseline alone" in baseline.text()
    assert training.now_label.text().startswith("Refused")
    save_shot(viewer, "training_dock_1366_fits.png", tmp_path)
    baseline.click()
    what, config, _ = calls[-1]
    assert what == "baseline" and config.budget_s == 600
    assert training.fits_box.isHidden()  # the new run took the place of the refusal


# -- what fits ----------------------------------------------------------------------------------
def test_each_way_to_fit_is_one_click(sample_docks, monkeypatch):
    t = sample_docks.training
    calls = fake_start(monkeypatch, t.jobs)
    for name, row in t.task_rows.items():
        row.checkbox.setChecked(name in ("sdm", "vicreg", "inpaint"))
    t.mode.setCurrentIndex(t.mode.findData("both"))
    t.budget.setCurrentText("20 min")
    t.train("all")
    refuse(t.jobs, REFUSED_FITS)
    shown = {k for k, b in t.fits_buttons.items() if not b.isHidden()}
    assert shown == {"baseline", "fewer", "pretrain", "budget"}
    assert (
        "sdm" in t.fits_buttons["fewer"].text() and "fits 20 min" in t.fits_buttons["fewer"].text()
    )
    assert "1 h 5 min" in t.fits_buttons["budget"].text()

    t.fits_buttons["fewer"].click()
    what, config, _ = calls[-1]
    assert what == "all" and t.selected_tasks() == ["sdm"] and config.stage1.tasks == ["sdm"]
    assert config.budget_s == 1200

    for name, row in t.task_rows.items():
        row.checkbox.setChecked(name in ("sdm", "vicreg", "inpaint"))
    t.train("all")
    refuse(t.jobs, REFUSED_FITS)
    t.fits_buttons["pretrain"].click()
    what, config, _ = calls[-1]
    assert what == "all" and config.stage1.modes == "pretrain"

    t.train("all")
    refuse(t.jobs, REFUSED_FITS)
    t.fits_buttons["budget"].click()
    what, config, _ = calls[-1]
    assert what == "all" and config.budget_s == 65 * 60


def test_an_estimate_refused_offers_the_same(sample_docks, monkeypatch):
    t = sample_docks.training
    calls = fake_start(monkeypatch, t.jobs)
    t.mode.setCurrentIndex(t.mode.findData("auto"))
    t.budget.setCurrentText("10 min")
    t.estimate("all")
    assert calls[-1][0] == "plan" and calls[-1][2]["plan_for"] == "all"
    refuse(t.jobs, REFUSED)
    shown = {k for k, b in t.fits_buttons.items() if not b.isHidden()}
    assert shown == {"baseline", "budget"}  # "as planned" already tried one mode
    t.fits_buttons["budget"].click()
    assert calls[-1][0] == "all" and calls[-1][1].budget_s == 35 * 60


def test_a_failure_that_is_no_budget_shows_no_offer(sample_docks, monkeypatch):
    t = sample_docks.training
    fake_start(monkeypatch, t.jobs)
    t.train("all")
    refuse(t.jobs, "sdm: needs labels on at least two scans")
    assert t.fits_box.isHidden()
    assert "needs labels" in t.now_label.text()


def test_the_planners_own_messages_are_understood():
    """The dock reads the message the planner writes (no guessing at a format)."""
    from napari_mtssl.training.config import parse_budget, profile
    from napari_mtssl.training.planning.plan import PlanError
    from napari_mtssl.training.planning.planner import make_plan
    from napari_mtssl.widgets.training import budget_refusal

    fp = fingerprint()
    tasks = ["sdm", "vicreg", "inpaint"]

    def refusal(budget: str, what: str, **over: Any) -> Any:
        cfg = profile("quick", budget_s=parse_budget(budget), device="cpu", **over)
        with pytest.raises(PlanError) as e:
            make_plan(fp, cfg, what, probe=False)
        r = budget_refusal(str(e.value))
        assert r is not None, str(e.value)
        return r

    r = refusal("10m", "all", stage1__tasks=tasks, stage1__min_teacher_steps=0)
    assert r.budget == "10 min" and r.models >= 4 and r.steps < 300
    assert r.fit_tasks and set(r.fit_tasks) < set(tasks)
    assert parse_budget(r.need.replace(" ", "")) > 600
    r = refusal("5s", "baseline")
    assert r.budget == "5 s" and r.models == 1 and not r.fit_tasks and r.need
    # an untimed baseline's refusal, made by the run from its first window's steps
    from types import SimpleNamespace

    from napari_mtssl.training.loop.pace import TooFewSteps
    from napari_mtssl.training.running.units import _refusal

    ctx = SimpleNamespace(cfg=profile("quick", budget_s=600), plan=SimpleNamespace(models=["b"]))
    r = budget_refusal(_refusal(ctx, TooFewSteps(140, 150, 2.9)))
    assert r is not None and (r.budget, r.models, r.steps) == ("10 min", 1, 140)
    assert r.need == "23 min" and not r.fit_tasks
    assert budget_refusal("the workspace has no training scans; add scans first") is None
    assert budget_refusal(None) is None


# -- the smoke test is a developer's setting ------------------------------------------------------
def test_the_smoke_test_is_not_offered_to_users(no_dev, docks):
    from napari_mtssl.widgets.training import SMOKE_TEXT

    t = docks.training
    texts = [t.budget.itemText(i) for i in range(t.budget.count())]
    assert SMOKE_TEXT not in texts and "1 h" in texts
    # scripts and tests still reach it by its text
    t.budget.setCurrentText(SMOKE_TEXT)
    assert t.build_config().profile == "tiny"


def test_developers_see_the_smoke_test(docks, monkeypatch):
    from napari_mtssl.widgets.training import SMOKE_TEXT, TrainingWidget

    monkeypatch.setenv("MTSSL_DEV", "1")
    t = TrainingWidget(docks.viewer)
    assert SMOKE_TEXT in [t.budget.itemText(i) for i in range(t.budget.count())]
    t.deleteLater()


def test_a_smoke_tests_results_say_they_are_not_trained(docks):
    from napari_mtssl.widgets.training import NOT_LEARNT

    t = docks.training
    report = tiny_report()
    t.show_results(report)
    names = [t.results.item(r, 0).text() for r in range(t.results.rowCount())]
    assert names and all(n.endswith(NOT_LEARNT) for n in names), names
    assert not t.smoke_note.isHidden()
    # the verdict line itself is the run's, word for word
    assert t.verdict.text() == "Student 0.120 vs 0.110 for the baseline of this run (+0.010)"
    # a run given steps by hand, too few to learn, is no better
    t.show_results(tiny_report(steps=20, profile="quick"))
    assert all(NOT_LEARNT in t.results.item(r, 0).text() for r in range(t.results.rowCount()))
    # a trained run is shown as it is
    t.show_results(tiny_report(steps=1200, profile="quick"))
    names = [t.results.item(r, 0).text() for r in range(t.results.rowCount())]
    assert names == ["teacher sdm", "baseline", "student"] and t.smoke_note.isHidden()


def test_a_finished_smoke_run_shows_its_results_labelled(laptop, qtbot, monkeypatch, tmp_path):
    from napari_mtssl.widgets.training import NOT_LEARNT

    viewer, training = laptop
    jobs = training.jobs
    fake_start(monkeypatch, jobs)
    training.train("all")
    jobs.last_state, jobs.last_error = "done", None
    jobs.last_result = tiny_report()
    jobs.job_finished.emit(jobs.last_result)
    qtbot.wait(300)
    assert NOT_LEARNT in training.now_label.text()
    for w in (training.smoke_note, training.results, training.now_label):
        assert not hidden_by_scrolling(w), (w, hidden_by_scrolling(w))
    assert training.results.horizontalScrollBar().maximum() == 0  # the table fits the width
    save_shot(viewer, "training_dock_1366_results.png", tmp_path)


def test_the_plan_fits_the_dock_width(laptop, qtbot, tmp_path):
    from napari_mtssl.training.config import parse_budget, profile
    from napari_mtssl.training.planning.planner import make_plan

    viewer, training = laptop
    training.budget.setCurrentText("2 h")  # the budget the plan is for, as the user chose it
    cfg = profile("quick", budget_s=parse_budget("2h"), device="cpu")
    plan = make_plan(fingerprint(), cfg, "all", probe=False).to_dict()
    training.show_plan(plan)
    qtbot.wait(300)
    assert "of the 2.0 h budget" in training.plan_label.text()
    assert training.body.minimumSizeHint().width() <= training.body_scroll.viewport().width()
    assert training.plan_label.width() <= training.body_scroll.viewport().width()
    assert not hidden_by_scrolling(training.budget)
    save_shot(viewer, "training_dock_1366_plan.png", tmp_path)


def test_the_plan_text_says_the_steps_of_its_table():
    """The width's reason named the steps the planner estimated before timing the network
    (1537 per model) above a table giving each model 2860: the plan now says the table's, in
    its reasons (which the CLI and the report print too)."""
    import re

    from napari_mtssl.training.config import parse_budget, profile
    from napari_mtssl.training.planning.planner import make_plan
    from napari_mtssl.widgets.training import plan_lines, plan_rows

    cfg = profile("quick", budget_s=parse_budget("2h"), device="cpu")
    plan = make_plan(fingerprint(), cfg, "all", probe=False).to_dict()
    seg = plan["steps"]["seg"]
    text = "\n".join(plan_lines(plan))
    said = [int(n) for n in re.findall(r"about (\d+) steps per model", text)]
    assert said and set(said) == {seg}, (said, seg)
    assert dict((m, n) for m, n, _ in plan_rows(plan))["baseline"] == str(seg)
    said = [int(n) for r in plan["reasons"] for n in re.findall(r"about (\d+) steps per model", r)]
    assert said and set(said) == {seg}, (said, seg)


def test_a_workspace_whose_last_run_was_a_smoke_test_reopens_with_a_real_budget(
    no_dev, sample_docks, monkeypatch
):
    from napari_mtssl.widgets.training import SMOKE_TEXT, TrainingWidget

    ws = sample_docks.session.workspace
    ws.new_run("all", {"profile": "tiny", "budget_s": 0, "stage1": {"tasks": ["sdm"]}})
    t = sample_docks.training
    t._on_workspace()
    assert t.budget.currentText() == "1 h" and t.selected_tasks() == ["sdm"]
    monkeypatch.setenv("MTSSL_DEV", "1")
    dev = TrainingWidget(sample_docks.viewer)  # a developer sees the run as it was
    assert dev.budget.currentText() == SMOKE_TEXT
    dev.deleteLater()


def test_settings_fold_and_every_control_is_one_click_away(laptop, qtbot):
    from qtpy.QtCore import QPoint, Qt

    _viewer, t = laptop
    assert not t.tasks_section.expanded and not t.settings_section.expanded
    assert t.curves_section.expanded and t.results_section.expanded
    assert "sdm" in t.tasks_section.summary.text()  # a folded section still says what is chosen
    assert "device auto" in t.settings_section.summary.text()
    # a click on the header's summary unfolds it too
    summary = t.tasks_section.summary
    qtbot.mouseClick(summary, Qt.MouseButton.LeftButton, pos=QPoint(5, 5))
    assert t.tasks_section.expanded
    assert all(row.checkbox.isVisible() for row in t.task_rows.values())
    t.settings_section.toggle.click()
    for w in (t.mode, t.student, t.device, t.executor):
        assert w.isVisible()
    t.device.setCurrentText("cpu")
    assert "device cpu" in t.settings_section.summary.text()
    t.settings_section.toggle.click()
    assert not t.mode.isVisible() and t.build_config().device == "cpu"
