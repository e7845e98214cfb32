"""NIfTI (.nii, .nii.gz) in and out, 2D to 4D, through nibabel.

On read the volume is reoriented to the closest LPS orientation and transposed to ``(z, y, x)``.
``Scan.meta`` keeps the source header (base64, JSON-safe) and the orientation transform, so
:func:`write_nifti_labels` writes a mask in the source file's own voxel order with the source's
affine, qform/sform codes and header: read -> write -> read is exact.
"""

from __future__ import annotations

import base64
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .._atomic import atomic_write_with
from ._common import add_warning, available_memory, fill_nonfinite, stem_of
from ._orient import RAS_TO_LPS, from_canonical, grid_affine, spacing_of, to_canonical
from .scan import LabelError, Scan, ScanReadError

_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    OverflowError,
    MemoryError,
    zlib.error,
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
)


def _load(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
    except _READ_ERRORS as exc:
        raise ScanReadError(path, f"not a readable NIfTI file ({_why(exc)})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ScanReadError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    _check_header(img, path)
    return img


def _why(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_header(img: nib.Nifti1Image, path: Path) -> None:
    """Refuse a header that would give an empty volume, exhaust memory or place the voxels
    nowhere, before any voxel is read (a NaN intercept with a real slope nibabel refuses
    itself; a NaN slope is the standard "no scaling")."""
    hdr = img.header
    dim = [int(d) for d in hdr["dim"]]
    if not 1 <= dim[0] <= 7:
        raise ScanReadError(path, f"the header's dim[0] = {dim[0]} is not a dimension count (1-7)")
    sizes = dim[1 : dim[0] + 1]
    if any(d < 1 for d in sizes):
        raise ScanReadError(path, f"the header gives an empty or negative size {tuple(sizes)}")
    n = int(np.prod(sizes[:3], dtype=np.float64))  # one volume is what is read
    need = n * 4 * 2  # float32, and the reoriented copy
    free = available_memory()
    if free is not None and need > free:
        raise ScanReadError(
            path,
            f"the header asks for {n:,} voxels ({need / 2**30:.1f} GiB to read), more than the "
            f"{free / 2**30:.1f} GiB of memory free here; the header is probably damaged",
        )
    a = np.asarray(img.affine, dtype=float)
    rzs = a[:3, :3]
    if not np.all(np.isfinite(a)):
        raise ScanReadError(path, "the header's voxel-to-world affine holds NaN or infinity")
    cols = np.linalg.norm(rzs, axis=0)
    if cols.min() <= 1e-6 or abs(np.linalg.det(rzs)) < 1e-6 * float(np.prod(cols)):
        raise ScanReadError(
            path,
            "the header's voxel-to-world affine is degenerate (a zero-length or repeated axis: "
            f"columns {np.round(rzs.T, 4).tolist()}); where the voxels lie is unknown",
        )


def _volume_data(img: nib.Nifti1Image, path: Path, volume: int | None) -> np.ndarray:
    """The 3D data to show (x, y, z order of the file), read lazily for one volume of a 4D file."""
    shape = img.shape
    try:
        if len(shape) == 2:
            return np.asarray(img.dataobj)[:, :, None]
        if len(shape) == 3:
            if volume not in (None, 0):
                raise ScanReadError(path, f"is 3D; volume={volume} does not exist")
            return np.asarray(img.dataobj)
        extra = shape[3:]
        if len(shape) > 4 and int(np.prod(shape[4:])) != 1:
            raise ScanReadError(
                path, f"has {len(shape)} dimensions {shape}; only 2D-4D is supported"
            )
        n_vol = int(extra[0])
        if volume is None:
            if n_vol != 1:
                raise ScanReadError(
                    path,
                    f"is 4D with {n_vol} volumes (e.g. time points); choose one with "
                    f"read_scans(path, volume=k), k from 0 to {n_vol - 1}",
                )
            volume = 0
        if not 0 <= volume < n_vol:
            raise ScanReadError(path, f"volume={volume} is out of range: the file has {n_vol}")
        index = (slice(None),) * 3 + (volume,) + (0,) * (len(shape) - 4)
        return np.asarray(img.dataobj[index])
    except ScanReadError:
        raise
    except _READ_ERRORS as exc:
        raise ScanReadError(path, f"the image data is truncated or corrupt ({_why(exc)})") from exc


def _modality(img: nib.Nifti1Image, data: np.ndarray) -> str:
    descrip = bytes(img.header["descrip"].item()).decode("latin-1", "replace").upper()
    words = set(descrip.replace("-", " ").replace("_", " ").split())
    if words & {"CT"}:
        return "CT"
    if words & {"MR", "MRI", "T1", "T2", "FLAIR", "T1W", "T2W", "DWI", "ADC", "PD"}:
        return "MR"
    if data.size and np.nanmin(data) < -500:  # Hounsfield units: air is -1000
        return "CT"
    return "unknown"


def read_nifti(path: Path, *, volume: int | None = None, allow_nan: bool = True) -> Scan:
    """Read one NIfTI file as a canonical ``(z, y, x)`` LPS :class:`Scan` (float32)."""
    img = _load(path)
    data = _volume_data(img, path, volume)
    meta: dict[str, Any] = {"format": "nifti"}
    if data.dtype.kind not in "iufb":
        raise ScanReadError(path, f"unsupported voxel type {data.dtype} (RGB NIfTI?)")
    data = data.astype(np.float32, copy=False)
    data = fill_nonfinite(data, path, meta, allow_nan)
    modality = _modality(img, data)
    affine_lps = RAS_TO_LPS @ img.affine
    array, affine, transform = to_canonical(data, affine_lps)
    header = img.header
    meta.update(
        {
            "nifti_header": base64.b64encode(header.binaryblock).decode("ascii"),
            "nifti_class": type(img).__name__,
            "nifti_shape": list(img.shape[:3]) if len(img.shape) >= 3 else list(img.shape),
            "nifti_transform": transform,
            "nifti_affine": img.affine.tolist(),
            "qform_code": int(header["qform_code"]),
            "sform_code": int(header["sform_code"]),
        }
    )
    if volume is not None:
        meta["volume"] = volume
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        add_warning(meta, "no qform/sform in the header: orientation is a guess", path, emit=False)
    return Scan(
        array=array,
        spacing=spacing_of(affine),
        affine=affine,
        name=stem_of(path) + (f" [{volume}]" if volume else ""),
        source=str(path),
        modality=modality,
        meta=meta,
    )


def read_nifti_labels(path: Path, like: Scan | None) -> np.ndarray:
    """A label file in the canonical orientation; checked against ``like``'s geometry."""
    img = _load(path)
    data = _volume_data(img, path, None)
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise LabelError(path, "the label mask contains NaN or infinite values")
    array, affine, _ = to_canonical(data, RAS_TO_LPS @ img.affine)
    if like is not None and array.shape == like.shape:
        _check_same_grid(path, affine, like)
    return array


def _check_same_grid(path: Path, affine: np.ndarray, like: Scan) -> None:
    """Refuse a mask whose voxel grid lies elsewhere in the patient than the image's.

    Compares the world positions of the grid's corners; more than half a voxel apart means the
    mask would be drawn shifted or mirrored over the anatomy.
    """
    if like.meta.get("format") not in ("nifti", "dicom"):
        return  # images without a patient frame: nothing to compare
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in like.shape], indexing="ij"))
    idx = np.c_[corners.reshape(3, -1).T, np.ones(8)]
    gap = np.abs(idx @ affine.T - idx @ like.affine.T)[:, :3].max()
    if gap > 0.5 * min(like.spacing):
        raise LabelError(
            path,
            f"the mask's voxel grid is {gap:.3g} mm away from the image's "
            "(different affine); it would not line up with the anatomy",
        )


