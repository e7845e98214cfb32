"""The whole loop through the docks on the sample study, with the engine's tiny profile.

Training runs in a real worker process (api.start_job), so these tests take tens of seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QEvent, Qt
from qtpy.QtGui import QCloseEvent
from qtpy.QtWidgets import QMessageBox

from napari_mtssl.widgets._probe import StallProbe

pytestmark = [pytest.mark.gui, pytest.mark.slow, pytest.mark.spare_worker]

JOB_TIMEOUT_MS = 240_000


def tiny(training) -> None:
    training.budget.setCurrentText("smoke test (a few steps)")
    training.device.setCurrentText("cpu")


def long_stage1_config(steps: int):
    """A stage-1 job long enough to be stopped, closed or killed while it runs."""
    from napari_mtssl import api

    return api.make_config(
        profile="tiny",
        device="cpu",
        stage1__joint_steps=steps,
        stage1__tasks=["sdm"],
        stage1__modes="joint",
    )


def wait_job(qtbot, docks, timeout=JOB_TIMEOUT_MS):
    jobs = docks.session.jobs
    if jobs.is_running:
        with qtbot.waitSignal(jobs.job_finished, timeout=timeout):
            pass
    assert jobs.last_state == "done", f"job ended {jobs.last_state}: {jobs.last_error}"
    return jobs.last_result


def test_whole_loop(sample_docks, qtbot):
    from napari_mtssl import api

    d = sample_docks
    ws = d.session.workspace
    tiny(d.training)
    assert d.training.build_config().profile == "tiny"

    # -- train all, measuring how long the event loop ever stalls meanwhile -------------------
    probe = StallProbe()
    with probe, qtbot.waitSignal(d.training.job_finished, timeout=JOB_TIMEOUT_MS):
        assert d.training.train("all") is not None
    result = d.session.jobs.last_result
    assert d.session.jobs.last_state == "done", d.session.jobs.last_error
    print(
        f"\n[stall probe] longest event-loop stall during 'train all': {probe.max_stall_ms:.1f} ms"
    )
    # what the figure above is for, without a bound a busy machine could break: the training ran
    # in a worker process, and the event loop went on ticking while it did
    assert d.session.jobs.handle._process is not None and probe.ticks > 1
    assert "student" in result["models"] and "baseline" in result["models"]
    assert d.training.results.rowCount() >= 3
    # one line says how the student compared with the run's baseline
    verdict = d.training.verdict.text()
    assert verdict.startswith("Student ") and "the baseline of this run" in verdict
    assert verdict == result["comparison"]["line"][:1].upper() + result["comparison"]["line"][1:]
    first_round = len(api.history(ws))

    # -- compare: one layer per model and the disagreement map ---------------------------------
    scan_id = ws.scan_ids()[0]
    with qtbot.waitSignal(d.compare.comparison_ready, timeout=60_000):
        d.compare.compare(scan_id)
    names = [ly.name for ly in d.viewer.layers]
    assert f"{scan_id}_student" in names
    assert f"{scan_id}_baseline" in names
    assert any(n.startswith(f"{scan_id}_teacher-") for n in names), names
    dis = d.viewer.layers[f"{scan_id}_disagreement"]
    assert dis.blending == "additive" and dis.colormap.name in ("magma", "inferno")
    assert d.compare.ranked.count() == ws.record(scan_id).shape[0]
    item = d.compare.ranked.item(1)
    d.compare.ranked.itemClicked.emit(item)
    z_clicked = int(item.text().split()[1])
    assert d.viewer.dims.current_step[0] == z_clicked
    assert d.compare.grid.z == z_clicked
    # the models ran in the session's engine process, which ends with the viewer (below)
    engine = d.session.engine._worker
    assert engine is not None and engine.usable

    # -- the next slices to correct: the measured strategy first, each with its reason ----------
    from napari_mtssl.active import RECOMMENDED, candidates

    assert d.correct.strategy.currentData() == RECOMMENDED
    assert "(default)" in d.correct.strategy.currentText()
    assert "no ranking by the models beat random slices" in d.correct.strategy_note.text()
    d.correct.strategy.setCurrentIndex(d.correct.strategy.findData("disagreement"))
    with qtbot.waitSignal(d.correct.proposals_ready, timeout=60_000) as ready:
        d.correct.propose()
    proposed = ready.args[0]
    assert not d.correct.proposing and d.correct.propose_button.text() == "Propose"
    # pressed again while it ranks, Propose cancels and says so; the list is then empty
    with qtbot.waitSignal(d.correct.proposals_ready, timeout=60_000) as cancelled:
        d.correct.propose()
        assert d.correct.proposing and d.correct.propose_button.text() == "Cancel"
        d.correct.propose()
    assert cancelled.args == [[]] and "cancelled" in d.correct.proposals.item(0).text()
    assert not d.correct.proposing and d.correct.propose_button.isEnabled()
    d.correct.show_proposals(proposed)
    items = [d.correct.proposals.item(i) for i in range(d.correct.proposals.count())]
    free = candidates(ws)
    assert len(items) == min(10, sum(map(len, free.values())))
    scan_p, z_p = items[0].data(Qt.ItemDataRole.UserRole)
    assert z_p in free[scan_p] and "teachers disagree" in items[0].text()
    with qtbot.waitSignal(d.correct.edit_ready, timeout=60_000):
        d.correct.proposals.itemClicked.emit(items[0])
    qtbot.waitUntil(lambda: d.viewer.dims.current_step[0] == z_p, timeout=5_000)
    assert f"{scan_p}_edit" in [ly.name for ly in d.viewer.layers]
    assert d.session.engine._worker is engine  # one process served Compare, Propose and Edit

    # -- edit a slice of the student's prediction and accept it -----------------------------------
    target = ws.scan_ids()[-1]
    with qtbot.waitSignal(d.correct.edit_ready, timeout=60_000):
        d.correct.edit_prediction(target)
    layer = d.viewer.layers[f"{target}_edit"]
    z = 3
    d.viewer.dims.set_current_step(0, z)  # the slice is on screen: its correction starts
    edited = np.array(layer.data)
    edited[z, 20:40, 20:40] = 1 if edited[z, 30, 30] != 1 else 0
    layer.data = edited  # as napari's paint tools would leave it
    assert d.correct.pending_slices(target) == [z]
    assert d.correct.accept_edited(target) == [z]
    assert d.correct.pending_slices(target) == []
    assert ws.slice_status(target)[z] == "corrected"
    np.testing.assert_array_equal(ws.labels(target)[z], edited[z])
    prov = ws.provenance(target, z)[-1]
    assert prov["by"] == "user" and prov.get("round") is not None
    assert prov.get("effort_s", -1) >= 0  # seconds from showing the slice to accepting it

    # -- retrain quick: a new round with its metrics --------------------------------------------
    with qtbot.waitSignal(d.correct.job_finished, timeout=JOB_TIMEOUT_MS):
        d.correct.retrain_buttons["retrain-quick"].click()
    assert d.session.jobs.last_state == "done", d.session.jobs.last_error
    history = api.history(ws)
    assert len(history) > first_round
    assert d.correct.history.rowCount() == len(history)
    last = history[-1]
    assert last.what == "retrain-quick" and last.dice("student") is not None, last
    # the round records the correction it trained on and the time spent on it
    assert last.corrections.slices == 1 and last.corrections.by == {"user": 1}
    assert last.corrections.timed_slices == 1
    assert last.corrections.effort_s == prov["effort_s"]
    headers = [d.correct.history.horizontalHeaderItem(c).text() for c in range(7)]
    assert headers[5:7] == ["Corrected", "Effort"]
    row = d.correct.history.rowCount() - 1
    assert d.correct.history.item(row, 5).text() == "1"
    assert d.correct.history.item(row, 6).text().endswith("min")
    d.session.jobs.release()  # what closing the viewer does: the engine's process ends
    assert not engine._process.is_alive() and d.session.engine._worker is None


def test_stop_keeps_a_checkpoint(sample_docks, qtbot):

    d = sample_docks
    ws = d.session.workspace
    config = long_stage1_config(2000)
    jobs = d.session.jobs
    from napari_mtssl.training.running.jobs import JobWorker

    # opening the workspace made a worker ready (the job below runs in it)
    qtbot.waitUntil(lambda: isinstance(jobs._spare, JobWorker), timeout=60_000)
    with qtbot.waitSignal(
        jobs.job_event,
        timeout=JOB_TIMEOUT_MS,
        check_params_cb=lambda e: e.type == "progress" and e.step >= 3,
    ):
        jobs.start(ws, config, "stage1")
    assert d.training.stop_button.isEnabled()
    stopped_worker = jobs.handle
    from napari.utils.notifications import notification_manager

    toasts = len(notification_manager.records)
    with qtbot.waitSignal(jobs.job_finished, timeout=JOB_TIMEOUT_MS):
        d.training.stop_button.click()
    assert jobs.last_state == "stopped"
    # the stopped job's process, engine imported, waits for the resume instead of ending
    assert jobs._spare is stopped_worker and stopped_worker.usable
    # said in the dock's line, which the next run replaces; no toast left behind
    assert "stopped" in d.training.now_label.text() + d.training.now_label.toolTip()
    assert not any("stopped" in str(n.message) for n in notification_manager.records[toasts:])
    checkpoints = [p for run in ws.runs() for p in run.checkpoint_dir.glob("*") if p.is_file()]
    assert checkpoints, "a stopped job must leave a checkpoint"
    assert d.training.train_buttons["all"].isEnabled()
    # the stopped run is offered for resuming; resuming goes on in the same run
    assert not d.training.resume_button.isHidden()
    run_id = ws.runs()[-1].id
    with qtbot.waitSignal(
        jobs.job_event,
        timeout=JOB_TIMEOUT_MS,
        check_params_cb=lambda e: e.type == "resumed",
    ) as blocker:
        d.training.resume_button.click()
    assert blocker.args[0].step > 0
    assert jobs.handle is stopped_worker  # the resume ran in it
    assert d.training.resume_button.isHidden()  # not offered while it trains again
    with qtbot.waitSignal(jobs.job_finished, timeout=JOB_TIMEOUT_MS):
        d.training.stop_button.click()
    assert [r.id for r in ws.runs()] == [run_id]


def test_closing_while_training_asks_first(sample_docks, qtbot, monkeypatch):

    d = sample_docks
    jobs = d.session.jobs
    config = long_stage1_config(2000)
    with qtbot.waitSignal(jobs.job_event, timeout=JOB_TIMEOUT_MS):
        jobs.start(ws := d.session.workspace, config, "stage1")
    assert ws is not None
    asked = []

    def answer(reply):
        def question(*args, **kwargs):
            asked.append(args[1] if len(args) > 1 else "")
            return reply

        return question

    window = d.viewer.window._qt_window
    # "No": the close event is swallowed and training goes on
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.No))
    event = QCloseEvent()
    assert jobs.eventFilter(window, event) is True
    assert not event.isAccepted()
    assert asked and jobs.is_running
    # "Yes": the job is stopped cleanly before the window may close
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    assert jobs.eventFilter(window, QCloseEvent()) is False
    assert not jobs.is_running and jobs.last_state == "stopped"
    assert len(asked) == 2
    # with nothing running, closing does not ask
    assert jobs.eventFilter(window, QCloseEvent()) is False
    assert len(asked) == 2
    assert QEvent.Type.Close == QCloseEvent().type()


def test_a_killed_worker_is_reported_and_loses_no_labels(sample_docks, qtbot, monkeypatch):
    """The worker process dies mid-run (as when the system kills it for memory): napari shows
    an error, stays usable, and the corrections stored before are all still there."""
    import os
    import signal

    import napari.utils.notifications as notifications

    from napari_mtssl import api

    d = sample_docks
    ws = d.session.workspace
    sid = ws.scan_ids("train")[-1]
    corrected = np.zeros(ws.record(sid).shape, np.uint8)
    corrected[2, 10:20, 10:20] = 1
    api.accept_correction(ws, sid, corrected, [2], by="tester")
    before = (ws.labels(sid).copy(), ws.slice_status(sid), ws.provenance(sid, 2))

    errors: list[str] = []
    monkeypatch.setattr(notifications, "show_error", errors.append)
    jobs = d.session.jobs
    config = long_stage1_config(5000)
    with qtbot.waitSignal(
        jobs.job_event,
        timeout=JOB_TIMEOUT_MS,
        check_params_cb=lambda e: e.type == "progress",  # the run exists and trains
    ):
        jobs.start(ws, config, "stage1")
    with qtbot.waitSignal(jobs.job_finished, timeout=JOB_TIMEOUT_MS):
        os.kill(jobs.handle._process.pid, signal.SIGKILL)
    assert jobs.last_state == "failed"
    assert any("ended unexpectedly" in e for e in errors), errors
    assert d.training.train_buttons["all"].isEnabled()  # ready for the next run
    assert ws.runs()[-1].status == "interrupted"  # not "running" forever
    assert not d.training.resume_button.isHidden()  # and offered for resuming

    reopened = api.open_workspace(ws.root)
    np.testing.assert_array_equal(reopened.labels(sid), before[0])
    assert reopened.slice_status(sid) == before[1]
    assert reopened.provenance(sid, 2) == before[2]
    assert before[1][2] == "corrected"
