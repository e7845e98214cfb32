"""DICOM series, single files and enhanced multi-frame files, through pydicom.

Files are scanned header-only (``stop_before_pixels``), grouped by SeriesInstanceUID, then by
orientation and matrix size (a localiser series can hold three planes). Slices are ordered by
their ImagePositionPatient projected on the slice normal (InstanceNumber only when positions are
missing); the slice spacing is the measured median distance between positions, since
SliceThickness is the slab thickness and often differs from the spacing (overlapping or gapped
reconstructions). The volume is then reoriented to the closest LPS orientation like NIfTI.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ImplicitVRLittleEndian

from ._common import IMAGE_SUFFIXES, NIFTI_SUFFIXES, add_warning, fill_nonfinite, suffix_of, to_gray
from ._orient import spacing_of, to_canonical
from .scan import Scan, ScanReadError

# Never worth parsing as DICOM: saves a forced parse of every file in mixed folders.
_NOT_DICOM = {
    *IMAGE_SUFFIXES,
    *NIFTI_SUFFIXES,
    ".gz",
    ".txt",
    ".json",
    ".csv",
    ".xml",
    ".html",
    ".pdf",
    ".md",
    ".py",
    ".zip",
    ".npy",
    ".npz",
    ".mha",
    ".mhd",
    ".nrrd",
    ".raw",
    ".db",
    ".ini",
}
_NOT_IMAGES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC"}


def _decoder_hint(ts: UID) -> str:
    name = ts.name.lower()
    if "2000" in name:
        return "pip install pylibjpeg pylibjpeg-openjpeg"
    if "jpeg-ls" in name:
        return "pip install pyjpegls"
    if "jpeg" in name:
        return "pip install pylibjpeg pylibjpeg-libjpeg"
    if "rle" in name:
        return "pip install pylibjpeg pylibjpeg-rle"
    return "install a pydicom pixel data plugin for it (see the pydicom documentation)"


def _read_header(path: Path) -> Dataset | None:
    """The header of a DICOM image file, or None for anything else (never raises)."""
    try:
        if not path.is_file() or path.stat().st_size < 64:
            return None
        with open(path, "rb") as fh:
            fh.seek(128)
            has_magic = fh.read(4) == b"DICM"
        if not has_magic and suffix_of(path) in _NOT_DICOM:
            return None
        # force=True only for files without the preamble (older exports), and then only
        # accepted when the parse looks like a real image header.
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=not has_magic, defer_size="4 KB")
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return None
    except Exception:  # noqa: BLE001 - a forced parse of garbage can fail in any way
        return None
    try:
        if "Rows" not in ds or "Columns" not in ds:
            return None
        if not has_magic and "SOPClassUID" not in ds and "Modality" not in ds:
            return None
        int(ds.Rows), int(ds.Columns)
    except Exception:  # noqa: BLE001
        return None
    return ds


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a DICOM file holding an image (with or without the 128-byte preamble)."""
    return _read_header(Path(path)) is not None


