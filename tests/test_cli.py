"""``napari-mtssl`` commands on synthetic data; ACDC when it is present (slow)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_mtssl.cli import main
from tests.conftest import ACDC
from tests.test_api import make_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``napari-mtssl train`` itself on a dataset folder (tasks sdm and inpaint, all-joint):
    the command under test, so not the session's ``trained_workspace`` (a baseline trained
    through the API on the built-in sample). Returns (exit code, data folder, workspace)."""
    root = tmp_path_factory.mktemp("cli")
    data = make_dataset(root / "data")
    out = root / "ws"
    rc = main(
        [
            "train",
            str(data),
            "--out",
            str(out),
            "--labelled",
            "2",
            "--profile",
            "tiny",
            "--tasks",
            "sdm,inpaint",
            "--device",
            "cpu",
            "--all-joint",
            "--quiet",
        ]
    )
    return rc, data, out


def test_train_writes_reports(trained, capsys):
    rc, _, out = trained
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert {"baseline", "teacher:sdm", "teacher:inpaint", "all_joint", "student"} <= set(
        report["models"]
    )
    md = (out / "report.md").read_text()
    assert "| student |" in md and "HD95" in md and "Teacher selection" in md
    assert "## The plan" in md and "patches at" in md
    pngs = list((out / "report").glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)


def test_predict_writes_mask(trained, tmp_path, capsys):
    _, data, out = trained
    image = data / "imagesTr" / "patient004_frame01.nii.gz"
    mask = tmp_path / "mask.nii.gz"
    assert main(["predict", str(out), str(image), "--out", str(mask), "--device", "cpu"]) == 0
    m = nib.load(str(mask))
    assert m.shape == nib.load(str(image)).shape
    assert np.asarray(m.dataobj).max() <= 2
    assert "wrote" in capsys.readouterr().out


