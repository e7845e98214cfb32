"""DICOM series written with pydicom at test time: order, values, spacing, oblique geometry."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000, JPEGLosslessSV1

from napari_mtssl.io import ScanReadError, is_dicom_file, read_scans
from napari_mtssl.io.dicom import read_dicom

SLOPE, INTERCEPT = 2.5, -1024.0


def _oblique(f):
    r = f.rotation(0.3, 0.2)
    # Coronal-like and flipped: rows run to the patient's right, columns towards the feet.
    return r @ np.array([-1.0, 0, 0]), r @ np.array([0, 0, -1.0])


def _world_of_voxels(scan):
    zyx = np.indices(scan.shape).reshape(3, -1).T
    return (np.c_[zyx, np.ones(len(zyx))] @ scan.affine.T)[:, :3]


def test_oblique_series_values_order_spacing_affine(tmp_path, factories):
    f = factories
    row, col = _oblique(f)
    raw = f.coded_raw((6, 12, 20))
    positions = f.write_series(
        tmp_path / "s",
        raw,
        row_dir=row,
        col_dir=col,
        origin=np.array([5.0, -3, 40]),
        slice_step=3.0,
        pixel_spacing=(0.7, 0.9),
        thickness=5.0,
        slope=SLOPE,
        intercept=INTERCEPT,
    )
    (tmp_path / "s" / "notes.txt").write_text("not an image")
    (tmp_path / "s" / "junk").write_bytes(b"\x00" * 500)
    assert {p.name.endswith(".dcm") for p in (tmp_path / "s").iterdir()} == {True, False}
    [scan] = read_scans(tmp_path / "s")
    assert scan.name == "chest" and scan.modality == "CT"
    assert scan.array.dtype == np.float32
    # Every voxel keeps a value from the file with slope and intercept applied.
    idx = f.decode(scan.array, SLOPE, INTERCEPT).reshape(-1, 3)
    assert set(np.unique(scan.array)) <= set((raw.astype(np.float32) * SLOPE + INTERCEPT).ravel())
    # Geometry: the affine sends each voxel to the world point the file gives that pixel.
    k, r, c = idx.T
    expected = np.array(positions)[k] + c[:, None] * 0.9 * row + r[:, None] * 0.7 * col
    np.testing.assert_allclose(_world_of_voxels(scan), expected, atol=1e-6)
    # Spacing from the measured slice positions (3 mm), not SliceThickness (5 mm); reoriented
    # so z runs along the column direction (superior), y along the slices, x along rows.
    np.testing.assert_allclose(sorted(scan.spacing), [0.7, 0.9, 3.0])
    np.testing.assert_allclose(scan.spacing, (0.7, 3.0, 0.9))
    assert scan.meta["slice_thickness"] == pytest.approx(5.0)
    assert "warnings" not in scan.meta
    # Closest LPS: each axis points mostly to +S, +P, +L.
    directions = scan.affine[:3, :3] / np.linalg.norm(scan.affine[:3, :3], axis=0)
    assert np.argmax(np.abs(directions[:, 0])) == 2 and directions[2, 0] > 0
    assert np.argmax(np.abs(directions[:, 1])) == 1 and directions[1, 1] > 0
    assert np.argmax(np.abs(directions[:, 2])) == 0 and directions[0, 2] > 0


def test_axial_series_sorted_by_position_not_instance(tmp_path, factories):
    f = factories
    raw = f.coded_raw((5, 8, 10))
    f.write_series(
        tmp_path,
        raw,
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.array([0.0, 0, -20]),
        slice_step=2.0,
        slope=1.0,
        intercept=0.0,
        modality="MR",
    )
    [scan] = read_scans(tmp_path)
    assert scan.modality == "MR" and scan.shape == (5, 8, 10)
    np.testing.assert_array_equal(scan.array, raw.astype(np.float32))
    np.testing.assert_allclose(scan.affine[:3, 3], [0, 0, -20])
    np.testing.assert_allclose(scan.spacing, (2.0, 0.7, 0.9))


def test_irregular_spacing_is_reported(tmp_path, factories):
    f = factories
    raw = f.coded_raw((4, 6, 6))
    z = [0.0, 2.0, 4.0, 7.0]
    f.write_series(
        tmp_path,
        raw,
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.zeros(3),
        slice_step=2.0,
        positions=[np.array([0, 0, v]) for v in z],
    )
    with pytest.warns(UserWarning, match="irregular slice spacing"):
        [scan] = read_scans(tmp_path)
    assert scan.spacing[0] == pytest.approx(2.0)
    assert scan.meta["irregular_spacing"] == pytest.approx([2.0, 3.0])


def test_two_series_two_scans_named_by_description(tmp_path, factories):
    f = factories
    eye = dict(row_dir=np.array([1.0, 0, 0]), col_dir=np.array([0, 1.0, 0]), origin=np.zeros(3))
    f.write_series(
        tmp_path / "a",
        f.coded_raw((3, 6, 6)),
        slice_step=1.0,
        description="T1 axial",
        number=2,
        **eye,
    )
    f.write_series(
        tmp_path / "a",
        f.coded_raw((4, 8, 6)),
        slice_step=2.0,
        description="T2 axial",
        number=5,
        seed=1,
        prefix="B",
        **eye,
    )
    scans = read_scans(tmp_path / "a")
    assert [s.name for s in scans] == ["T1 axial", "T2 axial"]
    assert [s.shape for s in scans] == [(3, 6, 6), (4, 8, 6)]
    assert scans[0].meta["series_uid"] != scans[1].meta["series_uid"]


def test_single_file(tmp_path, factories):
    f = factories
    f.write_series(
        tmp_path,
        f.coded_raw((1, 6, 7)),
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.zeros(3),
        slice_step=1.0,
        thickness=4.0,
    )
    [path] = list(tmp_path.iterdir())
    assert is_dicom_file(path)
    [scan] = read_scans(path)
    assert scan.shape == (1, 6, 7)
    assert scan.spacing[0] == pytest.approx(4.0)  # a lone slice: its thickness


def test_multiframe_enhanced(tmp_path, factories):
    f = factories
    row, col = f.rotation(0.1, 0.05) @ [1.0, 0, 0], f.rotation(0.1, 0.05) @ [0, 1.0, 0]
    raw = f.coded_raw((5, 9, 11))
    slopes = [1.0, 2.0, 0.5, 1.5, 3.0]
    f.write_multiframe(
        tmp_path / "mf.dcm",
        raw,
        row_dir=row,
        col_dir=col,
        origin=np.array([1.0, 2, 3]),
        slice_step=4.0,
        pixel_spacing=(1.25, 1.5),
        slopes=slopes,
        order=[3, 0, 4, 1, 2],
    )
    [scan] = read_scans(tmp_path / "mf.dcm")
    assert scan.shape == (5, 9, 11) and scan.modality == "MR"
    expected = raw.astype(np.float32) * np.array(slopes, dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(scan.array, expected)
    np.testing.assert_allclose(scan.spacing, (4.0, 1.25, 1.5), atol=1e-9)
    np.testing.assert_allclose(scan.affine[:3, 3], [1, 2, 3])


def _compressed(tmp_path, factories, ts):
    f = factories
    f.write_series(
        tmp_path,
        f.coded_raw((1, 4, 4)),
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.zeros(3),
        slice_step=1.0,
    )
    [path] = list(tmp_path.iterdir())
    import pydicom

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ts
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not really compressed"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_compressed_without_decoder_names_syntax_and_fix(tmp_path, factories):
    # JPEG Lossless needs pylibjpeg-libjpeg or GDCM, which the project does not install (the
    # export extra brings a JPEG-LS decoder with highdicom, so JPEG-LS would decode here)
    path = _compressed(tmp_path, factories, JPEGLosslessSV1)
    with pytest.raises(ScanReadError) as err:
        read_scans(path)
    msg = str(err.value)
    assert str(path) in msg and "JPEG Lossless" in msg and JPEGLosslessSV1 in msg
    assert "no decoder installed" in msg and "pip install" in msg


def test_compressed_corrupt_data_names_syntax(tmp_path, factories):
    path = _compressed(tmp_path, factories, JPEG2000)
    with pytest.raises(ScanReadError, match="JPEG 2000 Image Compression") as err:
        read_scans(tmp_path)
    assert path.name in str(err.value)
    assert JPEG2000 in str(err.value)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b").write_bytes(b"\x01" * 300)
    with pytest.raises(ScanReadError, match="no DICOM files"):
        read_scans(tmp_path)
    with pytest.raises(ScanReadError, match="no DICOM files"):
        read_dicom(tmp_path)
    assert not is_dicom_file(tmp_path / "b")
    assert not is_dicom_file(tmp_path / "a.txt")
    assert not is_dicom_file(tmp_path / "missing.dcm")


def test_repeated_positions_keep_first_with_warning(tmp_path, factories):
    """Cine series repeat each position per time point; one volume is shown, and the user told."""
    f = factories
    raw = f.coded_raw((4, 5, 5))
    z = [0.0, 0.0, 3.0, 3.0]
    f.write_series(
        tmp_path,
        raw,
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.zeros(3),
        slice_step=3.0,
        positions=[np.array([0, 0, v]) for v in z],
    )
    with pytest.warns(UserWarning, match="share a slice position"):
        [scan] = read_scans(tmp_path)
    assert scan.shape == (2, 5, 5) and scan.spacing[0] == pytest.approx(3.0)


@pytest.mark.parametrize(
    "row,col",
    [
        (np.array([1.0, 0, 0]), np.array([0, 1.0, 0])),  # axial, as scanners write it
        (np.array([1.0, 0, 0]), np.array([0, 0, -1.0])),  # coronal
    ],
)
def test_positions_without_orientation_give_the_slice_direction(tmp_path, factories, row, col):
    """ImagePositionPatient in every image, no ImageOrientationPatient: the slices are stacked
    along their positions (not on a grid at the origin), every voxel lands where the file puts
    its slice, and the assumption about the in-plane axes is stated, naming the series."""
    f = factories
    raw = f.coded_raw((5, 8, 10))
    positions = f.write_series(
        tmp_path,
        raw,
        row_dir=row,
        col_dir=col,
        origin=np.array([12.0, -40, 35]),
        slice_step=2.5,
        slope=1.0,
        intercept=0.0,
        drop=("ImageOrientationPatient",),
    )
    with pytest.warns(UserWarning, match="no ImageOrientationPatient in series chest"):
        [scan] = read_scans(tmp_path)
    assert "orientation_assumed" in scan.meta and not scan.meta.get("geometry_unknown")
    idx = f.decode(scan.array, 1.0, 0.0).reshape(-1, 3)
    k, r, c = idx.T
    expected = np.array(positions)[k] + c[:, None] * 0.9 * row + r[:, None] * 0.7 * col
    np.testing.assert_allclose(_world_of_voxels(scan), expected, atol=1e-6)


def test_no_position_and_no_orientation_is_marked_unknown(tmp_path, factories):
    f = factories
    raw = f.coded_raw((3, 6, 6))
    f.write_series(
        tmp_path,
        raw,
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.array([5.0, 5, 5]),
        slice_step=2.0,
        drop=("ImageOrientationPatient", "ImagePositionPatient"),
    )
    with pytest.warns(UserWarning, match="where they lie in the patient is unknown"):
        [scan] = read_scans(tmp_path)
    assert scan.meta["geometry_unknown"] is True
