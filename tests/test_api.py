"""The api contract (docs/architecture.md) on the synthetic sample and a tiny dataset folder."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_mtssl import api


def make_dataset(
    root: Path,
    cases=("patient001_frame01", "patient001_frame02", "patient002_frame01", "patient003_frame01"),
    val=("patient004_frame01",),
    shape=(40, 48, 4),
) -> Path:
    """A Decathlon-layout dataset folder with a train/val split (x, y, z on disk)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    aff = np.diag([1.5, 1.5, 8.0, 1.0])
    for i, name in enumerate([*cases, *val]):
        lab = np.zeros(shape, np.uint8)
        lab[10 + i : 25 + i, 12:30, :] = 1
        lab[14 + i : 20 + i, 16:24, :] = 2
        img = (rng.normal(size=shape) * 0.1 + lab * 0.4).astype(np.float32)
        nib.save(nib.Nifti1Image(img, aff), root / "imagesTr" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), root / "labelsTr" / f"{name}.nii.gz")
    meta = {
        "name": "tiny",
        "labels": {"0": "background", "1": "outer", "2": "inner"},
        "splits": {"train": list(cases), "val": list(val)},
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_import_is_cheap():
    """The api and the CLI import without torch, Qt, napari or the scan readers (the viewer's
    start and ``napari-mtssl --help`` stay quick): what needs them imports them when needed."""
    heavy = ["torch", "monai", "qtpy", "napari", "nibabel", "pydicom"]
    code = (
        "import sys, napari_mtssl.api, napari_mtssl.cli; "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_studys_types_come_when_asked_for(tmp_path):
    """The docks' types and file helpers come through the api; the scan readers are imported
    when one is first asked for, not with the api."""
    code = (
        "import sys; from napari_mtssl import api; before = 'nibabel' in sys.modules; "
        "from napari_mtssl.api import SPLITS, Scan; print(before, SPLITS, Scan.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False ('train', 'val', 'test', 'unused') Scan"
    with pytest.raises(AttributeError):
        api.no_such_name  # noqa: B018
    data = make_dataset(tmp_path / "ds")
    # five labelled cases: patient001 twice, patient004 in the validation split
    assert api.labelled_patients(data) == 3
    assert api.read_scans(data / "imagesTr" / "patient002_frame01.nii.gz")[0].shape == (4, 48, 40)
    assert api.scan_file_filter().endswith(";;All files (*)")
    assert api.class_features({0: "background", 1: "outer"}) == {
        "index": [0, 1],
        "class": ["background", "outer"],
    }


def test_what_a_run_trains_is_checked_before_anything_starts(tmp_path):
    """``what`` is a :class:`~napari_mtssl.ids.What` or its text; anything else is refused
    with the choices, before a workspace is opened or a process started."""
    cfg = api.make_config("tiny")
    with pytest.raises(ValueError, match="what must be one of baseline, stage1"):
        api.start_job(tmp_path / "none", cfg, "stage3")
    with pytest.raises(ValueError, match="what must be one of"):
        api.start_plan_job(tmp_path / "none", cfg, "plan")


def test_patient_of():
    assert api.patient_of("patient007_frame12") == "patient007"
    assert api.patient_of("case_3") == "case_3"


def test_create_from_dataset_keeps_n_patients(tmp_path):
    data = make_dataset(tmp_path / "data")
    ws = api.create_workspace(tmp_path / "ws", source=data, labelled=1)
    assert ws.label_names == {0: "background", 1: "outer", 2: "inner"}
    train = {ws.record(s).name: s for s in ws.scan_ids("train")}
    assert set(train) == {
        "patient001_frame01",
        "patient001_frame02",
        "patient002_frame01",
        "patient003_frame01",
    }
    labelled = {n for n, s in train.items() if ws.labelled_slices(s)}
    assert labelled == {"patient001_frame01", "patient001_frame02"}  # both frames of patient 1
    (val,) = ws.scan_ids("val")
    assert len(ws.labelled_slices(val)) == 4


def test_list_and_check_tasks(tmp_path):
    infos = api.list_tasks()
    names = [t.name for t in infos]
    assert {"sdm", "rubik", "moco", "vicreg", "slices", "simsiam", "inpaint"} <= set(names)
    sdm = infos[names.index("sdm")]
    assert sdm.needs_labels and sdm.level == "dense" and sdm.summary
    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=0)
    res = api.check_tasks(ws, ["sdm", "inpaint", "nope"])
    assert res["inpaint"] is None
    assert "label" in res["sdm"]
    assert "nope" in res["nope"]
    batch = api.check_tasks(ws, ["vicreg"], api.make_config("tiny", data__task_batch_size=1))
    assert "at least 2" in batch["vicreg"]
    odd = api.make_config("tiny", stage1__task_overrides={"inpaint": {"nonsense": 1}})
    assert "nonsense" in api.check_tasks(ws, ["inpaint"], odd)["inpaint"]


def test_checking_tasks_does_not_import_torch(tmp_path):
    """The training dock checks the ticked tasks in the viewer's process: no torch import."""
    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=0)
    code = (
        "import sys\nfrom napari_mtssl import api\n"
        f"res = api.check_tasks({str(ws.root)!r}, ['sdm', 'inpaint'])\n"
        "print(res['inpaint'] is None, 'label' in res['sdm'], 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "False"]


def test_make_config():
    cfg = api.make_config("tiny", tasks="sdm,inpaint", seed=2, stage2__alpha=0.1)
    assert cfg.stage1.tasks == ["sdm", "inpaint"] and cfg.seed == 2 and cfg.stage2.alpha == 0.1
    with pytest.raises(ValueError):
        api.make_config("tiny", nonsense=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A whole run (``what="all"``, tasks sdm and inpaint, no all-joint model), not the session's
    ``trained_workspace`` (a baseline alone): these tests read the student, the teachers and the
    comparison of every model. The module's own, since its later tests add a correction and a
    run to it."""
    ws = api.create_workspace(tmp_path_factory.mktemp("a") / "ws", source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu", tasks=["sdm", "inpaint"], all_joint=False)
    report = api.run(api.train(ws, cfg, "all"))
    return ws, report


def test_models_predict_compare_history(trained):
    ws, report = trained
    models = api.list_models(ws)
    assert models[0] == "student" and "baseline" in models and "teacher:inpaint" in models
    assert "all_joint" not in models
    sid = ws.scan_ids("val")[0]
    scan = ws.load_scan(sid)
    pred = api.predict(ws, sid, model="baseline", device="cpu")
    assert pred.labels.shape == scan.shape and pred.labels.dtype == np.uint8
    assert pred.probs.shape == (ws.num_classes, *scan.shape)
    assert np.allclose(pred.probs.sum(0), 1, atol=1e-4)
    assert pred.run == report["run"]
    assert np.array_equal(api.predict(ws, scan, model="baseline", device="cpu").labels, pred.labels)
    comp = api.compare(ws, sid, device="cpu")
    assert set(comp.labels) == set(models)
    assert comp.teacher_mean.shape == (ws.num_classes, *scan.shape)
    assert comp.disagreement.shape == scan.shape and comp.disagreement.min() >= 0
    assert comp.slice_scores.shape == (scan.shape[0],)
    assert all(0 <= d <= 1 for d in comp.dice.values())
    with pytest.raises(ValueError, match="available"):
        api.predict(ws, sid, model="teacher:moco")
    hist = api.history(ws)
    assert hist[-1].run == report["run"] and hist[-1].dice("student") is not None


def test_accept_correction(trained):
    ws, _ = trained
    sid = ws.scan_ids("train")[-1]
    lab = np.zeros(ws.record(sid).shape, np.uint8)
    lab[3, 10:20, 10:20] = 1
    api.accept_correction(ws, sid, lab, [3])
    assert ws.slice_status(sid)[3] == "corrected"
    assert ws.labels(sid)[3, 15, 15] == 1


def test_start_job_inline(trained):
    ws, _ = trained
    cfg = api.make_config("tiny", device="cpu")
    job = api.start_job(ws, cfg, "baseline", inline=True)
    events = []
    deadline = time.monotonic() + 120
    while job.is_alive() and time.monotonic() < deadline:
        events += job.poll(0.2)
    job.join()
    assert job.error is None, job.error
    assert "baseline" in job.result["models"]
    assert any(e.type == "progress" for e in events + job.poll(0))


@pytest.mark.slow
def test_start_job_process_stop_and_resume(tmp_path):
    """The real worker process: stop mid-run, then resume the same run to the end."""
    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu", stage1__joint_steps=400)
    job = api.start_job(ws, cfg, "baseline")
    deadline = time.monotonic() + 300
    steps = 0
    while job.is_alive() and steps < 3 and time.monotonic() < deadline:
        steps += sum(e.type == "progress" for e in job.poll(0.5))
    job.stop()
    job.join()
    assert job.error is None, job.error
    assert job.result["stopped"] is True
    run_id = job.result["run"]
    job2 = api.start_job(ws, cfg, "baseline", resume=run_id)
    first = None
    while job2.is_alive() and time.monotonic() < deadline:
        for e in job2.poll(0.5):
            if e.type == "progress" and first is None:
                first = e.step
    job2.join()
    assert job2.error is None, job2.error
    assert first is not None and first > 1
    assert job2.result["models"]["baseline"]["steps"] == 400
