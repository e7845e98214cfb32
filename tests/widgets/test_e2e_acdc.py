"""A clinician's own data, start to finish, in napari at 1366 x 768 (issue: a clinician's own data
in napari without help): a small ACDC dataset folder imported through the Study tab with one
labelled patient, class names set, a mask file opened as Labels and attached, the smallest
training, comparison, a corrected slice, retraining, the student's mask and a hand-painted mask
saved from napari and checked with nibabel against the source file, then a job stopped, the
workspace reopened and the run resumed.

Set ``MTSSL_SCREENSHOTS=<folder>`` to keep the screenshots of each step (``make screenshots``
writes them into docs/images); the data and workspace then lie under ``~/mtssl-screenshots/e2e``,
so no temporary folder's path shows in a picture.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import ACDC

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.slow, pytest.mark.spare_worker]
if not (ACDC / "dataset.json").is_file():
    pytest.skip(f"ACDC not found at {ACDC} (set MTSSL_ACDC)", allow_module_level=True)

JOB_MS = 300_000
TRAIN = ["patient099", "patient038", "patient050"]
VAL = ["patient028"]


def small_acdc(root: Path) -> Path:
    """Three training patients and one validation patient of ACDC, as a dataset folder."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    cases = {"train": [], "val": []}
    for split, patients in (("train", TRAIN), ("val", VAL)):
        for p in patients:
            for frame in ("frame01", "frame02"):
                name = f"{p}_{frame}"
                for sub in ("imagesTr", "labelsTr"):
                    shutil.copy(ACDC / sub / f"{name}.nii.gz", root / sub / f"{name}.nii.gz")
                cases[split].append(name)
    meta = json.loads((ACDC / "dataset.json").read_text())
    meta["splits"] = cases
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def screenshot_root(tmp_path: Path, name: str) -> Path:
    """Where a test keeps its data and workspace: ``tmp_path``, or with ``MTSSL_SCREENSHOTS`` a
    fixed folder under the home directory (emptied first), whose path may show in a picture."""
    if not os.environ.get("MTSSL_SCREENSHOTS"):
        return tmp_path
    root = Path.home() / "mtssl-screenshots" / name
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def save_atomic(path: Path, write) -> Path:
    """``write(tmp)`` a PNG beside ``path``, then rename it over ``path``: a picture in the
    docs is never half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.part{path.suffix}")
    write(tmp)
    os.replace(tmp, path)
    return path


def shot(viewer, name: str, tab=None) -> None:
    """Keep the window's picture (``MTSSL_SCREENSHOTS``), with the dock ``tab`` in front."""
    folder = os.environ.get("MTSSL_SCREENSHOTS")
    if folder and tab is not None:
        from napari_mtssl.widgets.all_steps import AllStepsWidget

        parent = tab.parentWidget()
        while parent is not None and not isinstance(parent, AllStepsWidget):
            parent = parent.parentWidget()
        if parent is not None:
            parent.show_step(next(n for n, w in parent.widgets.items() if w is tab))
            # let the tab just brought to the front lay itself out before the picture (taken at
            # once, its pinned strip was still pressed into the height of the tab before it)
            from qtpy.QtWidgets import QApplication

            for _ in range(5):
                QApplication.processEvents()
    if folder:
        save_atomic(
            Path(folder) / f"{name}.png",
            lambda tmp: viewer.screenshot(str(tmp), canvas_only=False, flash=False),
        )


def wait_job(qtbot, jobs, timeout_ms: int = JOB_MS):
    if jobs.is_running:
        with qtbot.waitSignal(jobs.job_finished, timeout=timeout_ms):
            pass
    assert jobs.last_state == "done", f"job ended {jobs.last_state}: {jobs.last_error}"
    return jobs.last_result