@dataclass
class _Frame:
    """One 2D image of a series: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    frame: int | None
    shape: tuple[int, int]
    ipp: np.ndarray | None
    iop: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    instance: int
    thickness: float | None
    between: float | None


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _float(value: Any, default: float | None) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if np.isfinite(out) else default


def _lookup(ds: Dataset, groups: list[Dataset], seq: str, attr: str) -> Any:
    """An attribute from the per-frame group, then the shared group, then the top level."""
    for group in groups:
        if seq in group and len(group[seq].value):
            item = group[seq].value[0]
            if attr in item:
                return item[attr].value
    return ds.get(attr)


def _frames_of(path: Path, ds: Dataset) -> list[_Frame]:
    shape = (int(ds.Rows), int(ds.Columns))
    n_frames = int(_float(ds.get("NumberOfFrames", 1), 1) or 1)
    shared = (
        ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    )
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    frames = []
    for i in range(n_frames):
        groups = []
        if per_frame is not None and i < len(per_frame):
            groups.append(per_frame[i])
        if shared is not None:
            groups.append(shared)

        def get(seq: str, attr: str, _groups: list[Dataset] = groups) -> Any:
            return _lookup(ds, _groups, seq, attr)

        ps = _floats(get("PixelMeasuresSequence", "PixelSpacing") or [], 2)
        if ps is None:
            ps = _floats(ds.get("ImagerPixelSpacing") or [], 2)
        frames.append(
            _Frame(
                path=path,
                frame=i if n_frames > 1 else None,
                shape=shape,
                ipp=_floats(get("PlanePositionSequence", "ImagePositionPatient") or [], 3),
                iop=_floats(get("PlaneOrientationSequence", "ImageOrientationPatient") or [], 6),
                pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
                slope=_float(get("PixelValueTransformationSequence", "RescaleSlope"), 1.0) or 1.0,
                intercept=_float(get("PixelValueTransformationSequence", "RescaleIntercept"), 0.0)
                or 0.0,
                instance=int(_float(ds.get("InstanceNumber"), 0) or 0) * 100000 + i,
                thickness=_float(get("PixelMeasuresSequence", "SliceThickness"), None),
                between=_float(get("PixelMeasuresSequence", "SpacingBetweenSlices"), None),
            )
        )
    return frames


def _decode(path: Path, ds: Dataset) -> np.ndarray:
    """``ds.pixel_array`` with the transfer syntax named in every failure."""
    file_meta = getattr(ds, "file_meta", None)
    ts = UID(
        file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)
        if file_meta
        else ImplicitVRLittleEndian
    )
    if ts.is_compressed:
        # imported here, when needed: pydicom's pixel decoders, for compressed files only
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise ScanReadError(
                path, f"{ts.name} ({ts}): pydicom cannot decode this transfer syntax"
            ) from None
        if not decoder.is_available:
            raise ScanReadError(
                path, f"{ts.name} ({ts}): no decoder installed; {_decoder_hint(ts)}"
            )
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise anything; the message is what matters
        raise ScanReadError(path, f"cannot decode the pixel data ({ts.name}, {ts}): {exc}") from exc


def _load_pixels(frames: list[_Frame], meta: dict[str, Any]) -> np.ndarray:
    """Raw pixel values of the frames in the given order, as float32 (k, rows, cols)."""
    cache: dict[Path, np.ndarray] = {}
    out = None
    for k, fr in enumerate(frames):
        if fr.path not in cache:
            try:
                ds = pydicom.dcmread(fr.path, force=True)
            except Exception as exc:  # noqa: BLE001
                raise ScanReadError(fr.path, f"cannot read the DICOM file ({exc})") from exc
            pixels = _decode(fr.path, ds)
            n_frames = int(_float(ds.get("NumberOfFrames", 1), 1) or 1)
            samples = int(ds.get("SamplesPerPixel", 1))
            if samples > 1:
                pixels = to_gray(pixels)
                meta["converted_to_gray"] = True
            if n_frames == 1:
                pixels = pixels[None]
            if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
                meta["monochrome1_inverted"] = True
            # Single-frame files are used once: only multi-frame files are worth keeping.
            if n_frames > 1:
                cache[fr.path] = pixels
        else:
            pixels = cache[fr.path]
        plane = pixels[fr.frame or 0]
        if plane.shape != fr.shape:
            raise ScanReadError(
                fr.path, f"pixel data {plane.shape} does not match Rows x Columns {fr.shape}"
            )
        if out is None:
            out = np.empty((len(frames), *fr.shape), dtype=np.float32)
        out[k] = plane.astype(np.float32) * np.float32(fr.slope) + np.float32(fr.intercept)
    assert out is not None
    if meta.get("monochrome1_inverted"):
        # MONOCHROME1 shows high values dark; invert so the display matches the scanner's.
        out = out.max() + out.min() - out
    return out


def _check_geometry(frames: list[_Frame]) -> None:
    """Refuse, naming the file, what would place slices wrongly without a word: some images
    of a series with position and orientation and others without, a pixel spacing that is not
    positive, orientation vectors that are not two perpendicular directions."""
    tags = (("ipp", "ImagePositionPatient"), ("iop", "ImageOrientationPatient"))
    for attr, tag in tags:
        have = [f for f in frames if getattr(f, attr) is not None]
        lack = [f for f in frames if getattr(f, attr) is None]
        if have and lack:
            raise ScanReadError(
                lack[0].path,
                f"lacks {tag} (or it is malformed) while {len(have)} other image(s) of its "
                f"series have it ({len(lack)} lack it); the slices' order and position cannot "
                "be trusted: remove this file or repair its header",
            )
    for f in frames:
        if f.pixel_spacing is not None and min(f.pixel_spacing) <= 0:
            raise ScanReadError(
                f.path, f"PixelSpacing {list(f.pixel_spacing)} is not a positive size in mm"
            )
        if f.iop is not None:
            r, c = f.iop[:3], f.iop[3:]
            nr, nc = float(np.linalg.norm(r)), float(np.linalg.norm(c))
            if nr < 1e-3 or nc < 1e-3 or np.linalg.norm(np.cross(r / nr, c / nc)) < 0.5:
                raise ScanReadError(
                    f.path,
                    f"ImageOrientationPatient {[round(float(v), 4) for v in f.iop]} is not two "
                    "perpendicular directions; the image's orientation is unknown",
                )


def _plane_name(normal: np.ndarray) -> str:
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


# The usual in-plane axes (LPS) of each plane, as scanners write them: (row, column).
_USUAL_AXES = {
    "axial": (np.array([1.0, 0, 0]), np.array([0, 1.0, 0])),
    "coronal": (np.array([1.0, 0, 0]), np.array([0, 0, -1.0])),
    "sagittal": (np.array([0, 1.0, 0]), np.array([0, 0, -1.0])),
}


def _axis_words(v: np.ndarray) -> str:
    i = int(np.argmax(np.abs(v)))
    return (("right", "left"), ("front", "back"), ("feet", "head"))[i][int(v[i] > 0)]


def _axes_from_positions(frames: list[_Frame]) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Row and column directions for a series with ImagePositionPatient but no orientation:
    the positions' main direction is the slice normal (unambiguous when they spread along a
    line); the in-plane axes are the usual ones of the closest plane, turned to be
    perpendicular to it. None when there is nothing to derive from."""
    if len(frames) < 2 or any(f.ipp is None or f.iop is not None for f in frames):
        return None
    pts = np.array([f.ipp for f in frames], float)
    centred = pts - pts.mean(0)
    if float(np.linalg.norm(centred, axis=1).max()) < 1e-3:
        return None  # every image at one position: no direction
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    if len(sv) > 1 and sv[1] > 0.05 * sv[0]:
        return None  # the positions do not lie along one line
    u = vt[0] / np.linalg.norm(vt[0])
    plane = _plane_name(u)
    row, col = _USUAL_AXES[plane]
    usual_normal = np.cross(row, col)
    normal = u if float(u @ usual_normal) >= 0 else -u
    row = row - (row @ normal) * normal
    row = row / np.linalg.norm(row)
    return row, np.cross(normal, row), plane


