"""Screenshots of the plugin's steps for the docs, from a real napari window.

Run under Xvfb from the repository root::

    xvfb-run -a .venv/bin/python docs/make_screenshots.py [--profile tiny]

It loads the sample study into a temporary workspace, shows the plan for a 1-hour budget
(Estimate), trains with the given profile (tiny: a few seconds), compares the models on one
scan, opens the student's prediction for editing, corrects one slice, accepts it, retrains
quickly, and saves one PNG per step, and the whole window at 1366 x 768, into ``--out`` (a new
temporary folder by default): a check that every step draws, not pictures for the docs (a
tiny run's masks are noise).

With ``--workspace W --scan S`` it trains nothing: it opens a workspace whose models were trained
on real scans (e.g. a run of ``napari-mtssl train ../shared/data/acdc``), compares them on scan
``S`` at 1366 x 768, goes to the slice where the teachers disagree most, and saves
``real_compare.png``; then opens the student's prediction for editing (``real_correct.png``),
proposes the next slices to correct and opens the first (``real_propose.png``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGES = Path(__file__).resolve().parent / "images"


def wait_for(app, done, timeout: float = 3600.0, what: str = "the job") -> None:
    """Spin the Qt event loop until ``done()`` or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish within {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.02)


def save_dock(widget, path: Path) -> Path:
    widget.grab().save(str(path))
    print(f"wrote {path}")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--profile", default="tiny", help="tiny (a few steps), or a time budget (10m, 1h, ...)"
    )
    parser.add_argument(
        "--out", help="without --workspace: the folder for the pictures (default: a new one)"
    )
    parser.add_argument("--workspace", help="a workspace with trained models: no training")
    parser.add_argument("--scan", help="with --workspace: the scan id to compare on")
    parser.add_argument(
        "--slice", type=int, help="with --workspace: the slice to show (default: most disagreement)"
    )
    args = parser.parse_args()
    if args.workspace:
        real_workspace(args.workspace, args.scan, args.slice)
        return

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_mtssl.widgets import DOCKS, add_docks
    from napari_mtssl.widgets._probe import StallProbe
    from napari_mtssl.widgets.all_steps import AllStepsWidget

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mtssl-steps-"))
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-mtssl")
    viewer.window._qt_window.resize(1500, 1000)
    widgets = add_docks(viewer)
    study, training, compare, correct = (widgets[n] for n in DOCKS)
    app = QApplication.instance()
    jobs = study.session.jobs

    def show_dock(widget) -> None:
        # the steps are tabs of one dock: bring this one to the front before a screenshot
        parent = widget.parentWidget()
        while parent is not None and not isinstance(parent, AllStepsWidget):
            parent = parent.parentWidget()
        if parent is not None:
            name = next(n for n, w in parent.widgets.items() if w is widget)
            parent.show_step(name)
        app.processEvents()

    folder = tempfile.mkdtemp(prefix="mtssl-screens-")
    ws = study.load_sample(str(Path(folder) / "ws"))
    app.processEvents()
    show_dock(study)
    save_dock(study, out / "study_dock.png")
    viewer.screenshot(str(out / "window_study.png"), canvas_only=False)

    # the plan for a 1-hour budget, as a user sees it before training
    training.device.setCurrentText("cpu")
    training.budget.setCurrentText("1 h")
    show_dock(training)
    training.estimate("all")
    wait_for(app, lambda: not jobs.is_running, timeout=300, what="planning")
    app.processEvents()
    save_dock(training, out / "training_plan.png")

    training.budget.setCurrentText(
        "smoke test (a few steps)" if args.profile == "tiny" else args.profile
    )
    show_dock(training)
    probe = StallProbe().start()
    training.train("all")
    wait_for(app, lambda: not jobs.is_running, what="training")
    print(f"longest event-loop stall during training: {probe.stop():.1f} ms")
    if jobs.last_state != "done":
        raise SystemExit(f"training ended {jobs.last_state}: {jobs.last_error}")
    app.processEvents()
    save_dock(training, out / "training_dock.png")

    scan_id = ws.scan_ids()[0]
    results = []
    compare.comparison_ready.connect(results.append)
    show_dock(compare)
    compare.compare(scan_id)
    wait_for(app, lambda: bool(results), timeout=120, what="the comparison")
    compare.go_to_slice(int(np.argmax(results[0].slice_scores)))
    app.processEvents()
    save_dock(compare, out / "compare_dock.png")
    viewer.screenshot(str(out / "window_compare.png"), canvas_only=False)

    # correct a training scan that nobody labelled: that is what adds to the training set
    target = next(
        (s for s in ws.scan_ids("train") if not ws.labelled_slices(s)), ws.scan_ids("train")[-1]
    )
    ready = []
    correct.edit_ready.connect(ready.append)
    show_dock(correct)
    correct.edit_prediction(target)
    wait_for(app, lambda: bool(ready), timeout=120, what="the prediction")
    for layer in viewer.layers:
        layer.visible = layer.name in (target, f"{target}_edit")
    layer = viewer.layers[f"{target}_edit"]
    z = ws.record(target).shape[0] // 2
    data = np.array(layer.data)
    data[z, 30:50, 30:50] = 1  # a stand-in for a brush stroke
    layer.data = data
    viewer.dims.set_current_step(0, z)
    correct.accept_edited(target)
    app.processEvents()
    viewer.screenshot(str(out / "window_correct.png"), canvas_only=False)
    correct.retrain("retrain-quick")
    wait_for(app, lambda: not jobs.is_running, what="retraining")
    app.processEvents()
    save_dock(correct, out / "correct_dock.png")
    # the whole window on a 1366 x 768 laptop screen
    viewer.window._qt_window.resize(1366, 768)
    show_dock(compare)
    app.processEvents()
    time.sleep(0.5)
    app.processEvents()
    viewer.screenshot(str(out / "window_1366x768.png"), canvas_only=False)
    print(f"the steps' pictures are in {out}")
    viewer.close()


