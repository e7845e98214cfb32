"""Bad input: every failure names the file and the problem, and nothing is written."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from napari_mtssl.io import LabelError, Scan, ScanReadError, read_labels, read_scans, write_labels


def test_missing_path(tmp_path):
    with pytest.raises(ScanReadError, match="missing.nii.gz: no such file"):
        read_scans(tmp_path / "missing.nii.gz")
    with pytest.raises(LabelError, match="no such file"):
        read_labels(tmp_path / "nope.nii.gz")


def test_empty_folder(tmp_path):
    with pytest.raises(ScanReadError, match="empty") as err:
        read_scans(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_unsupported_file(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ScanReadError, match="unsupported file type"):
        read_scans(tmp_path / "a.txt")


def test_dicom_folder_with_other_files_skips_them(tmp_path, factories):
    factories.write_series(
        tmp_path,
        factories.coded_raw((3, 4, 5)),
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.zeros(3),
        slice_step=1.0,
    )
    (tmp_path / "thumbnail.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "DICOMDIR_notes").write_bytes(b"garbage" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "report.pdf").write_bytes(b"%PDF-1.4")
    [scan] = read_scans(tmp_path)
    assert scan.shape == (3, 4, 5)


def test_truncated_nifti(tmp_path):
    data = np.random.default_rng(0).random((20, 20, 10)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "ok.nii.gz")
    raw = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ScanReadError, match="cut.nii.gz: .*truncated or corrupt"):
        read_scans(tmp_path / "cut.nii.gz")
    (tmp_path / "hdr.nii.gz").write_bytes(gzip.compress(b"short"))
    with pytest.raises(ScanReadError, match="hdr.nii.gz"):
        read_scans(tmp_path / "hdr.nii.gz")


def test_label_shape_mismatch(tmp_path):
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.float32), affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 2), np.uint8), affine), tmp_path / "lab.nii.gz")
    [scan] = read_scans(tmp_path / "img.nii.gz")
    with pytest.raises(LabelError, match=r"lab.nii.gz: label shape \(2, 5, 4\) does not match"):
        read_labels(tmp_path / "lab.nii.gz", like=scan)
    with pytest.raises(LabelError, match="does not match"):
        write_labels(np.zeros((2, 5, 4), np.uint8), tmp_path / "out.nii.gz", like=scan)
    assert not (tmp_path / "out.nii.gz").exists()


def test_label_on_another_grid(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.float32), np.eye(4)), tmp_path / "img.nii.gz")
    moved = np.eye(4)
    moved[:3, 3] = [0, 0, 10.0]
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.uint8), moved), tmp_path / "lab.nii.gz")
    [scan] = read_scans(tmp_path / "img.nii.gz")
    with pytest.raises(LabelError, match="would not line up"):
        read_labels(tmp_path / "lab.nii.gz", like=scan)


def test_nan_in_image_filled_with_warning_or_refused(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 5
    data[0, 0, :2] = np.nan
    data[1, 2, 3] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "n.nii.gz")
    with pytest.warns(UserWarning, match="3 NaN/infinite voxels"):
        [scan] = read_scans(tmp_path / "n.nii.gz")
    assert np.isfinite(scan.array).all() and scan.array.min() == 7.0
    assert scan.meta["nan_voxels"] == 3 and scan.meta["warnings"]
    with pytest.raises(ScanReadError, match=r"n.nii.gz: 3 of 24 voxels are NaN.*allow_nan=True"):
        read_scans(tmp_path / "n.nii.gz", allow_nan=False)
    nib.save(
        nib.Nifti1Image(np.full((2, 2, 2), np.nan, np.float32), np.eye(4)), tmp_path / "all.nii"
    )
    with pytest.raises(ScanReadError, match="every voxel"):
        read_scans(tmp_path / "all.nii")


def test_float_mask_with_fractions(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.float32), np.eye(4)), tmp_path / "img.nii.gz")
    soft = np.zeros((4, 5, 3), np.float32)
    soft[1, 1, 1] = 0.5
    nib.save(nib.Nifti1Image(soft, np.eye(4)), tmp_path / "soft.nii.gz")
    [scan] = read_scans(tmp_path / "img.nii.gz")
    with pytest.raises(LabelError, match="soft.nii.gz: .*fractional values 0.5"):
        read_labels(tmp_path / "soft.nii.gz", like=scan)
    ok = soft.copy()
    ok[1, 1, 1] = 1.0
    nib.save(nib.Nifti1Image(ok, np.eye(4)), tmp_path / "ok.nii.gz")
    assert read_labels(tmp_path / "ok.nii.gz", like=scan).dtype == np.uint8


def test_failed_write_leaves_existing_file_untouched(tmp_path):
    like = Scan(np.zeros((2, 3, 4), np.float32))
    target = tmp_path / "keep.nii.gz"
    target.write_bytes(b"previous labels")
    with pytest.raises(LabelError):
        write_labels(np.full((2, 3, 4), 0.5, np.float32), target, like=like)
    with pytest.raises(LabelError, match="cannot write labels in this format"):
        write_labels(np.zeros((2, 3, 4), np.uint8), tmp_path / "x.png", like=like)
    assert target.read_bytes() == b"previous labels"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nii.gz"]  # no temporary left
