"""npe2 reader and writers. No napari import: layers go in and out as plain data tuples.

``get_reader`` follows the napari reader contract: it returns None, and never raises, for any
path it does not handle, so napari can offer the file to other plugins.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._common import IMAGE_SUFFIXES, NIFTI_SUFFIXES, TIFF_SUFFIXES, suffix_of
from ._orient import grid_affine
from .scan import Scan

LayerDataTuple = tuple[Any, dict[str, Any], str]
PathLike = str | Sequence[str]

MAX_DATASET_CASES = 4
_DICOM_PROBE = 200  # files looked at to decide whether a folder holds DICOM


def image_layer(scan: Scan) -> LayerDataTuple:
    """A napari image layer tuple for a scan (physical scale, geometry in metadata)."""
    return (scan.array, {**scan.layer_kwargs(), "colormap": "gray"}, "image")


def labels_layer(labels: np.ndarray, scan: Scan, name: str | None = None) -> LayerDataTuple:
    """A labels layer tuple over ``scan``; it carries the scan's geometry for the writers."""
    kwargs = scan.layer_kwargs()
    kwargs["name"] = name or f"{scan.name} labels"
    return (labels, kwargs, "labels")


MASK_WORDS = ("label", "mask", "seg", "annot", "gt", "truth")
MAX_MASK_CLASSES = 64


