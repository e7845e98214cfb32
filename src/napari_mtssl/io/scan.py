"""The plain scan type every part of the project exchanges. No torch, no Qt, no napari.

Axis convention (used everywhere in the project):

* ``Scan.array`` is indexed ``(z, y, x)``: slice axis first, then rows, then columns.
  A single 2D image is a ``(1, y, x)`` scan.
* Readers reorient volumes to the closest *LPS* orientation before transposing to ``(z, y, x)``,
  so columns run towards the patient's left, rows towards posterior, slices towards superior
  (the radiological axial view that DICOM viewers show). Data without a patient frame (TIFF,
  PNG) keeps its file order.
* ``Scan.affine`` maps a homogeneous index ``(z, y, x, 1)`` to patient LPS millimetres.
* ``Scan.spacing`` is ``(z, y, x)`` in millimetres: the norms of the affine's first three columns,
  given as the napari layer ``scale``.
* ``Scan.meta`` holds what a writer needs to put labels back into the source file's own geometry
  (for NIfTI: the original header and the reorientation to undo), plus reader details.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def grid_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Affine of a ``(z, y, x)`` grid with no patient frame, placed in the canonical LPS frame.

    z runs to +S, y to +P, x to +L. A diagonal in index order would be wrong: it would send z
    along L.
    """
    sz, sy, sx = (float(s) for s in spacing)
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = sx, sy, sz, 1.0
    return affine


class ScanReadError(ValueError):
    """A file we recognise but cannot read. The message names the file and the problem."""

    def __init__(self, path: object, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # one line: libraries' messages wrap
        super().__init__(f"{self.path}: {self.problem}")


class LabelError(ValueError):
    """A label mask that does not fit its scan or is not a mask. Names the file and the problem."""

    def __init__(self, path: object, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # one line: libraries' messages wrap
        super().__init__(f"{self.path}: {self.problem}")


@dataclass
class Scan:
    """One image volume in ``(z, y, x)`` order with its physical geometry.

    ``array`` is float32 for images (DICOM rescale slope/intercept already applied).
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    affine: np.ndarray | None = None  # None: a grid with no patient frame (see grid_affine)
    name: str = "scan"
    source: str | None = None
    modality: str = "unknown"  # "MR", "CT" or "unknown": picks the intensity normalisation
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim == 2:
            self.array = self.array[None]
        if self.array.ndim != 3:
            raise ValueError(f"{self.name}: a scan is 2D or 3D, got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        if self.affine is None:
            self.affine = grid_affine(self.spacing)
        self.affine = np.asarray(self.affine, dtype=float)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def n_slices(self) -> int:
        return int(self.array.shape[0])

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a napari image layer: name, physical scale, metadata."""
        return {
            "name": self.name,
            "scale": self.spacing,
            "metadata": {"mtssl_scan": self.meta_for_layer()},
        }

    def meta_for_layer(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "spacing": list(self.spacing),
            "affine": self.affine.tolist(),
            "modality": self.modality,
            **self.meta,
        }


def validate_labels(labels: np.ndarray, scan_shape: tuple[int, ...], source: object) -> np.ndarray:
    """Return ``labels`` as a uint8/uint16 integer mask of ``scan_shape`` or raise LabelError.

    Float masks are accepted only when every value is a whole number (0/1 masks saved as float
    are common); anything else would silently change the user's labels.
    """
    arr = np.asarray(labels)
    if arr.ndim == 2 and len(scan_shape) == 3 and scan_shape[0] == 1:
        arr = arr[None]
    if tuple(arr.shape) != tuple(scan_shape):
        raise LabelError(
            source,
            f"label shape {tuple(arr.shape)} does not match the image shape {tuple(scan_shape)}",
        )
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise LabelError(source, "the label mask contains NaN or infinite values")
        if not np.array_equal(arr, np.round(arr)):
            bad = np.unique(arr[arr != np.round(arr)])[:5]
            raise LabelError(
                source,
                "a label mask must hold whole class numbers; found fractional values "
                + ", ".join(f"{v:g}" for v in bad),
            )
    elif arr.dtype.kind not in "iu":
        raise LabelError(source, f"a label mask must be integer, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise LabelError(source, "a label mask cannot hold negative class numbers")
    top = int(arr.max()) if arr.size else 0
    if top > 65535:
        raise LabelError(
            source,
            f"class numbers go up to {top}; a label mask holds at most 65535 classes (is this "
            "an image rather than a mask?)",
        )
    return arr.astype(np.uint8 if top < 256 else np.uint16)
