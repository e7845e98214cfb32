"""NIfTI with non-trivial affines: world mapping, label round trip, agreement with DICOM."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_mtssl.io import ScanReadError, read_labels, read_scans, write_labels

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _world(affine, idx):
    return (np.c_[idx, np.ones(len(idx))] @ affine.T)[:, :3]


def test_oblique_nifti_affine_maps_same_world_points(tmp_path, factories):
    affine = factories.oblique_affine()
    data = np.arange(7 * 9 * 5, dtype=np.float32).reshape(7, 9, 5)  # unique values
    factories.save_nifti(tmp_path / "a.nii.gz", data, affine)
    [scan] = read_scans(tmp_path / "a.nii.gz")
    assert scan.name == "a" and scan.array.dtype == np.float32
    zyx = np.indices(scan.shape).reshape(3, -1).T
    file_idx = np.array(np.unravel_index(scan.array[tuple(zyx.T)].astype(int), data.shape)).T
    np.testing.assert_allclose(
        _world(scan.affine, zyx), _world(RAS_TO_LPS @ affine, file_idx), atol=1e-4
    )
    np.testing.assert_allclose(scan.spacing, np.linalg.norm(scan.affine[:3, :3], axis=0))
    np.testing.assert_allclose(sorted(scan.spacing), [0.8, 1.3, 2.5], atol=1e-5)


def test_label_round_trip_exact_and_affine_preserved(tmp_path, factories):
    affine = factories.oblique_affine()
    rng = np.random.default_rng(1)
    data = rng.random((7, 9, 5)).astype(np.float32)
    factories.save_nifti(tmp_path / "img.nii.gz", data, affine, codes=(1, 2))
    [scan] = read_scans(tmp_path / "img.nii.gz")
    labels = rng.integers(0, 4, scan.shape).astype(np.uint8)
    for name in ("lab.nii.gz", "lab.nii"):
        write_labels(labels, tmp_path / name, like=scan)
        np.testing.assert_array_equal(read_labels(tmp_path / name, like=scan), labels)
        img = nib.load(tmp_path / name)
        np.testing.assert_allclose(img.affine, nib.load(tmp_path / "img.nii.gz").affine)
        assert img.shape == data.shape
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 2
        assert img.get_data_dtype() == np.uint8
    # The mask is in the file's own voxel order: voxel (i, j, k) of the label file is the label
    # of the image voxel (i, j, k).
    on_disk = np.asarray(nib.load(tmp_path / "lab.nii.gz").dataobj)
    marker = np.zeros(scan.shape, np.uint8)
    marker[scan.array == data[2, 3, 4]] = 9
    write_labels(marker, tmp_path / "m.nii.gz", like=scan)
    assert np.asarray(nib.load(tmp_path / "m.nii.gz").dataobj)[2, 3, 4] == 9
    assert on_disk.shape == data.shape


def test_same_volume_as_nifti_and_dicom_opens_the_same(tmp_path, factories):
    """The orientation code, end to end: two formats, one patient, one array."""
    f = factories
    affine = np.eye(4)
    affine[:3, :3] = f.rotation(0.2, -0.3) @ np.diag([-0.9, 1.1, 3.0])  # flipped x, oblique
    affine[:3, 3] = [20.0, -15.0, 4.0]
    vol = f.coded_raw((6, 10, 4)).transpose(1, 2, 0).copy()  # (i, j, k) = (6, 10, 4) in file
    f.save_nifti(tmp_path / "v.nii.gz", vol.astype(np.int16), affine)
    lps = RAS_TO_LPS @ affine
    # DICOM slices along k: pixel (r, c) = voxel (i=c, j=r, k).
    row_dir = lps[:3, 0] / np.linalg.norm(lps[:3, 0])
    col_dir = lps[:3, 1] / np.linalg.norm(lps[:3, 1])
    positions = [lps[:3, 3] + lps[:3, 2] * k for k in range(vol.shape[2])]
    slices = np.stack([vol[:, :, k].T for k in range(vol.shape[2])])
    f.write_series(
        tmp_path / "dcm",
        slices,
        row_dir=row_dir,
        col_dir=col_dir,
        origin=positions[0],
        slice_step=3.0,
        positions=positions,
        pixel_spacing=(float(np.linalg.norm(lps[:3, 1])), float(np.linalg.norm(lps[:3, 0]))),
        slope=1.0,
        intercept=0.0,
    )
    [a] = read_scans(tmp_path / "v.nii.gz")
    [b] = read_scans(tmp_path / "dcm")
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)


def test_2d_nifti(tmp_path):
    nib.save(
        nib.Nifti1Image(np.arange(12, dtype=np.float32).reshape(3, 4), np.eye(4)),
        tmp_path / "p.nii",
    )
    [scan] = read_scans(tmp_path / "p.nii")
    assert scan.shape == (1, 4, 3)
    labels = np.zeros(scan.shape, np.uint8)
    labels[0, 1, 2] = 1
    write_labels(labels, tmp_path / "pl.nii", like=scan)
    assert nib.load(tmp_path / "pl.nii").shape == (3, 4)
    np.testing.assert_array_equal(read_labels(tmp_path / "pl.nii", like=scan), labels)


def test_4d_needs_a_volume_choice(tmp_path):
    data = np.stack([np.full((4, 5, 3), v, np.float32) for v in range(6)], axis=-1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "t.nii.gz")
    with pytest.raises(ScanReadError, match=r"4D with 6 volumes.*volume=k") as err:
        read_scans(tmp_path / "t.nii.gz")
    assert "t.nii.gz" in str(err.value)
    [scan] = read_scans(tmp_path / "t.nii.gz", volume=4)
    assert np.all(scan.array == 4) and scan.meta["volume"] == 4
    with pytest.raises(ScanReadError, match="out of range"):
        read_scans(tmp_path / "t.nii.gz", volume=6)
    nib.save(nib.Nifti1Image(data[..., :1], np.eye(4)), tmp_path / "one.nii.gz")
    assert read_scans(tmp_path / "one.nii.gz")[0].shape == (3, 5, 4)


def test_modality_from_description_and_ct_guess(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4))
    img.header["descrip"] = b"MR T2 axial"
    nib.save(img, tmp_path / "mr.nii")
    ct = np.full((4, 4, 2), 40, np.int16)
    ct[0] = -1000
    nib.save(nib.Nifti1Image(ct, np.eye(4)), tmp_path / "ct.nii")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 2), np.float32), np.eye(4)), tmp_path / "u.nii")
    assert read_scans(tmp_path / "mr.nii")[0].modality == "MR"
    assert read_scans(tmp_path / "ct.nii")[0].modality == "CT"
    assert read_scans(tmp_path / "u.nii")[0].modality == "unknown"


def test_labels_from_dicom_scan_written_as_nifti(tmp_path, factories):
    f = factories
    r = f.rotation(0.3, 0.2)
    f.write_series(
        tmp_path / "d",
        f.coded_raw((4, 6, 8)),
        row_dir=r @ [1.0, 0, 0],
        col_dir=r @ [0, 1.0, 0],
        origin=np.array([3.0, 4, 5]),
        slice_step=2.0,
    )
    [scan] = read_scans(tmp_path / "d")
    labels = (scan.array > scan.array.mean()).astype(np.uint8)
    write_labels(labels, tmp_path / "d.nii.gz", like=scan)
    np.testing.assert_array_equal(read_labels(tmp_path / "d.nii.gz", like=scan), labels)
    np.testing.assert_allclose(
        RAS_TO_LPS @ nib.load(tmp_path / "d.nii.gz").affine, scan.affine[:, [2, 1, 0, 3]], atol=1e-4
    )


def test_folder_of_nifti_files(tmp_path):
    for name in ("b", "a"):
        nib.save(
            nib.Nifti1Image(np.zeros((3, 3, 2), np.float32), np.eye(4)), tmp_path / f"{name}.nii.gz"
        )
    (tmp_path / "notes.txt").write_text("x")
    assert [s.name for s in read_scans(tmp_path)] == ["a", "b"]