def test_a_clinicians_own_data_start_to_finish(make_napari_viewer, qtbot, tmp_path):
    from napari_mtssl import api
    from napari_mtssl.io import read_labels
    from napari_mtssl.widgets import add_docks

    root = screenshot_root(tmp_path, "e2e")
    data = small_acdc(root / "acdc_small")
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    widgets = add_docks(viewer)
    study, training = widgets["Study"], widgets["Tasks and training"]
    compare, correct = widgets["Compare models"], widgets["Correct and retrain"]
    qtbot.wait(500)
    canvas = viewer.window._qt_viewer.canvas.native
    # beside napari's own layer panel and the plugin's dock, most of the screen stays canvas
    assert canvas.width() >= 550 and canvas.height() >= 450, (canvas.width(), canvas.height())

    # -- import with one labelled patient, in the background -------------------------------
    ws = study.open_dataset_folder(str(data), str(root / "ws"), labelled=1, wait=True)
    assert ws is not None and len(ws.scan_ids("train")) == 6
    labelled = [s for s in ws.scan_ids("train") if ws.labelled_slices(s)]
    assert len(labelled) == 2  # both frames of the first patient
    images = [ly for ly in viewer.layers if ly._type_string == "image"]
    assert len(images) == 1  # one scan shown, not the whole study
    study.apply_class_names("0: background, 1: RV, 2: myocardium, 3: LV")
    assert ws.label_names[1] == "RV"
    shot(viewer, "e2e_1_study")

    # -- a mask file opens as Labels and is attached to its scan -----------------------------
    target = next(s for s in ws.scan_ids("train") if not ws.labelled_slices(s))
    case = ws.record(target).name
    study.show_workspace_scan(target)
    (mask_layer,) = viewer.open(str(data / "labelsTr" / f"{case}.nii.gz"), plugin="napari-mtssl")
    assert mask_layer._type_string == "labels"
    assert study.attach_labels_layer(mask_layer.name, target) == target
    assert ws.labelled_slices(target)

    # -- the smallest training, then compare ---------------------------------------------------
    training.budget.setCurrentText("smoke test (a few steps)")
    training.device.setCurrentText("cpu")
    training.train("all")
    result = wait_job(qtbot, training.jobs)
    assert {"student", "baseline"} <= set(result["models"])
    val = ws.scan_ids("val")[0]
    with qtbot.waitSignal(compare.comparison_ready, timeout=120_000):
        compare.compare(val)
    student_layer = viewer.layers[f"{val}_student"]

    # -- correct a slice of the student's prediction, retrain ---------------------------------
    fix = next(s for s in ws.scan_ids("train") if not ws.labelled_slices(s))
    with qtbot.waitSignal(correct.edit_ready, timeout=120_000):
        correct.edit_prediction(fix)
    edit = viewer.layers[f"{fix}_edit"]
    assert edit.visible and viewer.layers[fix].visible
    edited = np.array(edit.data)
    edited[2, 60:90, 60:90] = 3
    edit.data = edited
    assert correct.accept_edited(fix) == [2]
    with qtbot.waitSignal(correct.job_finished, timeout=JOB_MS):
        correct.retrain_buttons["retrain-quick"].click()
    assert training.jobs.last_state == "done", training.jobs.last_error
    shot(viewer, "e2e_4_corrected", tab=correct)

    # -- masks saved from napari line up voxel for voxel with the source file -----------------
    source = nib.load(str(data / "imagesTr" / f"{ws.record(val).name}.nii.gz"))
    out = tmp_path / "student.nii.gz"
    student_layer.save(str(out), plugin="napari-mtssl")
    saved = nib.load(str(out))
    np.testing.assert_allclose(saved.affine, source.affine, atol=1e-5)
    assert saved.shape == source.shape
    scan = ws.load_scan(val)
    np.testing.assert_array_equal(read_labels(out, like=scan), np.asarray(student_layer.data))
    painted = np.zeros(scan.shape, np.uint8)
    painted[3, 100:120, 80:110] = 2
    hand = viewer.add_labels(np.zeros_like(painted), name="my mask")
    hand.data = painted
    out2 = tmp_path / "hand.nii.gz"
    hand.save(str(out2), plugin="napari-mtssl")
    h = nib.load(str(out2))
    np.testing.assert_allclose(h.affine, source.affine, atol=1e-5)
    # the painted voxels, found in the file's own voxel order, lie where the scan's are
    ours = scan.array[painted > 0]
    theirs = np.asarray(source.dataobj)[np.asarray(h.dataobj) > 0]
    np.testing.assert_allclose(np.sort(ours), np.sort(theirs.astype(np.float32)), rtol=1e-5)

    # -- a job stopped, the workspace reopened, the run resumed ------------------------------
    cfg = api.make_config("tiny", device="cpu", baseline__steps=3000, stage1__tasks=["inpaint"])
    jobs = training.jobs
    with qtbot.waitSignal(
        jobs.job_event,
        timeout=JOB_MS,
        check_params_cb=lambda e: e.type == "progress" and e.step >= 3,
    ):
        jobs.start(ws, cfg, "baseline")
    with qtbot.waitSignal(jobs.job_finished, timeout=JOB_MS):
        training.stop_button.click()
    assert jobs.last_state == "stopped"
    study.open_workspace(str(ws.root))
    # the comparison's layers went with the workspace; the correction layer stays, hidden
    roles = {str(ly.metadata.get("mtssl_role")): ly for ly in viewer.layers}
    assert "disagreement" not in roles and not any(r.startswith("model") for r in roles), roles
    assert [ly.visible for r, ly in roles.items() if r == "edit"] in ([], [False])
    shown = [
        ly.name
        for ly in viewer.layers
        if ly._type_string == "image" and ly.visible and ly.metadata.get("mtssl_workspace")
    ]
    assert len(shown) == 1, shown  # one scan of the reopened workspace, none left from before
    # the mask the user opened and attached to another scan does not lie over this one
    assert not viewer.layers[mask_layer.name].visible
    assert not training.resume_button.isHidden()
    with qtbot.waitSignal(
        jobs.job_event, timeout=JOB_MS, check_params_cb=lambda e: e.type == "resumed"
    ) as resumed:
        training.resume_button.click()
    start = resumed.args[0].step
    assert start >= 3
    # the picture once the resumed run has gone on training past where it stopped
    with qtbot.waitSignal(
        jobs.job_event,
        timeout=JOB_MS,
        check_params_cb=lambda e: e.type == "progress" and e.step >= start + 40,
    ):
        pass
    qtbot.wait(300)
    assert jobs.is_running
    shot(viewer, "e2e_5_resumed", tab=training)
    with qtbot.waitSignal(jobs.job_finished, timeout=JOB_MS):
        training.stop_button.click()
