"""The format registry: one answer to "which format is this file, and what can we do with it",
asked by the readers, the napari hook, the CLI, the dialogs and the workspace."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtssl.io import LabelError, ScanReadError, formats, read_labels, read_scans
from napari_mtssl.io.scan import Scan, grid_affine


@pytest.mark.parametrize(
    "name, expected",
    [
        ("case.nii.gz", "nifti"),
        ("CASE.NII", "nifti"),
        ("stack.TIFF", "tiff"),
        ("slice.png", "image"),
        ("photo.jpeg", "image"),
        ("IM0001.dcm", "dicom"),
        ("mask.npy", "npy"),
    ],
)
def test_a_file_is_matched_by_its_suffix(tmp_path, name, expected):
    assert formats.format_of(tmp_path / name).name == expected


def test_dicom_without_a_suffix_is_found_inside(tmp_path, factories):
    factories.write_series(
        tmp_path,
        factories.coded_raw((2, 4, 5)),
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.zeros(3),
        slice_step=1.0,
    )
    plain = tmp_path / "IM0"
    next(p for p in sorted(tmp_path.iterdir()) if p.is_file()).rename(plain)
    assert formats.format_of(plain) is formats.DICOM
    (tmp_path / "notes").write_text("not an image")
    assert formats.format_of(tmp_path / "notes") is None
    (tmp_path / "fake.dcm").write_text("not DICOM")
    with pytest.raises(ScanReadError, match="fake.dcm: not a DICOM image file"):
        read_scans(tmp_path / "fake.dcm")


def test_what_each_format_does():
    assert formats.NIFTI.volumes and not formats.TIFF.volumes
    writable = {f.name for f in formats.label_formats(write=True)}
    assert writable == {"nifti", "tiff"}
    assert {f.name for f in formats.label_formats()} == {"nifti", "tiff", "image", "npy"}
    assert ".npy" not in formats.suffixes()  # a mask format, not a scan format


def test_the_dialog_and_the_ids_ask_the_registry():
    pattern = formats.dialog_filter()
    assert pattern.startswith("Scans (") and pattern.endswith(";;All files (*)")
    for suffix in formats.suffixes():
        assert f"*{suffix}" in pattern
    assert formats.strip_suffix("Patient_01.NII.GZ") == "Patient_01"
    assert formats.strip_suffix("series.dcm") == "series"
    assert formats.strip_suffix("notes.txt") == "notes.txt"


def test_messages_list_what_is_readable(tmp_path):
    (tmp_path / "mask.npy").write_bytes(b"")
    with pytest.raises(ScanReadError, match=r"unsupported file type; expected NIfTI \(\.nii"):
        read_scans(tmp_path / "mask.npy")  # a mask format is not a scan
    (tmp_path / "labels.xyz").write_text("x")
    with pytest.raises(LabelError, match=r"expected NIfTI .*NumPy \(\.npy\)"):
        read_labels(tmp_path / "labels.xyz")


def test_a_volume_is_chosen_only_in_nifti(tmp_path):
    import tifffile

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(ScanReadError, match="volume= applies to 4D NIfTI files only"):
        read_scans(path, volume=1)


def test_a_stored_copy_reads_back_exactly(tmp_path):
    from napari_mtssl.io.nifti import read_nifti_copy, write_nifti_scan

    rng = np.random.default_rng(0)
    affine = grid_affine((2.5, 0.8, 0.7))
    affine[:3, 3] = (-10.0, 20.0, 5.0)
    scan = Scan(
        array=rng.normal(size=(4, 6, 5)).astype(np.float32),
        spacing=(2.5, 0.8, 0.7),
        affine=affine,
        name="s",
        source="memory",
        modality="MR",
    )
    path = tmp_path / "s.nii.gz"
    write_nifti_scan(scan, path)
    back = read_nifti_copy(path, name="kept", modality="MR")
    np.testing.assert_array_equal(back.array, scan.array)
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-5)
    assert back.spacing == pytest.approx(scan.spacing)
    assert (back.name, back.modality, back.meta) == ("kept", "MR", {})
