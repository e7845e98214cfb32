from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import napari_mtssl.workspace.core as core
from napari_mtssl.io.nifti import read_nifti_copy
from napari_mtssl.workspace import Workspace, WorkspaceError, checksum

from .conftest import make_scan, write_nifti


def test_nifti_affine_convention(tmp_path: Path) -> None:
    scan = make_scan()
    write_nifti(scan, tmp_path / "s.nii.gz")
    img = nib.load(tmp_path / "s.nii.gz")
    # index (x=1, y=0, z=0) in NIfTI is index (z=0, y=0, x=1) of the scan; RAS = LPS * (-1,-1,1)
    lps = scan.affine @ [0, 0, 1, 1]
    np.testing.assert_allclose(img.affine @ [1, 0, 0, 1], lps * [-1, -1, 1, 1], atol=1e-5)
    assert img.shape == (5, 6, 4)  # (x, y, z)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    back = read_nifti_copy(tmp_path / "s.nii.gz", name="s", modality="MR")
    np.testing.assert_array_equal(back.array, scan.array)
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-5)
    np.testing.assert_allclose(back.spacing, scan.spacing)


def test_nifti_reader_reorients_ras_files_to_lps(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # (x, y, z) in RAS
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0])), tmp_path / "ras.nii")
    scan = read_nifti_copy(tmp_path / "ras.nii", name="ras", modality="MR")
    assert scan.shape == (4, 3, 2)
    # x and y flipped (R->L, A->P), then transposed to (z, y, x)
    np.testing.assert_array_equal(scan.array, data[::-1, ::-1, :].transpose(2, 1, 0))
    assert scan.spacing == (4.0, 3.0, 2.0)
    # the world position of every voxel is unchanged (LPS = RAS * (-1, -1, 1))
    ras = np.diag([2.0, 3.0, 4.0, 1.0]) @ [1, 2, 3, 1]  # voxel x=1, y=2, z=3
    lps = scan.affine @ [3, 3 - 1 - 2, 2 - 1 - 1, 1]
    np.testing.assert_allclose(lps, ras * [-1, -1, 1, 1])


def test_add_scan_from_file_records_path_and_checksum(ws: Workspace, tmp_path: Path) -> None:
    scan = write_nifti(make_scan(), tmp_path / "data" / "patient001.nii.gz")
    sid = ws.add_scan(scan, split="val")
    rec = ws.record(sid)
    assert sid == "patient001"
    assert rec.path == (tmp_path / "data" / "patient001.nii.gz").resolve()
    assert not rec.stored and not (ws.root / "scans").exists()
    assert rec.sha256 == checksum(rec.path) and len(rec.sha256) == 64
    assert rec.shape == (4, 6, 5) and rec.spacing == pytest.approx((3.0, 0.8, 0.7))
    assert rec.split == "val" and rec.modality == "MR"
    back = ws.load_scan(sid)
    np.testing.assert_allclose(back.array, scan.array)
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-5)
    assert back.name == "patient001"


def test_add_in_memory_scan_stores_copy(ws: Workspace) -> None:
    scan = make_scan(name="sample case 1")
    sid = ws.add_scan(scan)
    rec = ws.record(sid)
    assert sid == "sample-case-1"
    assert rec.stored and rec.path == ws.root / "scans" / f"{sid}.nii.gz"
    assert rec.sha256 == checksum(rec.path)
    back = Workspace.open(ws.root).load_scan(sid)
    np.testing.assert_array_equal(back.array, scan.array)
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-5)
    assert back.spacing == pytest.approx(scan.spacing)
    assert back.name == "sample case 1" and back.modality == "MR"


def test_store_copy_true_for_file_scan(ws: Workspace, tmp_path: Path) -> None:
    scan = write_nifti(make_scan(), tmp_path / "p.nii.gz")
    sid = ws.add_scan(scan, store_copy=True)
    rec = ws.record(sid)
    assert rec.stored and rec.source == str((tmp_path / "p.nii.gz").resolve())
    os.remove(tmp_path / "p.nii.gz")
    np.testing.assert_array_equal(ws.load_scan(sid).array, scan.array)


def test_store_copy_false_without_file_is_refused(ws: Workspace) -> None:
    with pytest.raises(WorkspaceError, match="store_copy=True"):
        ws.add_scan(make_scan(), store_copy=False)
    assert ws.scan_ids() == []