def real_workspace(folder: str, scan_id: str | None, z: int | None = None) -> None:
    """The compare and correct views of models trained on real scans, at 1366 x 768."""
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from napari_mtssl.widgets import DOCKS, add_docks

    viewer = napari.Viewer(title="napari-mtssl")
    viewer.window._qt_window.resize(1366, 768)
    widgets = add_docks(viewer)
    study, _, compare, correct = (widgets[n] for n in DOCKS)
    app = QApplication.instance()
    ws = study.open_workspace(folder)
    scan_id = scan_id or ws.scan_ids("val")[0]
    results = []
    compare.comparison_ready.connect(results.append)
    compare.compare(scan_id)
    wait_for(app, lambda: bool(results), timeout=600, what="the comparison")
    z = int(np.argmax(results[0].slice_scores)) if z is None else z
    compare.go_to_slice(z)
    parent = compare.parentWidget()
    while parent is not None and not hasattr(parent, "show_step"):
        parent = parent.parentWidget()
    if parent is not None:
        parent.show_step(next(n for n, w in parent.widgets.items() if w is compare))
    for layer in viewer.layers:  # the scan, the student and the disagreement, as a user starts
        layer.visible = layer.name in (scan_id, f"{scan_id}_student", f"{scan_id}_disagreement")
        if layer.name == f"{scan_id}_disagreement":
            layer.opacity = 0.5  # the student's mask stays readable under it
    app.processEvents()
    time.sleep(0.5)
    app.processEvents()
    viewer.screenshot(str(IMAGES / "real_compare.png"), canvas_only=False)
    print(f"wrote {IMAGES / 'real_compare.png'} (slice {z})")
    ready = []
    correct.edit_ready.connect(ready.append)
    correct.edit_prediction(scan_id)
    wait_for(app, lambda: bool(ready), timeout=600, what="the prediction")
    for layer in viewer.layers:
        layer.visible = layer.name in (scan_id, f"{scan_id}_edit")
    viewer.dims.set_current_step(0, z)
    parent.show_step(next(n for n, w in parent.widgets.items() if w is correct))
    app.processEvents()
    time.sleep(0.5)
    app.processEvents()
    viewer.screenshot(str(IMAGES / "real_correct.png"), canvas_only=False)
    print(f"wrote {IMAGES / 'real_correct.png'}")
    # the next slices to correct, by the measured strategy; the first one opened for editing
    correct.propose()
    wait_for(app, correct.propose_button.isEnabled, timeout=1800, what="the proposals")
    first = correct.proposals.item(0)
    target = first.data(Qt.ItemDataRole.UserRole)
    if target:
        ready.clear()
        correct.proposals.itemClicked.emit(first)
        wait_for(app, lambda: bool(ready), timeout=600, what="the prediction")
        for layer in viewer.layers:
            layer.visible = layer.name in (target[0], f"{target[0]}_edit")
    app.processEvents()
    time.sleep(0.5)
    app.processEvents()
    viewer.screenshot(str(IMAGES / "real_propose.png"), canvas_only=False)
    print(f"wrote {IMAGES / 'real_propose.png'} ({first.text()})")
    viewer.close()


if __name__ == "__main__":
    main()
