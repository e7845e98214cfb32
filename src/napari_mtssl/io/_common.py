"""Small helpers shared by the readers: warnings kept in ``Scan.meta``, NaN handling, names."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from .scan import ScanReadError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def suffix_of(path: Path) -> str:
    """Lower-case suffix, with ``.nii.gz`` kept whole."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def stem_of(path: Path) -> str:
    """File name without its (possibly double) suffix: ``case_01.nii.gz`` -> ``case_01``."""
    suffix = suffix_of(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``img2`` before ``img10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def add_warning(meta: dict[str, Any], message: str, source: object, *, emit: bool = True) -> None:
    """Record a reader warning in ``meta['warnings']`` and (optionally) as a UserWarning.

    napari shows Python warnings as notifications, so the user sees them when opening a file.
    """
    meta.setdefault("warnings", []).append(message)
    if emit:
        warnings.warn(f"{source}: {message}", UserWarning, stacklevel=3)


def fill_nonfinite(
    array: np.ndarray, source: object, meta: dict[str, Any], allow_nan: bool
) -> np.ndarray:
    """Replace NaN/inf voxels by the smallest finite value, or refuse them.

    See :func:`napari_mtssl.io.read_scans` for why filling is the default.
    """
    bad = ~np.isfinite(array)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return array
    if n_bad == array.size:
        raise ScanReadError(source, "every voxel is NaN or infinite; there is no image to show")
    if not allow_nan:
        raise ScanReadError(
            source,
            f"{n_bad} of {array.size} voxels are NaN or infinite; "
            "open it with allow_nan=True to show them as the lowest intensity",
        )
    low = float(array[~bad].min())
    array = array.copy()
    array[bad] = low
    meta["nan_voxels"] = n_bad
    add_warning(
        meta,
        f"{n_bad} NaN/infinite voxels ({100 * n_bad / array.size:.2g}% of the image) "
        f"were set to the lowest intensity {low:g}",
        source,
    )
    return array


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Luminance of an RGB(A) array (last axis), in the input's own intensity range.

    Hand-written rather than ``skimage.color.rgb2gray`` because that rescales integers to
    [0, 1], and we keep the file's intensity values.
    """
    weights = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    return rgb[..., :3].astype(np.float32) @ weights


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (psutil's ``available``), else None."""
    try:
        return int(psutil.virtual_memory().available)
    except (OSError, RuntimeError):
        return None


def is_dataset_folder(folder: Path) -> bool:
    """A folder in the nnU-Net / Medical Segmentation Decathlon layout (``imagesTr/``)."""
    return folder.is_dir() and (folder / "imagesTr").is_dir()