def looks_like_mask(scan: Scan) -> bool:
    """Whether an opened file is a label mask rather than an image: whole non-negative values
    and either a name that says so (``*_label*``, ``*mask*``, ``*seg*``; up to
    ``MAX_MASK_CLASSES`` distinct values) or a background of 0 with at most 16 distinct values
    up to 255 (an image has hundreds of grey levels). Such files open as a napari Labels
    layer, so they can be painted on and attached to their scan."""
    a = scan.array
    if a.size == 0:
        return False
    sample = a.reshape(-1)[:: max(1, a.size // 200_000)]
    if sample.min() < 0 or not np.array_equal(sample, np.round(sample)):
        return False
    if np.unique(sample).size > MAX_MASK_CLASSES:
        return False
    if a.min() < 0 or float(a.max()) > 65535 or not np.array_equal(a, np.round(a)):
        return False
    values = np.unique(a)
    named = any(w in (scan.name or "").lower() for w in MASK_WORDS)
    if named:
        return values.size <= MAX_MASK_CLASSES
    return values.size <= 16 and values[0] == 0 and values[-1] <= 255


def mask_layer(scan: Scan) -> LayerDataTuple:
    """A labels layer for a mask file, with its own geometry (it saves back the same way)."""
    top = float(scan.array.max()) if scan.array.size else 0.0
    data = scan.array.astype(np.uint8 if top < 256 else np.uint16)
    kwargs = scan.layer_kwargs()
    return (data, kwargs, "labels")


def _handles(path: Path) -> bool:
    """Cheap check whether ``path`` is ours; must never raise."""
    from . import is_dicom_file
    from .dataset import is_dataset_folder
    from .dicom import _walk

    if path.is_file():
        suffix = suffix_of(path)
        if suffix in NIFTI_SUFFIXES or suffix in IMAGE_SUFFIXES:
            return True
        return is_dicom_file(path)
    if not path.is_dir():
        return False
    if is_dataset_folder(path):
        return True
    entries = [e for e in path.iterdir() if not e.name.startswith(".")]
    if any(e.is_file() and suffix_of(e) in IMAGE_SUFFIXES for e in entries):
        return True
    if any(e.is_file() and suffix_of(e) in NIFTI_SUFFIXES for e in entries):
        return True
    return any(is_dicom_file(p) for p in _walk(path, limit=_DICOM_PROBE))


def get_reader(path: PathLike) -> Callable[..., list[LayerDataTuple]] | None:
    """The npe2 reader hook: a reader function for our files and folders, else None."""
    try:
        paths = [path] if isinstance(path, str | Path) else list(path)
        if not paths or not all(_handles(Path(p)) for p in paths):
            return None
    except Exception:  # noqa: BLE001 - the reader contract: never raise for a path we do not take
        return None
    return reader


def reader(path: PathLike, max_cases: int = MAX_DATASET_CASES) -> list[LayerDataTuple]:
    """Read files or folders into layer tuples. Errors are ScanReadError (napari shows them).

    A dataset folder gives the image and labels of its first ``max_cases`` cases (a whole
    dataset would not fit in memory); the Study widget opens the rest.
    """
    from . import read_scans
    from .dataset import is_dataset_folder, open_dataset

    paths = [path] if isinstance(path, str | Path) else list(path)
    layers: list[LayerDataTuple] = []
    for p in map(Path, paths):
        if p.is_dir() and is_dataset_folder(p):
            dataset = open_dataset(p)
            shown = dataset.cases[:max_cases]
            for case in shown:
                scan, labels = dataset.load(case)
                layers.append(image_layer(scan))
                if labels is not None:
                    layers.append(labels_layer(labels, scan, f"{case.name} labels"))
            if len(dataset.cases) > len(shown):
                note = (
                    f"{p}: showing the first {len(shown)} of {len(dataset.cases)} cases; "
                    "use the Study widget to work with the whole dataset"
                )
                warnings.warn(note, UserWarning, stacklevel=2)
                if layers:
                    layers[0][1]["metadata"]["mtssl_note"] = note
            continue
        for scan in read_scans(p):
            layers.append(mask_layer(scan) if looks_like_mask(scan) else image_layer(scan))
    return layers


def _like_from_attributes(data: np.ndarray, attributes: dict[str, Any]) -> Scan:
    """The scan geometry a labels layer carries (its metadata), or its scale as spacing."""
    arr = np.asarray(data)
    shape = arr.shape if arr.ndim == 3 else (1, *arr.shape[-2:])
    placeholder = np.broadcast_to(np.float32(0), shape)  # no memory: only the shape is used
    meta = dict((attributes.get("metadata") or {}).get("mtssl_scan") or {})
    if meta:
        affine = np.asarray(meta.pop("affine", np.eye(4)), dtype=float)
        spacing = tuple(meta.pop("spacing", (1.0, 1.0, 1.0)))
        source = meta.pop("source", None)
        modality = meta.pop("modality", "unknown")
        return Scan(placeholder, spacing, affine, source=source, modality=modality, meta=meta)
    scale = [float(s) for s in (attributes.get("scale") or [1.0, 1.0, 1.0])][-3:]
    spacing = (1.0, *scale) if len(scale) == 2 else tuple(scale)
    return Scan(placeholder, spacing, grid_affine(spacing))  # type: ignore[arg-type]


def write_labels_nifti(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: labels as NIfTI in the geometry of the scan they were drawn on."""
    from . import write_labels

    target = path if suffix_of(Path(path)) in NIFTI_SUFFIXES else f"{path}.nii.gz"
    write_labels(np.asarray(data), target, _like_from_attributes(data, attributes))
    return [target]


def write_labels_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: labels as an ImageJ TIFF stack with the spacing in mm."""
    from . import write_labels

    target = path if suffix_of(Path(path)) in TIFF_SUFFIXES else f"{path}.tif"
    write_labels(np.asarray(data), target, _like_from_attributes(data, attributes))
    return [target]


def write_labels_dicom_seg(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: labels of a scan read from DICOM as a DICOM-SEG referencing
    that series (a mask of any other scan is refused, with NIfTI offered instead)."""
    from napari_mtssl.export.dicomseg import write_dicom_seg

    target = path if suffix_of(Path(path)) == ".dcm" else f"{path}.dcm"
    meta = dict((attributes.get("metadata") or {}).get("mtssl_scan") or {})
    names = {
        int(k): str(v)
        for k, v in ((attributes.get("metadata") or {}).get("mtssl_label_names") or {}).items()
    }
    arr = np.asarray(data)
    for c in np.unique(arr):
        names.setdefault(int(c), "background" if c == 0 else f"class {int(c)}")
    role = str((attributes.get("metadata") or {}).get("mtssl_role") or "")
    algorithm = {"model": role.split(":", 1)[1]} if role.startswith("model:") else None
    write_dicom_seg(arr, meta, target, label_names=names, algorithm=algorithm)
    return [target]
