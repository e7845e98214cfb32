"""Reorientation to the project's canonical frame: closest LPS, axes ``(z, y, x)``.

Every reader with a patient frame (NIfTI, DICOM) hands its array and an affine in LPS millimetres
to :func:`to_canonical`; the transform it returns is stored so a writer can put a mask back into
the file's own voxel order with :func:`from_canonical`. Flips and axis swaps only: no resampling,
so a round trip is exact.
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from .scan import grid_affine  # noqa: F401  (re-exported for the readers)

# Output axes (before the final transpose) aligned with +x (L), +y (P), +z (S) of LPS.
_LPS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)

# NIfTI world is RAS; LPS flips the first two world axes. The matrix is its own inverse.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_canonical(data: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Reorient a 3D ``data`` whose affine maps its own index order to LPS mm.

    Returns ``(array_zyx, affine_zyx, transform)``: the array with axes (S, P, L) as
    ``(z, y, x)``, the affine mapping ``(z, y, x, 1)`` to LPS mm, and the nibabel orientation
    transform (a list, JSON-safe) that :func:`from_canonical` undoes.
    """
    if data.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {data.shape}")
    affine_lps = np.asarray(affine_lps, dtype=float)
    start = io_orientation(affine_lps)
    transform = ornt_transform(start, _LPS)
    lps = apply_orientation(data, transform)
    # inv_ornt_aff gives the index map from the reoriented array back to the original indices.
    affine_xyz = affine_lps @ inv_ornt_aff(transform, data.shape)
    array_zyx = np.ascontiguousarray(lps.transpose(2, 1, 0))
    affine_zyx = affine_xyz[:, [2, 1, 0, 3]]
    return array_zyx, affine_zyx, transform.tolist()


def from_canonical(array_zyx: np.ndarray, transform: list) -> np.ndarray:
    """Undo :func:`to_canonical`: a ``(z, y, x)`` array back into the source file's index order."""
    forward = np.asarray(transform, dtype=float)
    lps = np.asarray(array_zyx).transpose(2, 1, 0)
    # The target axes are LPS in order, so the forward transform *is* the source orientation.
    back = ornt_transform(_LPS, forward)
    return np.ascontiguousarray(apply_orientation(lps, back))


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size ``(z, y, x)`` mm: the norms of the affine's first three columns."""
    norms = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    return tuple(float(n) for n in norms)  # type: ignore[return-value]
