"""Segment codes users set: a workspace's ``segment_codes.json`` (``napari-mtssl codes W FILE``),
read by ``predict``, napari's DICOM-SEG writer and ``save_labels``; ``predict --codes FILE`` over
it for one call; the default table otherwise; a bad file named in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("highdicom")

import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402

from napari_mtssl import api, cli  # noqa: E402
from napari_mtssl.cli import main  # noqa: E402
from napari_mtssl.export import ExportError  # noqa: E402
from napari_mtssl.export.dicomseg import (  # noqa: E402
    CODES_FILE,
    codes_for,
    read_codes_file,
    write_dicom_seg,
)
from napari_mtssl.io import read_scans  # noqa: E402
from tests.io.conftest import coded_raw, write_series  # noqa: E402

NAMES = {0: "background", 1: "liver", 2: "tumour", 3: "blob"}
LIVER = ("10200004", "SCT", "Liver")  # the default table's
TISSUE = ("85756007", "SCT", "Tissue")  # the generic code
ANATOMY = ("91723000", "SCT")
ABNORMAL = ("49755003", "SCT")

# the workspace's file: the tumour coded as a lesion with its category, the blob by number
WS_CODES = {
    "Tumour": {
        "type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"},
        "category": {
            "value": "49755003",
            "scheme": "SCT",
            "meaning": "Morphologically Abnormal Structure",
        },
    },
    "3": ["123456", "99LOCAL", "Blob of the local study"],
}


@pytest.fixture(autouse=True)
def _logs_here(tmp_path, monkeypatch):
    """Crash logs of these tests go to a temporary folder, not the user's log folder."""
    monkeypatch.setattr(cli, "_user_log_dir", lambda: tmp_path / "user-logs")


@pytest.fixture
def series(tmp_path):
    folder = tmp_path / "series"
    write_series(
        folder,
        coded_raw((4, 16, 14)),
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.zeros(3),
        slice_step=2.0,
    )
    return folder


def _mask(shape):
    lab = np.zeros(shape, np.uint8)
    lab[1, 2:6, 3:7] = 1
    lab[2, 5:9, 1:4] = 2
    lab[3, 0:3, 0:3] = 3
    return lab


def _codes(path) -> dict[str, tuple]:
    """Segment label -> ((category value, scheme), (type value, scheme, meaning)), as read back
    with pydicom, checked against highdicom's reading."""
    out = {}
    for item in pydicom.dcmread(path).SegmentSequence:
        cat = item.SegmentedPropertyCategoryCodeSequence[0]
        typ = item.SegmentedPropertyTypeCodeSequence[0]
        out[item.SegmentLabel] = (
            (cat.CodeValue, cat.CodingSchemeDesignator),
            (typ.CodeValue, typ.CodingSchemeDesignator, typ.CodeMeaning),
        )
    seg = hd.seg.segread(path)
    for n in seg.segment_numbers:
        d = seg.get_segment_description(n)
        assert out[d.segment_label][1][0] == d.segmented_property_type.value
    return out


def _workspace(tmp_path, codes=None):
    ws = tmp_path / "ws"
    assert main(["init", str(ws), "--classes", "liver,tumour,blob"]) == 0
    if codes is not None:
        (ws / CODES_FILE).write_text(json.dumps(codes))
    return ws


def _fake_prediction(monkeypatch, ws):
    """predict answers with ``_mask`` (no model), from a run of the workspace."""
    from napari_mtssl.workspace import Workspace

    run = Workspace.open(ws).new_run("all", api.make_config("tiny").to_dict())

    def predict(ws, scan, model="student", device="auto"):
        return api.Prediction(labels=_mask(scan.shape), probs=None, model=model, run=run.id)

    monkeypatch.setattr(api, "predict", predict)
    monkeypatch.setattr(api, "list_models", lambda ws: ["student"])


