"""TIFF stacks, single 2D images and folders of numbered 2D images.

These have no patient frame, so the file order is kept: pages (or numbered files) are slices,
rows are ``y``, columns are ``x``. Spacing is 1 unless the TIFF carries ImageJ spacing or a
resolution in centimetres; resolutions in inches are screen DPI from image editors, not anatomy,
and are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .._atomic import atomic_write_with
from ._common import (
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    fill_nonfinite,
    natural_key,
    stem_of,
    suffix_of,
    to_gray,
)
from ._orient import grid_affine
from .scan import Scan, ScanReadError

_UNIT_MM = {
    "mm": 1.0,
    "millimeter": 1.0,
    "cm": 10.0,
    "centimeter": 10.0,
    "m": 1000.0,
    "meter": 1000.0,
    "um": 1e-3,
    "micron": 1e-3,
    "\\u00b5m": 1e-3,
    "µm": 1e-3,
    "nm": 1e-6,
}


def _tiff_spacing(tif: tifffile.TiffFile) -> tuple[tuple[float, float, float], str | None]:
    """(z, y, x) spacing in mm from ImageJ metadata or a centimetre resolution; else ones."""
    page = tif.pages.first
    ij = tif.imagej_metadata or {}
    unit = str(ij.get("unit", "")).strip().lower()
    scale = _UNIT_MM.get(unit)
    tags = page.tags
    res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 1
    if scale is None and not ij and res_unit == 3:  # RESUNIT.CENTIMETER
        scale = 10.0
    if scale is None:
        return (1.0, 1.0, 1.0), None

    def per_pixel(tag: str) -> float:
        if tag not in tags:
            return 1.0
        num, den = tags[tag].value
        return float(den) / float(num) * scale if num else 1.0

    z = float(ij.get("spacing", 1.0)) * scale if "spacing" in ij else 1.0
    return (z, per_pixel("YResolution"), per_pixel("XResolution")), unit or "cm"


def tiff_is_a_scan(path: Path) -> bool:
    """A grey TIFF with more than one slice, or a single slice carrying a physical spacing (as
    the plugin's own TIFF masks do). Reads the header only."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        if "S" in axes and shape[axes.index("S")] in (3, 4):
            return False
        planes = int(np.prod([n for a, n in zip(axes, shape) if a not in "YX"], dtype=np.int64))
        if planes > 1:
            return True
        return _tiff_spacing(tif)[1] is not None


def _to_stack(data: np.ndarray, axes: str, path: Path, meta: dict[str, Any]) -> np.ndarray:
    """Bring a tifffile series (axes like 'ZYX', 'YXS', 'TZCYX') to (z, y, x)."""
    if "S" in axes and data.shape[axes.index("S")] in (3, 4):
        data = to_gray(np.moveaxis(data, axes.index("S"), -1))
        axes = axes.replace("S", "")
        meta["converted_to_gray"] = True
    keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] > 1]
    data = data.reshape([data.shape[i] for i in keep]) if len(keep) < data.ndim else data
    axes = "".join(axes[i] for i in keep)
    if data.ndim == 2:
        return data[None]
    if data.ndim == 3 and axes.endswith("YX"):
        return data
    raise ScanReadError(
        path,
        f"has axes {axes} with shape {data.shape}; only a single 2D image or one stack of slices is supported",
    )


def read_tiff(path: Path, *, allow_nan: bool = True) -> Scan:
    meta: dict[str, Any] = {"format": "tiff"}
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
            spacing, unit = _tiff_spacing(tif)
    except (OSError, ValueError, EOFError, IndexError, KeyError, tifffile.TiffFileError) as exc:
        raise ScanReadError(path, f"not a readable TIFF file ({exc})") from exc
    if unit:
        meta["spacing_unit"] = unit
    return _make_scan(_to_stack(data, axes, path, meta), path, spacing, meta, allow_nan)


