"""Malformed and unusual scans, masks and dataset folders, generated here: each must be read
correctly or refused with a message naming the file; never a traceback, never a silent misread.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_mtssl.io import read_labels, read_scans
from tests.faults.conftest import classify
from tests.io.conftest import write_series

# -- NIfTI --------------------------------------------------------------------------------------


def _nifti(path: Path, edit=None, data=None, affine=None) -> Path:
    data = np.arange(8 * 9 * 5, dtype=np.float32).reshape(8, 9, 5) if data is None else data
    img = nib.Nifti1Image(data, np.diag([1.2, 1.2, 3.0, 1.0]) if affine is None else affine)
    nib.save(img, str(path))
    if edit is not None:
        b = bytearray(path.read_bytes())
        edit(b)
        path.write_bytes(bytes(b))
    return path


def _i16(offset, value):
    return lambda b: b.__setitem__(slice(offset, offset + 2), struct.pack("<h", value))


def _srow(rows, qcode=0, scode=1):
    def edit(b):
        b[252:254] = struct.pack("<h", qcode)
        b[254:256] = struct.pack("<h", scode)
        for i, r in enumerate(rows):
            b[280 + 16 * i : 296 + 16 * i] = struct.pack("<4f", *r)

    return edit


NAN = float("nan")
BAD_NIFTI = {
    "unknown datatype": _i16(70, 999),
    "dim[0] out of range": _i16(40, 9),
    "negative dimension": _i16(42, -3),
    "dim[3] = 0": _i16(46, 0),
    "NaN intercept with a slope": lambda b: b.__setitem__(
        slice(112, 120), struct.pack("<ff", 2.0, NAN)
    ),
    "32767^3 voxels": lambda b: b.__setitem__(
        slice(42, 48), struct.pack("<hhh", 32767, 32767, 32767)
    ),
    "truncated data": lambda b: b.__delitem__(slice(400, None)),
    "truncated header": lambda b: b.__delitem__(slice(100, None)),
    "zero affine column": _srow([[1.2, 0, 0, 0], [0, 1.2, 0, 0], [0, 0, 0, 0]]),
    "NaN in the affine": _srow([[NAN, 0, 0, 0], [0, 1.2, 0, 0], [0, 0, 3, 0]]),
    "rank-deficient sform": _srow([[1.2, 0, 1.2, 0], [0, 1.2, 0, 0], [0, 0, 0, 0]]),
    "garbage bytes": lambda b: b.__setitem__(slice(0, len(b)), bytes(len(b))),
}


@pytest.mark.parametrize("case", sorted(BAD_NIFTI))
def test_malformed_nifti(case, tmp_path, recorder):
    p = _nifti(tmp_path / "scan.nii", BAD_NIFTI[case])
    outcome, detail = classify(lambda: read_scans(p), names=[p], expect_error=True)
    recorder.record(case, outcome, detail)
    assert outcome == "clear message", detail


GOOD_NIFTI = {
    "2D image": dict(data=np.ones((7, 6), np.float32), shape=(1, 6, 7)),
    "qform only": dict(codes=(1, 0), shape=(5, 9, 8)),
    "sform only": dict(codes=(0, 1), shape=(5, 9, 8)),
    "NIfTI-2": dict(nifti2=True, shape=(5, 9, 8)),
    "int16 with scaling": dict(data=np.ones((8, 9, 5), np.int16) * 3, slope=2.0, shape=(5, 9, 8)),
    "NaN voxels": dict(nan=True, shape=(5, 9, 8)),
}


@pytest.mark.parametrize("case", sorted(GOOD_NIFTI))
def test_valid_nifti_variants(case, tmp_path, recorder):
    spec = GOOD_NIFTI[case]
    data = spec.get("data", np.arange(8 * 9 * 5, dtype=np.float32).reshape(8, 9, 5))
    if spec.get("nan"):
        data = data.copy()
        data[0, 0, 0] = NAN
    cls = nib.Nifti2Image if spec.get("nifti2") else nib.Nifti1Image
    img = cls(data, np.diag([1.2, 1.2, 3.0, 1.0]))
    q, s = spec.get("codes", (1, 1))
    img.header.set_qform(img.affine, code=q)
    img.header.set_sform(img.affine, code=s)
    if "slope" in spec:
        img.header.set_slope_inter(spec["slope"], 1.0)
    p = tmp_path / "scan.nii.gz"
    nib.save(img, str(p))

    def check(scans):
        a = scans[0].array
        return a.shape == spec["shape"] and np.isfinite(a).all()

    outcome, detail = classify(lambda: read_scans(p), names=[p], expect_error=False, check=check)
    recorder.record(case, outcome, detail)
    assert outcome == "read correctly", detail


# -- DICOM ----------------------------------------------------------------------------------


def _series(folder: Path) -> list[Path]:
    raw = (np.arange(4 * 6 * 5).reshape(4, 6, 5) % 100).astype(np.int16)
    write_series(
        folder,
        raw,
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.array([-10.0, 5.0, 30.0]),
        slice_step=2.5,
    )
    return sorted(folder.iterdir())


def _edit_one(folder: Path, edit) -> Path:
    import pydicom

    files = _series(folder)
    target = files[1]
    ds = pydicom.dcmread(target)
    edit(ds)
    ds.save_as(target, enforce_file_format=True)
    return target


def _del(tag):
    return lambda ds: delattr(ds, tag)


BAD_DICOM = {
    "one file lacks ImagePositionPatient": _del("ImagePositionPatient"),
    "one file lacks ImageOrientationPatient": _del("ImageOrientationPatient"),
    "PixelSpacing 0": lambda ds: setattr(ds, "PixelSpacing", [0.0, 0.9]),
    "zero orientation vector": lambda ds: setattr(
        ds, "ImageOrientationPatient", [0, 0, 0, 0, 1.0, 0]
    ),
    "parallel orientation vectors": lambda ds: setattr(
        ds, "ImageOrientationPatient", [1.0, 0, 0, 1.0, 0, 0]
    ),
    "truncated pixel data": lambda ds: setattr(ds, "PixelData", ds.PixelData[:10]),
}


@pytest.mark.parametrize("case", sorted(BAD_DICOM))
def test_malformed_dicom(case, tmp_path, recorder):
    folder = tmp_path / "series"
    bad = _edit_one(folder, BAD_DICOM[case])
    if case in ("PixelSpacing 0", "zero orientation vector", "parallel orientation vectors"):
        # one file's geometry differs: it is refused by name, or read apart from the others
        # (never silently merged into the volume on a wrong grid)
        pass
    outcome, detail = classify(lambda: read_scans(folder), names=[bad, folder], expect_error=True)
    recorder.record(case, outcome, detail)
    assert outcome == "clear message", detail


def test_dicom_series_without_any_geometry_is_read_with_a_true_warning(tmp_path, recorder):
    import pydicom

    folder = tmp_path / "series"
    for f in _series(folder):
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient
        ds.save_as(f, enforce_file_format=True)

    def check(scans):
        w = " ".join(scans[0].meta.get("warnings", []))
        return "no ImagePositionPatient" in w and "ImageOrientationPatient" not in w

    with pytest.warns(UserWarning, match="InstanceNumber"):
        outcome, detail = classify(
            lambda: read_scans(folder), names=[folder], expect_error=False, check=check
        )
    recorder.record("no IPP in any file", outcome, detail)
    assert outcome == "read correctly", detail


def test_dicom_series_with_positions_but_no_orientation_lies_where_its_slices_are(
    tmp_path, recorder
):
    """Every file has ImagePositionPatient and none ImageOrientationPatient: the slices are
    stacked along their positions (once read on a grid at the origin, up to 35 mm off), the
    in-plane assumption is stated and names the series, and the geometry is not unknown."""
    folder = tmp_path / "series"
    origin, step = np.array([-10.0, 5.0, 30.0]), 2.5
    write_series(
        folder,
        (np.arange(4 * 6 * 5).reshape(4, 6, 5) % 100).astype(np.int16),
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=origin,
        slice_step=step,
        drop=("ImageOrientationPatient",),
    )

    def check(scans):
        scan = scans[0]
        corner = scan.affine @ np.array([0.0, 0.0, 0.0, 1.0])
        last = scan.affine @ np.array([3.0, 0.0, 0.0, 1.0])  # (slice, row, column, 1)
        return (
            np.allclose(corner[:3], origin, atol=1e-4)
            and np.allclose(last[:3], origin + [0, 0, 3 * step], atol=1e-4)
            and "orientation_assumed" in scan.meta
            and not scan.meta.get("geometry_unknown")
        )

    with pytest.warns(UserWarning, match="no ImageOrientationPatient in series chest"):
        outcome, detail = classify(
            lambda: read_scans(folder), names=[folder], expect_error=False, check=check
        )
    recorder.record("IPP in every file, no IOP", outcome, detail)
    assert outcome == "read correctly", detail


# -- image stacks and folders ---------------------------------------------------------------


def test_folder_mixing_nifti_and_png_is_refused(tmp_path, recorder):
    import imageio.v3 as iio

    folder = tmp_path / "mixed"
    folder.mkdir()
    _nifti(folder / "a.nii")
    _nifti(folder / "b.nii")
    iio.imwrite(folder / "shot.png", np.zeros((8, 8), np.uint8))
    outcome, detail = classify(lambda: read_scans(folder), names=[folder], expect_error=True)
    recorder.record("NIfTI and PNG in one folder", outcome, detail)
    assert outcome == "clear message" and "shot.png" in detail, detail


@pytest.mark.parametrize(
    "case,content",
    [("garbage .png", b"\x89PNG garbage"), ("empty .tif", b""), ("text as .dcm", b"hello" * 50)],
)
def test_garbage_image_files(case, content, tmp_path, recorder):
    name = {"garbage .png": "x.png", "empty .tif": "x.tif", "text as .dcm": "x.dcm"}[case]
    p = tmp_path / name
    p.write_bytes(content)
    outcome, detail = classify(lambda: read_scans(p), names=[p], expect_error=True)
    recorder.record(case, outcome, detail)
    assert outcome == "clear message", detail


def test_png_folder_with_a_different_size(tmp_path, recorder):
    import imageio.v3 as iio

    folder = tmp_path / "slices"
    folder.mkdir()
    for i in range(3):
        iio.imwrite(folder / f"s{i}.png", np.zeros((8, 8 if i < 2 else 9), np.uint8))
    outcome, detail = classify(
        lambda: read_scans(folder), names=[folder / "s2.png"], expect_error=True
    )
    recorder.record("one slice of another size", outcome, detail)
    assert outcome == "clear message", detail


# -- label masks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case,mask",
    [
        ("class 70000", np.full((5, 9, 8), 70000, np.int32)),
        ("fractional classes", np.full((5, 9, 8), 0.5, np.float32)),
        ("negative classes", np.full((5, 9, 8), -1, np.int16)),
        ("wrong shape", np.zeros((4, 9, 8), np.uint8)),
    ],
)
def test_bad_label_masks(case, mask, tmp_path, recorder):
    scan = read_scans(_nifti(tmp_path / "img.nii"))[0]
    p = tmp_path / "mask.npy"
    np.save(p, mask)
    outcome, detail = classify(lambda: read_labels(p, like=scan), names=[p], expect_error=True)
    recorder.record(case, outcome, detail)
    assert outcome == "clear message", detail


# -- dataset folders --------------------------------------------------------------------------


def _dataset(root: Path, *, splits=None, labels=None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name in ("p1_frame01", "p2_frame01", "p3_frame01"):
        _nifti(root / "imagesTr" / f"{name}.nii.gz")
        _nifti(root / "labelsTr" / f"{name}.nii.gz", data=np.zeros((8, 9, 5), np.uint8))
    meta = {"labels": labels or {"0": "background", "1": "organ"}}
    if splits is not None:
        meta["splits"] = splits
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize(
    "case",
    ["split names a missing case", "bad label names", "garbage dataset.json"],
)
def test_bad_dataset_folders(case, tmp_path, recorder):
    from napari_mtssl import api

    if case == "split names a missing case":
        data = _dataset(
            tmp_path / "d", splits={"train": ["p1_frame01", "p2_frame01"], "val": ["p9_frame01"]}
        )
    elif case == "bad label names":
        data = _dataset(tmp_path / "d", labels={"0": "background", "x": "organ"})
    else:
        data = _dataset(tmp_path / "d")
        (data / "dataset.json").write_text("{not json")
    out = tmp_path / "ws"
    outcome, detail = classify(
        lambda: api.create_workspace(out, source=data),
        names=[data / "dataset.json"],
        expect_error=True,
    )
    if "workspace.json" in detail:
        outcome = recorder.record(case, "traceback", "blamed on workspace.json: " + detail)
    else:
        recorder.record(case, outcome, detail)
    assert outcome == "clear message", detail
    assert not (out / "workspace.json").exists()