def _one_line(capsys, argv, *expect: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for e in expect:
        assert e in err, err
    return err


def test_the_file_forms_and_write_dicom_seg(series, tmp_path):
    f = tmp_path / "codes.json"
    f.write_text(json.dumps(WS_CODES))
    codes = read_codes_file(f, NAMES)
    assert codes[2]["type"] == ("52988006", "SCT", "Lesion")
    assert codes[3] == {
        "category": (*ANATOMY, "Anatomical Structure"),
        "type": tuple(WS_CODES["3"]),
    }
    (scan,) = read_scans(series)
    out = write_dicom_seg(
        _mask(scan.shape), scan.meta, tmp_path / "m.dcm", label_names=NAMES, codes=codes
    )
    assert _codes(out) == {
        "liver": (ANATOMY, LIVER),  # nobody coded it: the default table
        "tumour": (ABNORMAL, ("52988006", "SCT", "Lesion")),
        "blob": (ANATOMY, ("123456", "99LOCAL", "Blob of the local study")),
    }
    # a file given for one call wins class by class over the workspace's
    (tmp_path / CODES_FILE).write_text(json.dumps(WS_CODES))
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"blob": {"value": "4147007", "scheme": "SCT", "meaning": "Mass"}}))
    merged = codes_for(NAMES, workspace=tmp_path, codes_file=one)
    assert merged[3]["type"] == ("4147007", "SCT", "Mass") and merged[2] == codes[2]
    assert codes_for(NAMES, workspace=tmp_path / "nowhere") == {}  # no file: no codes


@pytest.mark.parametrize(
    "text, expect",
    [
        ('{"liver": ["10200004", "SCT", "Liver"],}', "not valid JSON"),
        ('[["10200004", "SCT", "Liver"]]', "a JSON object of class number or name"),
        ('{"livr": ["10200004", "SCT", "Liver"]}', "'livr', which is no class"),
        ('{"7": ["10200004", "SCT", "Liver"]}', "'7', which is no class"),
        ('{"liver": {"value": "10200004", "scheme": "SCT"}}', "class 1 (liver)"),
        ('{"liver": ["10200004", "SCT"]}', "class 1 (liver)"),
        ('{"liver": "Liver"}', "class 1 (liver)"),
        ('{"liver": ["10200004", "", "Liver"]}', "must all be given"),
        ('{"tumour": {"category": ["49755003", "SCT", "Abnormal"]}}', "class 2 (tumour)"),
    ],
)
def test_a_bad_file_is_one_line_naming_it_and_the_entry(tmp_path, text, expect):
    f = tmp_path / "bad.json"
    f.write_text(text)
    with pytest.raises(ExportError) as err:
        read_codes_file(f, NAMES)
    msg = str(err.value)
    assert msg.startswith(f"{f}: ") and expect in msg and "\n" not in msg, msg
    with pytest.raises(ExportError, match="no such codes file"):
        read_codes_file(tmp_path / "missing.json", NAMES)


def test_cli_codes_stores_shows_and_predict_uses_them(series, tmp_path, capsys, monkeypatch):
    ws = _workspace(tmp_path)
    _fake_prediction(monkeypatch, ws)
    capsys.readouterr()
    # no file: the default table, else generic; both in the DICOM-SEG
    assert main(["codes", str(ws)]) == 0
    shown = capsys.readouterr().out
    assert "1 liver: SCT 10200004 'Liver'" in shown and "the default table" in shown
    assert "3 blob: SCT 85756007 'Tissue'" in shown and "generic" in shown
    m0 = tmp_path / "m0.dcm"
    assert main(["predict", str(ws), str(series), "--out", str(m0), "--quiet"]) == 0
    assert _codes(m0)["blob"][1] == TISSUE and _codes(m0)["liver"][1] == LIVER

    # stored: checked first, never replaced without --force
    f = tmp_path / "mine.json"
    f.write_text(json.dumps(WS_CODES))
    assert main(["codes", str(ws), str(f)]) == 0
    shown = capsys.readouterr().out
    assert f"as {ws / CODES_FILE}" in shown and "(category SCT 49755003" in shown
    assert "the workspace's segment_codes.json)" in shown
    assert json.loads((ws / CODES_FILE).read_text()) == WS_CODES
    _one_line(capsys, ["codes", str(ws), str(f)], "exists; add --force")
    bad = tmp_path / "bad.json"
    bad.write_text('{"livr": ["1", "SCT", "x"]}')
    _one_line(capsys, ["codes", str(ws), str(bad), "--force"], str(bad), "'livr'")
    assert json.loads((ws / CODES_FILE).read_text()) == WS_CODES  # the bad file was not stored

    # predict: the workspace's codes
    m1 = tmp_path / "m1.dcm"
    assert main(["predict", str(ws), str(series), "--out", str(m1), "--quiet"]) == 0
    assert _codes(m1) == {
        "liver": (ANATOMY, LIVER),
        "tumour": (ABNORMAL, ("52988006", "SCT", "Lesion")),
        "blob": (ANATOMY, ("123456", "99LOCAL", "Blob of the local study")),
    }
    # --codes: over the workspace's for this call, class by class
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"1": {"value": "39607008", "scheme": "SCT", "meaning": "Lung"}}))
    m2 = tmp_path / "m2.dcm"
    argv = ["predict", str(ws), str(series), "--out", str(m2), "--codes", str(one), "--quiet"]
    assert main(argv) == 0
    got = _codes(m2)
    assert got["liver"][1] == ("39607008", "SCT", "Lung") and got["tumour"] == _codes(m1)["tumour"]
    # a folder of DICOM series as DICOM-SEG: the same codes
    scans = tmp_path / "scans"
    scans.mkdir()
    series.rename(scans / "series")
    out = tmp_path / "masks"
    argv = ["predict", str(ws), str(scans), "--out", str(out), "--format", "dicom-seg"]
    assert main([*argv, "--codes", str(one), "--quiet"]) == 0
    assert _codes(out / "series.dcm") == got


