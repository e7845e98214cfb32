"""npe2 reader and writers. Layers go in and out as plain data tuples; napari is never imported
here (a writer looks at the viewer only when napari is already running, to find the scan a
labels layer made in napari lies on).

``get_reader`` follows the napari reader contract: it returns None, and never raises, for any
path it does not handle, so napari can offer the file to other plugins. It claims only what the
plugin means by a scan: NIfTI files, DICOM files and folders, dataset folders, TIFF stacks (or a
TIFF carrying a physical spacing) and folders of 2D slices. A single PNG/JPEG/BMP picture or a
colour TIFF is left to napari's own reader.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_mtssl.colours import labels_colour_dict

from . import formats, is_dicom_file, read_scans, write_labels
from ._common import natural_key
from ._orient import grid_affine
from .dataset import is_dataset_folder, label_names_near, open_dataset
from .dicom import _walk
from .scan import LabelError, Scan

LayerDataTuple = tuple[Any, dict[str, Any], str]
PathLike = str | Sequence[str]

SCAN_KEY = "mtssl_scan"  # layer metadata: the geometry of the scan the layer shows or belongs to
MASK_GUESS_KEY = "mtssl_opened_as_labels"  # layer metadata: why a file opened as labels
MAX_DATASET_CASES = 4
PROBE_FILES = 16  # files a folder probe opens, at most, to decide whether the folder is ours


def image_layer(scan: Scan) -> LayerDataTuple:
    """A napari image layer tuple for a scan (physical scale, geometry in metadata)."""
    return (scan.array, {**scan.layer_kwargs(), "colormap": "gray"}, "image")


WORKSPACE_KEY = "mtssl_workspace"  # layer metadata: the root of the workspace of the layer's scan
NAMES_KEY = "mtssl_label_names"  # layer metadata: {"class number": "name"} (DICOM-SEG segments)


def class_features(names: dict[int, str]) -> dict[str, list] | None:
    """A Labels layer's ``features`` table naming each class, so that napari's status bar shows
    "class: left ventricle" under the pointer instead of a bare number; None without names."""
    if not names:
        return None
    values = sorted(int(k) for k in names)
    return {"index": values, "class": [str(names[v]) for v in values]}


def _name_classes(kwargs: dict[str, Any], names: dict[int, str]) -> None:
    features = class_features(names)
    if features is not None:
        kwargs["features"] = features
        kwargs["metadata"][NAMES_KEY] = {str(k): v for k, v in names.items()}


def labels_layer(
    labels: np.ndarray,
    scan: Scan,
    name: str | None = None,
    names: dict[int, str] | None = None,
) -> LayerDataTuple:
    """A labels layer tuple over ``scan``; it carries the scan's geometry for the writers and,
    given ``names``, the class names (hover, DICOM-SEG segments)."""
    kwargs = scan.layer_kwargs()
    kwargs["name"] = name or f"{scan.name} labels"
    kwargs["colormap"] = labels_colour_dict()
    _name_classes(kwargs, names or {})
    return (labels, kwargs, "labels")


MASK_WORDS = ("label", "mask", "seg", "annot", "gt", "truth")
MAX_MASK_CLASSES = 64


def _values_text(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:6])
    return shown + (", ..." if values.size > 6 else "")


def _mask_guess(scan: Scan) -> tuple[str, bool] | None:
    """(why the file is taken for a mask, whether its name says so), or None for an image."""
    a = scan.array
    if a.size == 0:
        return None
    sample = a.reshape(-1)[:: max(1, a.size // 200_000)]
    if sample.min() < 0 or not np.array_equal(sample, np.round(sample)):
        return None
    if np.unique(sample).size > MAX_MASK_CLASSES:
        return None
    if a.min() < 0 or float(a.max()) > 65535 or not np.array_equal(a, np.round(a)):
        return None
    values = np.unique(a)
    word = next((w for w in MASK_WORDS if w in (scan.name or "").lower()), None)
    if word is not None:
        if values.size > MAX_MASK_CLASSES:
            return None
        why = f"its name contains '{word}' and it holds {values.size} whole values"
        return f"{why} ({_values_text(values)})", True
    if values.size <= 16 and values[0] == 0 and values[-1] <= 255:
        why = (
            f"it holds only {values.size} whole values ({_values_text(values)}) with 0 as "
            "background, as a mask does (an image has hundreds of grey levels)"
        )
        return why, False
    return None


def mask_reason(scan: Scan) -> str | None:
    """Why an opened file is taken for a label mask rather than an image, or None if it is not.

    A mask has whole non-negative values and either a name that says so (``*_label*``,
    ``*mask*``, ``*seg*``; up to ``MAX_MASK_CLASSES`` distinct values) or a background of 0 with
    at most 16 distinct values up to 255 (an image has hundreds of grey levels)."""
    guess = _mask_guess(scan)
    return None if guess is None else guess[0]


def looks_like_mask(scan: Scan) -> bool:
    """Whether an opened file is a label mask rather than an image (see :func:`mask_reason`).
    Such files open as a napari Labels layer, so they can be painted on and attached to their
    scan."""
    return mask_reason(scan) is not None


def mask_layer(
    scan: Scan, reason: str | None = None, names: dict[int, str] | None = None
) -> LayerDataTuple:
    """A labels layer for a mask file, with its own geometry (it saves back the same way). The
    layer metadata says why the file was taken for a mask (``MASK_GUESS_KEY``); ``names`` (from
    a ``dataset.json`` beside the file) name its classes."""
    top = float(scan.array.max()) if scan.array.size else 0.0
    data = scan.array.astype(np.uint8 if top < 256 else np.uint16)
    kwargs = scan.layer_kwargs()
    why = reason or mask_reason(scan) or "it was read as a mask"
    kwargs["metadata"][MASK_GUESS_KEY] = f"opened as labels because {why}"
    if top < 4096:  # the project's palette; beyond that, napari's own colours
        kwargs["colormap"] = labels_colour_dict(max(256, int(top) + 1))
    _name_classes(kwargs, names or {})
    return (data, kwargs, "labels")


def _is_colour(data: np.ndarray) -> bool:
    """A colour picture (RGB/RGBA whose colour channels differ), not grey stored as RGB."""
    if data.ndim != 3 or data.shape[-1] not in (3, 4):
        return False
    rgb = data[..., :3]
    return not (
        np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
    )


def _first_slice_is_grey(path: Path) -> bool:
    """Whether the first image of a folder of slices is grey (one file read)."""
    if formats.TIFF.owns(path):  # each image library imported only for its own files
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return not ("S" in series.axes and series.shape[series.axes.index("S")] in (3, 4))
    import imageio.v3 as iio  # imported here, when needed: PNG/JPEG/BMP only

    return not _is_colour(np.asarray(iio.imread(path)))


def _folder_is_ours(folder: Path) -> bool:
    """A folder of NIfTI files, of DICOM files (the first ``PROBE_FILES`` files, in name order,
    are looked at), or of grey 2D slices / TIFF stacks. Lists names; opens at most
    ``PROBE_FILES`` DICOM headers and one image."""
    with os.scandir(folder) as it:
        files = [
            Path(e.path)
            for e in it
            if not e.name.startswith(".") and e.is_file(follow_symlinks=True)
        ]
    if any(formats.NIFTI.owns(p) for p in files):
        return True
    if any(is_dicom_file(p) for p in _walk(folder, limit=PROBE_FILES)):
        return True
    images = sorted(
        (p for p in files if formats.TIFF.owns(p) or formats.PICTURE.owns(p)),
        key=lambda p: natural_key(p.name),
    )
    if not images:
        return False
    first = images[0]
    if formats.TIFF.owns(first) and formats.TIFF.is_scan(first):
        return True  # a folder of TIFF stacks
    return len(images) > 1 and _first_slice_is_grey(first)


def _handles(path: Path) -> bool:
    """Cheap check whether ``path`` is ours; may raise (get_reader turns that into None)."""
    if path.is_file():
        fmt = formats.format_of(path)
        return fmt in formats.SCAN_FORMATS and fmt.is_scan(path)
    if not path.is_dir():
        return False
    return is_dataset_folder(path) or _folder_is_ours(path)


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
    dataset would not fit in memory); the Study widget opens the rest. A file taken for a mask
    (:func:`mask_reason`) opens as labels; when only its values say so, a warning (a napari
    notification) tells why.
    """
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
                    name = f"{case.name} labels"
                    layers.append(labels_layer(labels, scan, name, dataset.label_names))
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
            guess = _mask_guess(scan)
            if guess is None:
                layers.append(image_layer(scan))
                continue
            why, by_name = guess
            layers.append(mask_layer(scan, why, label_names_near(p)))
            if not by_name:  # nothing in the file name says so: tell the person why
                warnings.warn(
                    f"{p}: opened as a Labels layer because {why}; to see it as an image, "
                    "open it with napari's own reader",
                    UserWarning,
                    stacklevel=2,
                )
    return layers