def write_nifti_labels(labels: np.ndarray, path: Path, like: Scan) -> None:
    """Write a validated ``(z, y, x)`` mask as NIfTI in ``like``'s source geometry.

    With a NIfTI source the mask goes back to the file's own voxel order and header (same affine,
    qform/sform codes, NIfTI-1 or -2); otherwise the canonical grid and ``like.affine`` are used.
    """
    meta = like.meta
    if meta.get("format") == "nifti" and "nifti_header" in meta:
        data = from_canonical(labels, meta["nifti_transform"])
        klass = nib.Nifti2Image if meta.get("nifti_class") == "Nifti2Image" else nib.Nifti1Image
        header = klass.header_class(base64.b64decode(meta["nifti_header"]))
        shape = tuple(meta.get("nifti_shape", data.shape))
        if len(shape) == 2:
            data = data[:, :, 0]
        affine = header.get_best_affine()
        header.set_data_shape(data.shape)
    else:
        data = np.ascontiguousarray(labels.transpose(2, 1, 0))
        # Without a patient frame (TIFF, PNG, synthetic) only the spacing means anything.
        grid = like.affine if meta.get("format") == "dicom" else grid_affine(like.spacing)
        affine = RAS_TO_LPS @ np.asarray(grid, dtype=float)[:, [2, 1, 0, 3]]
        klass = nib.Nifti1Image
        header = nib.Nifti1Header()
        header.set_data_shape(data.shape)
        header.set_qform(affine, code=1)
        header.set_sform(affine, code=1)
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, float(data.max()) if data.size else 0
    header["descrip"] = b"napari-mtssl labels"
    img = klass(data, affine, header)
    # The affine is the header's own, so nibabel keeps the header; keep the codes regardless.
    if meta.get("format") == "nifti" and "qform_code" in meta:
        img.header["qform_code"] = int(meta["qform_code"])
        img.header["sform_code"] = int(meta["sform_code"])
    atomic_write_with(path, lambda tmp: nib.save(img, str(tmp)))


def write_nifti_scan(scan: Scan, path: str | Path) -> None:
    """A scan's voxels (float32) on its canonical grid, both qform and sform set so every
    reader (ITK, 3D Slicer, nibabel) agrees on where they lie: the workspace's stored copy of a
    scan that has no file of its own. Not atomic by itself: callers wrap it in
    :func:`napari_mtssl._atomic.atomic_write_with`."""
    data = np.ascontiguousarray(np.asarray(scan.array, dtype=np.float32).transpose(2, 1, 0))
    affine = RAS_TO_LPS @ np.asarray(scan.affine, dtype=float)[:, [2, 1, 0, 3]]
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def read_nifti_copy(path: str | Path, *, name: str, modality: str) -> Scan:
    """A scan written by :func:`write_nifti_scan`, as it was: its voxels and grid, the name and
    modality the workspace recorded, none of the reader's notes about the file."""
    s = read_nifti(Path(path))
    return Scan(
        array=s.array,
        spacing=s.spacing,
        affine=s.affine,
        name=name,
        source=str(path),
        modality=modality,
    )
