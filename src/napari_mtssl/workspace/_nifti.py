"""Minimal NIfTI save/load of a :class:`Scan` for the workspace's stored copies.

The workspace keeps its own copy of scans that have no file of their own (the synthetic sample,
a scan built in memory). Only this module writes those copies and reads them back, so the round
trip only has to be exact for our own files; foreign NIfTI files are read by
:func:`napari_mtssl.io.read_scans`. :func:`load_scan_nifti` still reorients to LPS so it gives
the right answer for any NIfTI file when the io readers are unavailable.

Geometry: ``Scan.array`` is ``(z, y, x)`` and ``Scan.affine`` maps ``(z, y, x, 1)`` to LPS mm.
NIfTI stores ``(i, j, k) = (x, y, z)`` and its affine maps to RAS mm, hence
``nifti_affine = diag(-1, -1, 1, 1) @ scan.affine @ P`` with ``P`` taking ``(x, y, z, 1)`` to
``(z, y, x, 1)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_mtssl.io.scan import Scan

# LPS <-> RAS flips the first two world axes; its own inverse.
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Swaps the first and third index axes: (x, y, z, 1) <-> (z, y, x, 1); its own inverse.
_SWAP_XZ = np.array(
    [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def scan_to_nifti_affine(scan_affine: np.ndarray) -> np.ndarray:
    """``(z, y, x)``-index to LPS affine -> ``(x, y, z)``-index to RAS affine."""
    return _LPS_RAS @ np.asarray(scan_affine, dtype=float) @ _SWAP_XZ


def nifti_to_scan_affine(nifti_affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`scan_to_nifti_affine`."""
    return _LPS_RAS @ np.asarray(nifti_affine, dtype=float) @ _SWAP_XZ


def save_scan_nifti(scan: Scan, path: str | Path) -> None:
    """Write ``scan`` to ``path`` (``.nii`` or ``.nii.gz``); not atomic by itself.

    Callers wrap this in :func:`napari_mtssl._atomic.atomic_write_with`.
    """
    import nibabel as nib

    data = np.ascontiguousarray(np.asarray(scan.array, dtype=np.float32).transpose(2, 1, 0))
    affine = scan_to_nifti_affine(scan.affine)
    img = nib.Nifti1Image(data, affine)
    # Both codes set, so every reader (ITK, 3D Slicer, nibabel) agrees on the geometry.
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def load_scan_nifti(
    path: str | Path, *, name: str | None = None, modality: str = "unknown"
) -> Scan:
    """Read a NIfTI file into a ``(z, y, x)`` LPS :class:`Scan` (float32).

    The volume is reoriented to the closest LPS orientation first, which is a no-op for files
    written by :func:`save_scan_nifti` from an LPS-aligned scan, so those round-trip exactly.
    """
    import nibabel as nib
    from nibabel import orientations as orn

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 2D or 3D image, got shape {data.shape}")
    affine = img.affine
    current = orn.io_orientation(affine)
    transform = orn.ornt_transform(current, orn.axcodes2ornt(("L", "P", "S")))
    affine = affine @ orn.inv_ornt_aff(transform, data.shape)
    data = orn.apply_orientation(data, transform)
    scan_affine = nifti_to_scan_affine(affine)
    array = np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32)
    spacing = tuple(float(v) for v in np.linalg.norm(scan_affine[:3, :3], axis=0))
    if name is None:
        base = Path(path).name
        name = base[: -len(".nii.gz")] if base.endswith(".nii.gz") else Path(base).stem
    return Scan(
        array=array,
        spacing=spacing,  # type: ignore[arg-type]
        affine=scan_affine,
        name=name,
        source=str(path),
        modality=modality,
    )