# -- writers -----------------------------------------------------------------------------------


class SaveRefusedError(RuntimeError):
    """Labels a writer will not save; the message names the layer (or file) and why.

    Not a ValueError on purpose: napari's writer lookup takes a ValueError from a writer for
    "this writer does not apply" and drops its message, so the person would not learn why.
    """


def _current_viewer() -> Any:
    """The napari viewer in front, or None outside napari (napari is never imported here)."""
    if "napari" not in sys.modules:
        return None
    try:
        import napari  # already loaded (checked above): this only names it

        return napari.current_viewer()
    except Exception:  # noqa: BLE001 - no Qt, no window: as outside napari
        return None


def _same_grid(labels_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> bool:
    if labels_shape == image_shape:
        return True
    return len(labels_shape) == 2 and image_shape == (1, *labels_shape)


def _set(values: Any, default: float) -> np.ndarray | None:
    """A layer's scale or translate when it was set (differs from napari's default), else None."""
    if values is None:
        return None
    arr = np.asarray(values, dtype=float).reshape(-1)
    return None if np.allclose(arr, default) else arr


def _agrees(mine: np.ndarray | None, theirs: Any) -> bool:
    if mine is None:
        return True
    other = np.asarray(theirs, dtype=float).reshape(-1)
    n = min(mine.size, other.size)
    return np.allclose(mine[-n:], other[-n:], rtol=1e-5, atol=1e-6)


def _geometry_key(geometry: dict[str, Any], dicom: bool) -> Any:
    """What makes two scans' geometries the same for a writer: where the voxels lie (the
    affine) and, for a DICOM-SEG, which source images it references."""
    affine = tuple(np.round(np.asarray(geometry.get("affine", np.eye(4)), float), 4).ravel())
    if not dicom:
        return affine
    return (affine, repr(geometry.get("frames")))


def _scans_under(viewer: Any, shape: tuple, scale: Any, translate: Any) -> list[tuple[str, dict]]:
    """(name, geometry) of the viewer's image layers opened through the plugin on which a
    labels layer of ``shape``, ``scale`` and ``translate`` (None: not set) lies."""
    found = []
    for layer in viewer.layers:
        geometry = layer.metadata.get(SCAN_KEY) if hasattr(layer, "metadata") else None
        if getattr(layer, "_type_string", "") != "image" or not geometry:
            continue
        if not _same_grid(shape, tuple(np.shape(layer.data))):
            continue
        if _agrees(scale, layer.scale) and _agrees(translate, layer.translate):
            found.append((layer.name, geometry))
    return found


def scan_of_layer(data: Any, attributes: dict[str, Any], *, dicom: bool = False) -> dict | None:
    """The scan geometry (``SCAN_KEY`` metadata) a labels layer is saved in.

    A layer of the plugin carries it. A labels layer made in napari (New labels layer, a file
    opened by another reader) does not: it gets the geometry of the scan it lies on, the image
    layer of the viewer in front that was opened through the plugin and has its shape (and its
    scale and translate, when set); several such layers may match if they share one geometry
    (for a DICOM-SEG, DICOM scans come first and must share their source images too). Raises
    SaveRefusedError, naming the layer, when no scan matches or several that lie differently
    do. Outside napari (no viewer) it returns None: the caller's attributes are all there is.
    """
    own = (attributes.get("metadata") or {}).get(SCAN_KEY)
    if own:
        return dict(own)
    viewer = _current_viewer()
    if viewer is None:
        return None
    shape = tuple(np.shape(data))
    scale = _set(attributes.get("scale"), 1.0)
    translate = _set(attributes.get("translate"), 0.0)
    found = _scans_under(viewer, shape, scale, translate)
    if dicom:
        found = [f for f in found if f[1].get("format") == "dicom"] or found
    name = attributes.get("name") or "the labels layer"
    what = f"shape {shape}"
    if scale is not None:
        what += f" and scale {tuple(float(s) for s in scale)}"
    if not found:
        raise SaveRefusedError(
            f"{name}: this layer carries no scan geometry and no scan opened through the plugin "
            f"has its {what}, so where its voxels lie in the patient is unknown; open its scan "
            "with the plugin first, or save the labels as TIFF (.tif), which needs no geometry"
        )
    if len({_geometry_key(g, dicom) for _, g in found}) > 1:
        names = ", ".join(repr(n) for n, _ in found)
        raise SaveRefusedError(
            f"{name}: this layer carries no scan geometry and several scans opened through the "
            f"plugin have its {what} but lie differently ({names}), so which one it belongs to "
            "is unknown; close the scans it does not belong to and save again"
        )
    return dict(found[0][1])


def _like(data: Any, geometry: dict[str, Any] | None, attributes: dict[str, Any]) -> Scan:
    """A data-less ``Scan`` with the geometry labels are written in: the scan geometry when
    known, else the layer's scale as spacing on a grid without a patient frame."""
    arr = np.asarray(data)
    shape = arr.shape if arr.ndim == 3 else (1, *arr.shape[-2:])
    placeholder = np.broadcast_to(np.float32(0), shape)  # no memory: only the shape is used
    if geometry:
        meta = dict(geometry)
        affine = np.asarray(meta.pop("affine", np.eye(4)), dtype=float)
        spacing = tuple(meta.pop("spacing", (1.0, 1.0, 1.0)))
        source = meta.pop("source", None)
        modality = meta.pop("modality", "unknown")
        return Scan(placeholder, spacing, affine, source=source, modality=modality, meta=meta)
    scale = [float(s) for s in (attributes.get("scale") or [1.0, 1.0, 1.0])][-3:]
    spacing = (1.0, *scale) if len(scale) == 2 else tuple(scale)
    return Scan(placeholder, spacing, grid_affine(spacing))  # type: ignore[arg-type]


def write_labels_nifti(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: labels as NIfTI in the geometry of the scan they were drawn on
    (the layer's own, or the one scan of its shape opened through the plugin; see
    :func:`scan_of_layer`). Refuses, rather than invent an affine, when that scan is unknown."""
    target = path if formats.NIFTI.owns(Path(path)) else f"{path}.nii.gz"
    geometry = scan_of_layer(data, attributes)
    try:
        write_labels(np.asarray(data), target, _like(data, geometry, attributes))
    except LabelError as exc:
        raise SaveRefusedError(str(exc)) from exc
    return [target]


def write_labels_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: labels as an ImageJ TIFF stack with the spacing in mm (that of
    the scan they lie on when it is known, else the layer's scale)."""
    target = path if formats.TIFF.owns(Path(path)) else f"{path}.tif"
    try:
        geometry = scan_of_layer(data, attributes)
    except SaveRefusedError:  # a TIFF holds no patient frame: the layer's own scale will do
        geometry = None
    try:
        write_labels(np.asarray(data), target, _like(data, geometry, attributes))
    except LabelError as exc:
        raise SaveRefusedError(str(exc)) from exc
    return [target]