def test_ids_unique_and_safe(ws: Workspace) -> None:
    a = ws.add_scan(make_scan(name="Patient 1/../x"))
    b = ws.add_scan(make_scan(name="Patient 1/../x"))
    c = ws.add_scan(make_scan(name="///"))
    assert a == "Patient-1-x" and b == "Patient-1-x-2" and c == "scan"
    assert ws.add_scan(make_scan(), scan_id="custom_1") == "custom_1"
    for bad in ("../evil", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(WorkspaceError, match="not allowed"):
            ws.add_scan(make_scan(), scan_id=bad)
    with pytest.raises(WorkspaceError, match="already used"):
        ws.add_scan(make_scan(), scan_id="custom_1")
    assert len(ws.scan_ids()) == 4


def test_load_scan_after_file_changed(ws: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "p.nii.gz"
    sid = ws.add_scan(write_nifti(make_scan(seed=0), path))
    ws.load_scan(sid)
    write_nifti(make_scan(seed=1), path)
    with pytest.raises(WorkspaceError, match=r"p\.nii\.gz.*changed since it was added"):
        ws.load_scan(sid)
    with pytest.raises(WorkspaceError, match="changed since it was added"):
        Workspace.open(ws.root).load_scan(sid)
    ws.load_scan(sid, verify=False)  # explicit opt-out still reads
    ws.relink_scan(sid)  # accept the change
    ws.load_scan(sid)
    assert Workspace.open(ws.root).record(sid).sha256 == checksum(path)


def test_load_scan_missing_file(ws: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "p.nii.gz"
    sid = ws.add_scan(write_nifti(make_scan(), path))
    moved = tmp_path / "moved" / "p.nii.gz"
    moved.parent.mkdir()
    os.replace(path, moved)
    with pytest.raises(WorkspaceError, match=r"p\.nii\.gz.*missing"):
        ws.load_scan(sid)
    ws.relink_scan(sid, moved)
    assert ws.record(sid).path == moved.resolve()
    ws.load_scan(sid)
    # relinking to a file of another shape is refused and changes nothing
    other = write_nifti(make_scan(shape=(2, 6, 5)), tmp_path / "other.nii.gz")
    with pytest.raises(WorkspaceError, match="shape"):
        ws.relink_scan(sid, other.source)
    assert ws.record(sid).path == moved.resolve()


def test_checksum_is_cached_per_session(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = ws.add_scan(write_nifti(make_scan(), tmp_path / "p.nii.gz"))
    calls = []
    real = core.checksum
    monkeypatch.setattr(core, "checksum", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        ws.load_scan(sid)
    assert calls == []  # computed at add time, remembered by mtime and size
    os.utime(tmp_path / "p.nii.gz", ns=(1, 1))  # touched: checked again (still the same bytes)
    ws.load_scan(sid)
    ws.load_scan(sid)
    assert len(calls) == 1


def test_folder_checksum(tmp_path: Path) -> None:
    d = tmp_path / "series"
    (d / "sub").mkdir(parents=True)
    (d / "a.dcm").write_bytes(b"one")
    (d / "sub" / "b.dcm").write_bytes(b"two")
    h = checksum(d)
    (d / ".DS_Store").write_bytes(b"junk")
    assert checksum(d) == h  # hidden files ignored
    (d / "sub" / "b.dcm").write_bytes(b"tw0")
    assert checksum(d) != h
    (d / "sub" / "b.dcm").write_bytes(b"two")
    os.rename(d / "a.dcm", d / "c.dcm")
    assert checksum(d) != h  # names count, not only contents


def test_source_index_and_folder_source(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan from a folder of several series is re-read with io.read_scans(folder)[index]."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    (folder / "1.dcm").write_bytes(b"x")
    scans = [make_scan(name="s0", seed=0), make_scan(name="s1", seed=1, shape=(3, 6, 5))]
    for s in scans:
        s.source = str(folder)
    monkeypatch.setattr(
        core,
        "read_scans",
        lambda p: [make_scan(name="s0", seed=0), make_scan(name="s1", seed=1, shape=(3, 6, 5))],
    )
    sid = ws.add_scan(scans[1], source_index=1)
    rec = ws.record(sid)
    assert rec.path == folder.resolve() and rec.source_index == 1 and not rec.stored
    np.testing.assert_array_equal(ws.load_scan(sid).array, scans[1].array)


def test_remove_scan_keeps_labels_in_trash(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan())
    lab = np.zeros((4, 6, 5), np.uint8)
    lab[1, 1, 1] = 1
    ws.set_labels(sid, lab)
    ws.remove_scan(sid)
    assert ws.scan_ids() == []
    assert not (ws.root / "labels" / f"{sid}.npz").exists()
    trashed = list((ws.root / "trash").glob(f"{sid}-*/{sid}.npz"))
    assert len(trashed) == 1
    with np.load(trashed[0], allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["mask"], lab)
    assert list((ws.root / "trash").glob(f"{sid}-*/{sid}.nii.gz"))
    # the id is free again and the new scan starts without the old labels
    sid2 = ws.add_scan(make_scan())
    assert sid2 == sid and ws.labelled_slices(sid2) == []
    with pytest.raises(WorkspaceError, match="no scan"):
        ws.remove_scan("nope")


def test_orphan_label_files_block_id_reuse(ws: Workspace) -> None:
    (ws.root / "labels").mkdir()
    (ws.root / "labels" / "patient001.npz").write_bytes(b"left over by a crash")
    assert ws.add_scan(make_scan()) == "patient001-2"