def test_predict_refuses_a_bad_codes_file_before_predicting(series, tmp_path, capsys, monkeypatch):
    ws = _workspace(tmp_path, codes={"liver": ["10200004", "SCT"]})
    _fake_prediction(monkeypatch, ws)
    capsys.readouterr()
    out = tmp_path / "m.dcm"
    base = ["predict", str(ws), str(series), "--out", str(out)]
    _one_line(capsys, base, str(ws / CODES_FILE), "class 1 (liver)")
    (ws / CODES_FILE).unlink()
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    _one_line(capsys, [*base, "--codes", str(broken)], str(broken), "not valid JSON")
    _one_line(capsys, [*base, "--codes", str(tmp_path / "none.json")], "no such codes file")
    nifti = ["predict", str(ws), str(series), "--out", str(tmp_path / "m.nii.gz")]
    _one_line(capsys, [*nifti, "--codes", str(broken)], "--codes", "DICOM-SEG masks only")
    assert not out.exists() and not (tmp_path / "m.nii.gz").exists()


def test_napari_writer_and_save_labels_use_the_workspace_codes(series, tmp_path):
    from napari_mtssl.export.napari_writer import WORKSPACE_KEY, write_labels_dicom_seg
    from napari_mtssl.io.napari_io import NAMES_KEY, SaveRefusedError

    ws = _workspace(tmp_path, codes=WS_CODES)
    (scan,) = read_scans(series)
    lab = _mask(scan.shape)
    names = {str(k): v for k, v in NAMES.items()}
    meta = {"mtssl_scan": scan.meta, NAMES_KEY: names, WORKSPACE_KEY: str(ws)}
    (out,) = write_labels_dicom_seg(str(tmp_path / "layer"), lab, {"metadata": meta})
    assert out.endswith("layer.dcm")
    assert _codes(out)["tumour"][1] == ("52988006", "SCT", "Lesion")
    # a layer of no workspace: the default table
    del meta[WORKSPACE_KEY]
    (plain,) = write_labels_dicom_seg(str(tmp_path / "plain.dcm"), lab, {"metadata": meta})
    assert _codes(plain)["tumour"] == (ABNORMAL, ("108369006", "SCT", "Neoplasm"))
    # a bad workspace file: the save is refused with the line that names it
    (ws / CODES_FILE).write_text('{"livr": ["1", "SCT", "x"]}')
    meta[WORKSPACE_KEY] = str(ws)
    with pytest.raises(SaveRefusedError, match=f"{CODES_FILE}: a code is given for 'livr'"):
        write_labels_dicom_seg(str(tmp_path / "bad.dcm"), lab, {"metadata": meta})
    assert not (tmp_path / "bad.dcm").exists()

    # Save all labels (api.save_labels): the workspace's codes
    (ws / CODES_FILE).write_text(json.dumps(WS_CODES))
    w = api.open_workspace(ws)
    sid = w.add_scan(scan)
    w.set_labels(sid, lab)
    (saved,) = api.save_labels(w, tmp_path)
    assert _codes(saved)["blob"][1] == ("123456", "99LOCAL", "Blob of the local study")
