"""A clinician's first session on the whole ACDC study, in napari at 1366 x 768: the dataset
folder imported with 3 labelled patients, a baseline trained from the Tasks tab long enough to
learn the anatomy, its validation Dice shown, a comparison on a validation scan, the next slices
proposed on the 160-scan study, and a second Propose cancelled.

The baseline trains a fixed number of steps in the shape a 10-minute budget plans: about what
that budget gives it on a free 2-core machine with the viewer beside it (one thread), so the
test asks for a model that has learnt without depending on how busy the machine is (timings: ``benchmarks/speed/run.py walk``).
Set ``MTSSL_SCREENSHOTS=<folder>`` to keep the picture of the proposals (walk_3_proposed.png,
``make screenshots``); the workspace then lies under ``~/mtssl-screenshots/walk``.
"""

from __future__ import annotations

import pytest

from tests.conftest import ACDC
from tests.widgets.test_e2e_acdc import screenshot_root, shot, wait_job

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.slow, pytest.mark.spare_worker]
if not (ACDC / "dataset.json").is_file():
    pytest.skip(f"ACDC not found at {ACDC} (set MTSSL_ACDC)", allow_module_level=True)

STEPS = 3000  # one thread, the shape a 10-minute budget plans: about 12 minutes on 2 free cores
# the network a 10-minute budget plans on a 2-core CPU (without a budget the planner would
# choose a larger one, hours at this step count)
SHAPE = dict(data__patch_size=128, data__batch_size=8, model__width=16, model__depth=4)
JOB_MS = 3 * 3600_000  # a very busy machine is slow, not wrong


def test_a_first_session_on_the_whole_study(make_napari_viewer, qtbot, tmp_path):
    from napari_mtssl import api
    from napari_mtssl.widgets import add_docks

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    docks = add_docks(viewer)
    study, training = docks["Study"], docks["Tasks and training"]
    compare, correct = docks["Compare models"], docks["Correct and retrain"]

    ws = study.open_dataset_folder(
        str(ACDC), str(screenshot_root(tmp_path, "walk") / "ws"), labelled=3, wait=True
    )
    assert ws is not None and len(ws.scan_ids()) >= 100
    patients = {api.patient_of(ws.record(s).name) for s in ws.scan_ids("train")}
    labelled = {
        api.patient_of(ws.record(s).name) for s in ws.scan_ids("train") if ws.labelled_slices(s)
    }
    assert len(labelled) == 3 and len(patients) > 3
    assert study.table.rowCount() == len(ws.scan_ids())

    # the baseline, from the Tasks tab's own settings, with the steps fixed
    training.device.setCurrentText("cpu")
    cfg = api.make_config("quick", device="cpu", budget_s=0, baseline__steps=STEPS, seed=0, **SHAPE)
    training._start("baseline", cfg)
    result = wait_job(qtbot, training.jobs, JOB_MS)
    base = result["models"]["baseline"]
    assert base["steps"] == STEPS
    assert base["mean_dice"] >= 0.7, base  # the anatomy learnt, on patients it never saw
    shown = {
        training.results.item(r, 0).text(): training.results.item(r, 4).text()
        for r in range(training.results.rowCount())
    }
    assert shown.get("baseline") == f"{base['mean_dice']:.3f}"

    # a comparison on a validation scan
    val = ws.scan_ids("val")[0]
    with qtbot.waitSignal(compare.comparison_ready, timeout=600_000) as got:
        compare.compare(val)
    assert "baseline" in got.args[0].labels and got.args[0].dice.get("baseline") is not None

    # the next slices to correct, from the baseline until a student exists
    with qtbot.waitSignal(correct.proposals_ready, timeout=600_000) as got:
        correct.propose()
    found = got.args[0]
    assert len(found) == 10 and all(ws.slice_status(c.scan)[c.z] == "unlabelled" for c in found)
    assert correct.proposals.count() == 10
    shot(viewer, "walk_3_proposed", tab=correct)

    # a second Propose, cancelled while it ranks
    with qtbot.waitSignal(correct.proposals_ready, timeout=600_000) as got:
        correct.propose()
        assert correct.proposing and correct.propose_button.text() == "Cancel"
        correct.propose()  # the same button: Cancel
    assert got.args[0] == [] or len(got.args[0]) == 10  # cancelled, or done before the click
    assert not correct.proposing and correct.propose_button.text() == "Propose"