def _read_2d(path: Path, meta: dict[str, Any]) -> np.ndarray:
    """One 2D image (y, x) from a PNG/JPEG/BMP/single-page TIFF; colour made gray."""
    try:
        if suffix_of(path) in TIFF_SUFFIXES:
            data = tifffile.imread(path)
        else:
            import imageio.v3 as iio  # imported here, when needed: PNG/JPEG/BMP slices only

            data = iio.imread(path)
    except Exception as exc:  # noqa: BLE001 - image plugins raise many types
        raise ScanReadError(path, f"not a readable image ({exc})") from exc
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        data = to_gray(data)
        meta["converted_to_gray"] = True
    elif data.ndim == 3 and data.shape[-1] in (1, 2):  # gray (+ alpha)
        data = data[..., 0]
    if data.ndim != 2:
        raise ScanReadError(path, f"expected a 2D image, got shape {data.shape}")
    return data


def read_image(path: Path, *, allow_nan: bool = True) -> Scan:
    """A single 2D image as a (1, y, x) scan."""
    meta: dict[str, Any] = {"format": "image"}
    return _make_scan(_read_2d(path, meta)[None], path, (1.0, 1.0, 1.0), meta, allow_nan)


def image_files(folder: Path) -> list[Path]:
    """2D image files directly in ``folder``, in natural order of their names."""
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and suffix_of(p) in IMAGE_SUFFIXES
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def read_image_folder(folder: Path, files: list[Path], *, allow_nan: bool = True) -> Scan:
    """Numbered 2D images stacked in natural order (``img2`` before ``img10``)."""
    meta: dict[str, Any] = {"format": "image-folder", "files": [p.name for p in files]}
    planes = []
    for p in files:
        plane = _read_2d(p, meta)
        if planes and plane.shape != planes[0].shape:
            raise ScanReadError(
                p, f"image size {plane.shape} differs from {planes[0].shape} of {files[0].name}"
            )
        planes.append(plane)
    return _make_scan(np.stack(planes), folder, (1.0, 1.0, 1.0), meta, allow_nan)


def _make_scan(
    data: np.ndarray,
    path: Path,
    spacing: tuple[float, float, float],
    meta: dict[str, Any],
    allow_nan: bool,
) -> Scan:
    if data.dtype.kind not in "iufb":
        raise ScanReadError(path, f"unsupported pixel type {data.dtype}")
    if meta.get("converted_to_gray"):
        meta.setdefault("notes", []).append("colour image converted to gray (luminance)")
    array = fill_nonfinite(data.astype(np.float32, copy=False), path, meta, allow_nan)
    return Scan(
        array=np.ascontiguousarray(array),
        spacing=spacing,
        affine=grid_affine(spacing),
        name=stem_of(path) if path.is_file() else path.name,
        source=str(path),
        modality="unknown",
        meta=meta,
    )


def read_stack_labels(path: Path) -> np.ndarray:
    """A label stack from TIFF/PNG, in file order (as the image reader gives it)."""
    if suffix_of(path) in TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(path) as tif:
                data = tif.series[0].asarray()
                axes = tif.series[0].axes
        except (OSError, ValueError, EOFError, IndexError, KeyError, tifffile.TiffFileError) as exc:
            raise ScanReadError(path, f"not a readable TIFF file ({exc})") from exc
        keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] > 1]
        data = data.reshape([data.shape[i] for i in keep])
    else:
        try:
            import imageio.v3 as iio  # imported here, when needed: PNG/JPEG/BMP slices only

            data = np.asarray(iio.imread(path))
        except Exception as exc:  # noqa: BLE001
            raise ScanReadError(path, f"not a readable image ({exc})") from exc
        if data.ndim == 3 and data.shape[-1] in (1, 2):
            data = data[..., 0]
    return data[None] if data.ndim == 2 else data


def write_tiff_labels(labels: np.ndarray, path: Path, spacing: tuple[float, float, float]) -> None:
    """A ``(z, y, x)`` mask as an ImageJ TIFF stack with its spacing in mm (Fiji reads it)."""
    z, y, x = (float(s) for s in spacing)

    def write(tmp: Path) -> None:
        tifffile.imwrite(
            tmp,
            labels,
            imagej=True,
            resolution=(1.0 / x, 1.0 / y),
            metadata={"spacing": z, "unit": "mm", "axes": "ZYX"},
        )

    atomic_write_with(path, write)
