"""Factories for real files generated at test time: DICOM (pydicom), NIfTI (nibabel)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)


def rotation(ax: float, az: float) -> np.ndarray:
    """Rotation about x by ``ax`` then about z by ``az`` (radians)."""
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


def _base(
    sop_class: str, modality: str, series_uid: str, description: str, number: int
) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesDescription = description
    ds.SeriesNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def write_series(
    folder: Path,
    raw: np.ndarray,
    *,
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    origin: np.ndarray,
    slice_step: float,
    pixel_spacing: tuple[float, float] = (0.7, 0.9),
    thickness: float = 5.0,
    slope: float = 2.5,
    intercept: float = -1024.0,
    modality: str = "CT",
    description: str = "chest",
    number: int = 3,
    seed: int = 0,
    positions: list[np.ndarray] | None = None,
    prefix: str = "IM",
    drop: tuple[str, ...] = (),
) -> list[np.ndarray]:
    """Write ``raw`` (k, rows, cols) int16 as one file per slice under shuffled names.

    Returns the ImagePositionPatient of each slice k.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    series_uid = generate_uid()
    normal = np.cross(row_dir, col_dir)
    if positions is None:
        positions = [origin + k * slice_step * normal for k in range(raw.shape[0])]
    names = rng.permutation(raw.shape[0])
    sop = CTImageStorage if modality == "CT" else MRImageStorage
    for k in range(raw.shape[0]):
        ds = _base(sop, modality, series_uid, description, number)
        ds.InstanceNumber = int(raw.shape[0] - k)  # deliberately the reverse of the true order
        ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
        ds.SliceThickness = thickness
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.Rows, ds.Columns = raw.shape[1:]
        ds.PixelData = raw[k].astype("<i2").tobytes()
        for tag in drop:  # a header without these tags
            delattr(ds, tag)
        name = f"{prefix}{names[k]:04d}" + (".dcm" if names[k] % 2 else "")
        ds.save_as(folder / name, enforce_file_format=True)
    return positions


def write_multiframe(
    path: Path,
    raw: np.ndarray,
    *,
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    origin: np.ndarray,
    slice_step: float,
    pixel_spacing: tuple[float, float],
    slopes: list[float],
    order: list[int],
) -> None:
    """An enhanced MR file whose frames are stored in ``order`` with per-frame slope."""
    ds = _base(EnhancedMRImageStorage, "MR", generate_uid(), "enhanced", 7)
    normal = np.cross(row_dir, col_dir)
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = raw.shape[1:]
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
    measures = Dataset()
    measures.PixelSpacing = list(pixel_spacing)
    measures.SliceThickness = 1.0
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [float(v) for v in origin + k * slice_step * normal]
        item.PlanePositionSequence = Sequence([pos])
        pvt = Dataset()
        pvt.RescaleSlope = slopes[k]
        pvt.RescaleIntercept = 0.0
        pvt.RescaleType = "US"
        item.PixelValueTransformationSequence = Sequence([pvt])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.ascontiguousarray(raw[order]).astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def coded_raw(shape: tuple[int, int, int]) -> np.ndarray:
    """int16 volume whose value encodes its own (k, r, c) index: k*1000 + r*30 + c."""
    k, r, c = np.indices(shape)
    assert shape[1] <= 33 and shape[2] < 30
    return (k * 1000 + r * 30 + c).astype(np.int16)


def decode(values: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    raw = np.rint((values - intercept) / slope).astype(int)
    return np.stack([raw // 1000, (raw % 1000) // 30, (raw % 1000) % 30], axis=-1)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, *, codes=(1, 2)) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=codes[0])
    img.header.set_sform(affine, code=codes[1])
    nib.save(img, str(path))


def oblique_affine() -> np.ndarray:
    """A rotated, anisotropic, flipped and axis-swapped NIfTI (RAS) affine."""
    a = np.eye(4)
    a[:3, :3] = rotation(0.25, 0.4) @ np.diag([-0.8, 1.3, 2.5])[:, [1, 0, 2]]
    a[:3, 3] = [12.0, -30.0, 7.5]
    return a


@pytest.fixture
def factories():
    """The helpers above, for tests (conftest functions are not importable by name)."""

    class F:
        pass

    f = F()
    for fn in (
        write_series,
        write_multiframe,
        coded_raw,
        decode,
        save_nifti,
        oblique_affine,
        rotation,
    ):
        setattr(f, fn.__name__, staticmethod(fn))
    return f