def test_evaluate_scores_json(trained, tmp_path):
    _, data, out = trained
    scores = tmp_path / "scores.json"
    assert (
        main(
            [
                "evaluate",
                str(out),
                str(data),
                "--models",
                "baseline,student",
                "--out",
                str(scores),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    s = json.loads(scores.read_text())
    assert s["cases"] == ["patient004_frame01"]
    assert set(s["models"]) == {"baseline", "student"}
    assert 0 <= s["models"]["student"]["mean_dice"] <= 1


def _one_line_error(capsys, argv, *, expect: str):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert expect in err
    return err


def test_bad_inputs_give_one_line(tmp_path, capsys, trained):
    _, data, out = trained
    _one_line_error(
        capsys,
        ["train", str(tmp_path / "missing"), "--out", str(tmp_path / "w")],
        expect="no such dataset",
    )
    _one_line_error(
        capsys,
        ["train", str(data), "--out", str(tmp_path / "w1"), "--labelled", "0"],
        expect="--labelled",
    )
    _one_line_error(
        capsys,
        [
            "train",
            str(data),
            "--out",
            str(tmp_path / "w2"),
            "--tasks",
            "sdm,bogus",
            "--profile",
            "tiny",
        ],
        expect="bogus",
    )
    _one_line_error(capsys, ["train", str(data)], expect="--out")
    _one_line_error(
        capsys,
        ["train", str(data), "--out", str(tmp_path / "w4"), "--address", "ray://h:1"],
        expect="--address is the Ray cluster's",
    )
    _one_line_error(
        capsys,
        ["train", str(data), "--out", str(tmp_path / "w5"), "--units-at-once", "-1"],
        expect="--units-at-once",
    )
    _one_line_error(
        capsys,
        ["predict", str(out), str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "m.nii.gz")],
        expect="no such file",
    )
    _one_line_error(
        capsys,
        ["predict", str(out), str(data / "dataset.json"), "--out", str(tmp_path / "m.nii.gz")],
        expect="dataset.json",
    )
    _one_line_error(capsys, ["predict", str(tmp_path), "x", "--out", "y"], expect="workspace")
    bad = tmp_path / "bad"
    (bad / "imagesTr").mkdir(parents=True)
    (bad / "imagesTr" / "a.nii.gz").write_bytes(b"not a nifti")
    (bad / "dataset.json").write_text('{"labels": {"0": "background", "1": "x"}}')
    _one_line_error(capsys, ["train", str(bad), "--out", str(tmp_path / "w3")], expect="a.nii.gz")
    assert not (tmp_path / "w3").exists()  # no half-imported workspace left behind


def test_budget_errors_are_one_line(tmp_path, capsys, trained):
    _, data, _ = trained
    _one_line_error(
        capsys,
        ["train", str(data), "--out", str(tmp_path / "w"), "--budget", "soon"],
        expect="write it like 10m",
    )
    # a budget far too small for three tasks says what it would take, before any training
    _one_line_error(
        capsys,
        [
            "train",
            str(data),
            "--out",
            str(tmp_path / "w2"),
            "--labelled",
            "2",
            "--budget",
            "10s",
            "--tasks",
            "sdm,vicreg,inpaint",
            "--device",
            "cpu",
        ],
        expect="budget of at least",
    )
    ws = tmp_path / "w2"
    assert not (ws / "runs").exists() or not list((ws / "runs").iterdir())


def test_argparse_errors_exit_nonzero(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "x", "--profile", "enormous"])
    assert e.value.code != 0


def test_empty_labelled_set(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", cases=("p1_frame01",), val=())
    for f in (data / "labelsTr").glob("*"):
        f.unlink()
    _one_line_error(
        capsys,
        ["train", str(data), "--out", str(tmp_path / "w"), "--profile", "tiny", "--device", "cpu"],
        expect="no labelled",
    )


@pytest.mark.slow
@pytest.mark.skipif(not ACDC.is_dir(), reason=f"ACDC not found at {ACDC}")
def test_acdc_one_patient_tiny_budget(tmp_path):
    out = tmp_path / "acdc"
    rc = main(
        [
            "train",
            str(ACDC),
            "--out",
            str(out),
            "--labelled",
            "1",
            "--profile",
            "tiny",
            "--tasks",
            "sdm",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["labelled_train_scans"] == 2  # both frames of one patient
    assert set(report["models"]["student"]["dice"]) == {
        "right ventricle",
        "myocardium",
        "left ventricle",
    }


@pytest.mark.slow
def test_demo_headless(tmp_path, monkeypatch, capsys):
    from napari_mtssl import api

    real = api.make_config
    monkeypatch.setattr(api, "make_config", lambda profile, budget=None, **kw: real("tiny", **kw))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "report.md").is_file()
    assert "| student |" in capsys.readouterr().out


def test_outputs_never_replace_inputs_or_workspace_files(trained, tmp_path, capsys):
    _, data, out = trained
    image = data / "imagesTr" / "patient004_frame01.nii.gz"
    before = image.read_bytes()
    _one_line_error(
        capsys, ["predict", str(out), str(image), "--out", str(image), "--force"], expect="input"
    )
    _one_line_error(
        capsys,
        ["predict", str(out), str(image), "--out", str(data / "imagesTr" / "new.nii.gz")],
        expect="inside the input folder",
    )
    _one_line_error(
        capsys,
        ["predict", str(out), str(image), "--out", str(out / "mask.nii.gz"), "--force"],
        expect="inside the workspace",
    )
    _one_line_error(
        capsys,
        ["evaluate", str(out), str(data), "--out", str(data / "dataset.json"), "--force"],
        expect="inside the input folder",
    )
    assert image.read_bytes() == before
    existing = tmp_path / "mask.nii.gz"
    existing.write_bytes(b"mine")
    _one_line_error(
        capsys, ["predict", str(out), str(image), "--out", str(existing)], expect="--force"
    )
    assert existing.read_bytes() == b"mine"
    existing.chmod(0o640)
    argv = ["predict", str(out), str(image), "--out", str(existing), "--force", "--device", "cpu"]
    assert main(argv) == 0
    assert existing.read_bytes() != b"mine" and existing.stat().st_mode & 0o777 == 0o640


def test_overlay_crop_and_slice_dice():
    from napari_mtssl.cli import _crop, _slice_dice

    truth = np.zeros((200, 200), np.uint8)
    truth[90:110, 80:100] = 1
    pred = truth.copy()
    pred[90:110, 80:90] = 2  # half of class 1 called class 2
    # 20 px of foreground, a margin of 24 px each side (35 % of 20 is less)
    assert _crop(truth, pred) == (slice(66, 134), slice(56, 124))
    assert _crop(np.zeros_like(truth)) == (slice(None), slice(None))
    # class 1: 2*200/(400+200); class 2 absent from the truth: 0; class 3 absent in both: left out
    assert _slice_dice(truth, pred, 4) == pytest.approx((2 * 200 / 600 + 0.0) / 2)
    assert _slice_dice(truth, truth, 4) == 1.0


def test_overlays_show_a_teacher_and_its_selected_modes_model_in_one_panel():
    from napari_mtssl.cli import _overlay_models

    report = {
        "models": {
            "baseline": {},
            "sdm:pretrain": {"task": "sdm", "mode": "pretrain"},
            "sdm:joint": {"task": "sdm", "mode": "joint"},
            "teacher:sdm": {"task": "sdm", "mode": "pretrain"},
            "student": {},
        }
    }
    shown = _overlay_models(report)
    assert shown["teacher:sdm"] == "teacher:sdm = sdm:pretrain"
    assert "sdm:pretrain" not in shown  # drawn once, under the teacher's name
    assert shown["sdm:joint"] == "sdm:joint" and shown["student"] == "student"
    assert set(shown) == {"baseline", "sdm:joint", "teacher:sdm", "student"}


def test_version(capsys):
    from napari_mtssl import __version__
    from napari_mtssl.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"napari-mtssl {__version__}"


def test_predict_refuses_a_made_up_geometry_unless_accepted(trained, tmp_path, capsys):
    """A DICOM series whose images record no position or orientation: a NIfTI mask would carry
    a geometry nobody measured, so predict refuses it (one line, naming the flag); a TIFF mask,
    which carries none, is written; the flag writes the NIfTI on the grid at the origin."""
    from tests.io.conftest import coded_raw, write_series

    _, _, out = trained
    series = tmp_path / "series"
    write_series(
        series,
        coded_raw((3, 32, 28)),
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.zeros(3),
        slice_step=2.0,
        drop=("ImageOrientationPatient", "ImagePositionPatient"),
    )
    mask = tmp_path / "mask.nii.gz"
    argv = ["predict", str(out), str(series), "--device", "cpu", "--out"]
    with pytest.warns(UserWarning, match="unknown"):
        assert main([*argv, str(mask)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--accept-unknown-geometry" in err[0] and not mask.exists()
    with pytest.warns(UserWarning, match="unknown"):
        assert main([*argv, str(tmp_path / "mask.tif")]) == 0
    with pytest.warns(UserWarning, match="unknown"):
        assert main([*argv, str(mask), "--accept-unknown-geometry"]) == 0
    assert mask.exists()


def test_predict_names_a_mask_format_as_the_format_registry_knows_its_suffixes(tmp_path):
    """--format's default from --out's suffix, and the suffix of each format's masks in a
    folder: the registry's (io/formats.py), as the CLI's own lists of suffixes gave them."""
    from pathlib import Path
    from types import SimpleNamespace

    from napari_mtssl import cli

    named = {n: cli._mask_format(Path(n)) for n in ("m.nii", "m.NII.GZ", "m.tif", "m.TIFF")}
    assert named == {"m.nii": "nifti", "m.NII.GZ": "nifti", "m.tif": "tiff", "m.TIFF": "tiff"}
    # every DICOM suffix (a DICOM-SEG is a DICOM file; .ima and .dicom were refused before)
    assert [cli._mask_format(Path(n)) for n in ("m.dcm", "m.ima", "m.DICOM")] == ["dicom-seg"] * 3
    assert [cli._mask_format(Path(n)) for n in ("m.png", "m.npy", "m", "m.gz")] == [None] * 4

    def target(fmt, scan_format="nifti"):
        scan = SimpleNamespace(meta={"format": scan_format})
        return cli._target(tmp_path, Path("case"), scan, fmt, set()).name

    assert [target(f) for f in ("nifti", "tiff", "dicom-seg")] == [
        "case.nii.gz",
        "case.tif",
        "case.dcm",
    ]
    assert [target(None, f) for f in ("tiff", "image", "image-folder", "dicom")] == [
        "case.tif",
        "case.tif",
        "case.tif",
        "case.nii.gz",
    ]