def _stack(
    frames: list[_Frame], source: Path, meta: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Order the frames and build the (k, row, col) array and its LPS affine."""
    first = frames[0]
    row_sp, col_sp = first.pixel_spacing or (1.0, 1.0)
    if first.pixel_spacing is None:
        add_warning(meta, "no PixelSpacing: in-plane spacing set to 1 mm", source)
    thick = first.between or first.thickness or 1.0  # one slice: its own thickness
    axes = _in_plane_axes(frames, source, meta)
    if axes is not None:
        row_dir, col_dir = axes
        normal = np.cross(row_dir, col_dir)
        frames = _by_position(frames, normal, source, meta)
        origin, zvec = _slice_vector(frames, normal, thick, source, meta)
    else:
        row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
        normal = np.cross(row_dir, col_dir)
        frames = _by_instance(frames, source, meta)
        origin, zvec = np.zeros(3), normal * thick
    affine = np.eye(4)
    affine[:3, 0] = zvec
    affine[:3, 1] = col_dir * row_sp  # down the rows: along the column direction
    affine[:3, 2] = row_dir * col_sp  # along a row: the row direction
    affine[:3, 3] = origin  # type: ignore[assignment]
    meta["slice_thickness"] = first.thickness
    meta["measured_slice_spacing"] = float(np.linalg.norm(zvec))
    meta["files"] = sorted({str(f.path) for f in frames})
    # The source of each plane of the array, in its order (before reorientation): what a
    # DICOM-SEG needs to reference each segmentation frame's source image.
    meta["frames"] = [[str(f.path), f.frame] for f in frames]
    return _load_pixels(frames, meta), affine


def _in_plane_axes(
    frames: list[_Frame], source: Path, meta: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The row and column directions: the first image's ImageOrientationPatient where every
    image has a position and an orientation, else derived from the positions (said in
    ``meta``); None where the series has no geometry."""
    first = frames[0]
    if all(f.ipp is not None and f.iop is not None for f in frames):
        row_dir = first.iop[:3] / np.linalg.norm(first.iop[:3])  # type: ignore[index]
        col_dir = first.iop[3:] / np.linalg.norm(first.iop[3:])  # type: ignore[index]
        return row_dir, col_dir
    derived = _axes_from_positions(frames)
    if derived is None:
        return None
    row_dir, col_dir, plane = derived
    meta["orientation_assumed"] = (
        f"{plane}: the slice direction from the images' positions, the in-plane axes "
        f"assumed ({_axis_words(row_dir)} along a row, {_axis_words(col_dir)} down a column)"
    )
    add_warning(
        meta,
        f"no ImageOrientationPatient in series {meta.get('series_description') or '?'}: "
        f"the slices are stacked along the direction of their ImagePositionPatient "
        f"({plane}); the in-plane axes are assumed to be the usual {plane} ones "
        f"({_axis_words(row_dir)} along a row, {_axis_words(col_dir)} down a column): "
        "check the left-right and front-back of the image before trusting positions",
        source,
    )
    return row_dir, col_dir


def _by_position(
    frames: list[_Frame], normal: np.ndarray, source: Path, meta: dict[str, Any]
) -> list[_Frame]:
    """The frames ordered along ``normal`` (then by InstanceNumber), the first at each
    position kept (several at one position: a warning)."""
    key = [float(f.ipp @ normal) for f in frames]  # type: ignore[operator]
    order = np.lexsort((np.array([f.instance for f in frames]), np.round(key, 3)))
    frames = [frames[i] for i in order]
    dist = np.round(np.array([key[i] for i in order]), 3)
    keep = np.r_[True, np.diff(dist) > 0]
    if keep.all():
        return frames
    add_warning(
        meta,
        f"{int((~keep).sum())} images share a slice position with another (several "
        "time points or echoes?); the first at each position is shown",
        source,
    )
    return [f for f, k in zip(frames, keep) if k]


def _by_instance(frames: list[_Frame], source: Path, meta: dict[str, Any]) -> list[_Frame]:
    """The frames of a series without geometry, ordered by InstanceNumber (said in ``meta``:
    where they lie in the patient is unknown)."""
    frames = sorted(frames, key=lambda f: f.instance)
    if len(frames) > 1:
        missing = [
            t
            for t, attr in (("ImagePositionPatient", "ipp"), ("ImageOrientationPatient", "iop"))
            if all(getattr(f, attr) is None for f in frames)
        ]
        add_warning(
            meta,
            f"no {' and no '.join(missing)} in any image of series "
            f"{meta.get('series_description') or '?'}: slices ordered by InstanceNumber "
            "on a grid at the origin (where they lie in the patient is unknown)",
            source,
        )
        meta["geometry_unknown"] = True
    return frames


def _slice_vector(
    frames: list[_Frame], normal: np.ndarray, thick: float, source: Path, meta: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """The first slice's position and the step from one slice to the next (the median
    spacing along the line through the positions; irregular spacing and gantry tilt recorded
    in ``meta``). One slice: ``thick`` along ``normal``."""
    if len(frames) < 2:
        return frames[0].ipp, normal * thick
    origin = frames[0].ipp
    span = frames[-1].ipp - origin  # type: ignore[operator]
    unit = span / np.linalg.norm(span)
    steps = np.diff(np.array([f.ipp for f in frames]) @ unit)
    step = float(np.median(steps))
    if steps.max() - steps.min() > 0.01 * step + 1e-3:
        meta["irregular_spacing"] = [float(steps.min()), float(steps.max())]
        add_warning(
            meta,
            f"irregular slice spacing ({steps.min():.3g} to {steps.max():.3g} mm); the volume "
            f"is shown with the median {step:.3g} mm",
            source,
        )
    tilt = float(np.degrees(np.arccos(min(1.0, abs(float(unit @ normal))))))
    if tilt > 0.5:
        meta["gantry_tilt_deg"] = tilt
    return origin, unit * step


def _series_scans(
    headers: list[tuple[Path, Dataset]], allow_nan: bool
) -> list[tuple[tuple[int, str], Scan]]:
    ds0 = headers[0][1]
    description = str(ds0.get("SeriesDescription", "") or "").strip()
    number = ds0.get("SeriesNumber")
    uid = str(ds0.get("SeriesInstanceUID", ""))
    name = description or (
        f"series {number}" if number is not None else f"series {uid[-12:] or '?'}"
    )
    modality = str(ds0.get("Modality", "") or "").upper()
    frames = [fr for path, ds in headers for fr in _frames_of(path, ds)]
    _check_geometry(frames)
    groups: dict[tuple, list[_Frame]] = defaultdict(list)
    for fr in frames:
        iop_key = None if fr.iop is None else tuple(np.round(fr.iop, 3))
        groups[(iop_key, fr.shape)].append(fr)
    ts = getattr(ds0, "file_meta", None)
    out = []
    for part, group in enumerate(sorted(groups.values(), key=len, reverse=True)):
        source = group[0].path if len(headers) == 1 else group[0].path.parent
        meta: dict[str, Any] = {
            "format": "dicom",
            "series_uid": uid,
            "series_number": None if number is None else int(_float(number, 0) or 0),
            "series_description": description,
            "dicom_modality": modality,
            "frame_of_reference_uid": str(ds0.get("FrameOfReferenceUID", "")),
            "transfer_syntax": str(ts.get("TransferSyntaxUID", "")) if ts else "",
            "n_images": len(group),
        }
        array, affine = _stack(group, source, meta)
        array = fill_nonfinite(array, source, meta, allow_nan)
        canon, canon_affine, transform = to_canonical(array, affine)
        meta["dicom_transform"] = transform
        label = name
        if len(groups) > 1:
            normal = (
                np.cross(group[0].iop[:3], group[0].iop[3:])
                if group[0].iop is not None
                else np.array([0, 0, 1.0])
            )
            label = f"{name} {_plane_name(normal)} {part + 1}"
        scan = Scan(
            array=canon,
            spacing=spacing_of(canon_affine),
            affine=canon_affine,
            name=label,
            source=str(source),
            modality=modality if modality in ("CT", "MR") else "unknown",
            meta=meta,
        )
        out.append(((meta["series_number"] or 0, label), scan))
    return out


def _walk(folder: Path, limit: int | None = None) -> list[Path]:
    """Non-hidden files under ``folder`` (recursively, sorted), at most ``limit`` of them."""
    files: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
        if limit is not None and len(files) >= limit:
            return files[:limit]
    return files


def dicom_headers(paths: list[Path]) -> list[tuple[Path, Dataset]]:
    """Headers of the DICOM image files among ``paths``; other files are skipped."""
    out = []
    for path in paths:
        ds = _read_header(path)
        if ds is not None and str(ds.get("Modality", "")).upper() not in _NOT_IMAGES:
            out.append((path, ds))
    return out


def read_dicom(path: Path, *, allow_nan: bool = True, headers: list | None = None) -> list[Scan]:
    """All image series in a DICOM file or folder (searched recursively), one Scan per series.

    Several multi-frame files in one series (rare) each become their own scan.
    """
    if headers is None:
        headers = dicom_headers(_walk(path) if path.is_dir() else [path])
    if not headers:
        raise ScanReadError(
            path, "no DICOM files in the folder" if path.is_dir() else "not a DICOM image file"
        )
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for p, ds in headers:
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        n_frames = int(_float(ds.get("NumberOfFrames", 1), 1) or 1)
        # Multi-frame files are complete volumes; keep them apart even within a series.
        series[uid + (f"#{p}" if n_frames > 1 else "")].append((p, ds))
    keyed = [item for group in series.values() for item in _series_scans(group, allow_nan)]
    keyed.sort(key=lambda kv: kv[0])
    scans = [scan for _, scan in keyed]
    seen: dict[str, int] = defaultdict(int)
    for scan in scans:
        seen[scan.name] += 1
        if seen[scan.name] > 1:
            number = scan.meta.get("series_number")
            scan.name = f"{scan.name} ({number if number is not None else seen[scan.name]})"
    return scans
