"""A file or a folder to scans, and label masks in and out: the formats' doors
(:mod:`.formats` says which format a path is; each format's module reads it).

No torch, no Qt, no napari.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import formats
from ._common import add_warning, is_dataset_folder
from .dicom import _walk, dicom_headers, read_dicom
from .nifti import read_nifti
from .scan import LabelError, Scan, ScanReadError, validate_labels

__all__ = ["read_labels", "read_scans", "write_labels"]


def read_scans(
    path: str | os.PathLike, *, volume: int | None = None, allow_nan: bool = True
) -> list[Scan]:
    """Every scan in a file or folder, in the canonical ``(z, y, x)`` LPS frame.

    * NIfTI file (2D, 3D, or 4D with ``volume=k`` choosing one volume).
    * DICOM file, or a folder of DICOM files (searched recursively, any names, other files
      skipped): one scan per series.
    * TIFF stack, single PNG/JPEG (as ``(1, y, x)``), or a folder of numbered 2D images.
    * A folder of NIfTI files: one scan each.

    NaN or infinite voxels (``allow_nan``): by default they are set to the image's lowest finite
    value, the count is kept in ``scan.meta['nan_voxels']`` and a warning is recorded in
    ``scan.meta['warnings']`` and issued (napari shows it). NaNs in clinical exports almost always
    mark voxels outside the field of view (after resampling, registration or skull stripping), so
    showing them as background is what a reader of the scan expects, while refusing the file would
    leave nothing to look at. Pass ``allow_nan=False`` to get a ScanReadError naming the file and
    the number of NaN voxels instead (e.g. in batch pipelines that must not alter data).
    """
    p = Path(path)
    if not p.exists():
        raise ScanReadError(p, "no such file or folder")
    if p.is_dir():
        return _read_folder(p, volume=volume, allow_nan=allow_nan)
    fmt = formats.format_of(p)
    if fmt not in formats.SCAN_FORMATS:
        raise ScanReadError(
            p, f"unsupported file type; expected {formats.titles(formats.SCAN_FORMATS)}"
        )
    if volume is not None and not fmt.volumes:
        raise ScanReadError(p, "volume= applies to 4D NIfTI files only")
    return fmt.read(p, volume=volume, allow_nan=allow_nan)


def _read_folder(folder: Path, *, volume: int | None, allow_nan: bool) -> list[Scan]:
    # imported here, when needed: it loads tifffile
    from .stack import image_files, read_image_folder, read_tiff

    if is_dataset_folder(folder):
        raise ScanReadError(
            folder,
            "is a dataset folder (imagesTr/ ...); open it with open_dataset(folder) "
            "or read its files one by one",
        )
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    if not entries:
        raise ScanReadError(folder, "the folder is empty")
    headers = dicom_headers(_all_files(folder))
    images = image_files(folder)
    niftis = sorted(e for e in entries if e.is_file() and formats.NIFTI.owns(e))
    if niftis and images:
        raise ScanReadError(
            folder,
            f"mixes {len(niftis)} NIfTI file(s) (e.g. {niftis[0].name}) with {len(images)} "
            f"PNG/TIFF/JPEG image(s) (e.g. {images[0].name}); open one file, or move the "
            "others out, so nothing is silently left out",
        )
    if headers:
        scans = read_dicom(folder, allow_nan=allow_nan, headers=headers)
        _say_left_out(scans, [*niftis, *images], folder)
        return scans
    if images:
        tiffs = [p for p in images if formats.TIFF.owns(p)]
        if tiffs and _n_pages(tiffs[0]) > 1:  # a folder of TIFF stacks: one scan each
            return [read_tiff(p, allow_nan=allow_nan) for p in tiffs]
        return [read_image_folder(folder, images, allow_nan=allow_nan)]
    if niftis:
        return [read_nifti(p, volume=volume, allow_nan=allow_nan) for p in niftis]
    raise ScanReadError(folder, "no DICOM files, NIfTI files or numbered images in the folder")


def _say_left_out(scans: list[Scan], others: list[Path], folder: Path) -> None:
    """Exports from a PACS often hold thumbnails or a viewer beside the DICOM files: they are
    not read, and the scans say so (one warning emitted)."""
    if not others:
        return

    for scan in scans:
        add_warning(
            scan.meta,
            f"{len(others)} non-DICOM image file(s) in the folder were not read "
            f"(e.g. {others[0].name})",
            folder,
            emit=scan is scans[0],
        )


def _all_files(folder: Path) -> list[Path]:
    return _walk(folder)


def _n_pages(path: Path) -> int:
    import tifffile  # imported here, when needed: napari's reader hook loads no TIFF code for NIfTI

    try:
        with tifffile.TiffFile(path) as tif:
            return len(tif.pages)
    except Exception:  # noqa: BLE001 - unreadable files are reported when read
        return 1


def read_labels(path: str | os.PathLike, like: Scan | None = None) -> np.ndarray:
    """A label mask (``(z, y, x)`` uint8/uint16) in the same orientation as its image.

    NIfTI labels are reoriented exactly like NIfTI images; TIFF/PNG stacks keep file order; ``.npy``
    is read without pickle. With ``like`` the mask is validated against the scan's shape (and, for
    NIfTI, that its grid lies where the image's does); a float mask with values other than whole
    class numbers raises LabelError.
    """
    p = Path(path)
    if not p.exists():
        raise LabelError(p, "no such file")
    fmt = formats.format_of(p)
    if fmt is None or not fmt.reads_labels:
        raise LabelError(
            p, f"unsupported label file type; expected {formats.titles(formats.label_formats())}"
        )
    data = fmt.read_labels(p, like)
    shape = like.shape if like is not None else (data.shape if data.ndim == 3 else (1, *data.shape))
    return validate_labels(data, shape, p)


def write_labels(labels: np.ndarray, path: str | os.PathLike, like: Scan) -> None:
    """Write a ``(z, y, x)`` mask for scan ``like`` atomically (nothing is touched on failure).

    ``.nii``/``.nii.gz``: in the source NIfTI's own voxel order, affine and header when ``like``
    came from NIfTI, else on ``like``'s canonical grid and affine. ``.tif``/``.tiff``: an ImageJ
    stack in ``(z, y, x)`` order with the spacing in mm.
    """
    p = Path(path)
    fmt = formats.format_of(p)
    if fmt is None or not fmt.writes_labels:
        kinds = formats.titles(formats.label_formats(write=True))
        raise LabelError(p, f"cannot write labels in this format; use {kinds}")
    fmt.write_labels(validate_labels(labels, like.shape, p), p, like)
