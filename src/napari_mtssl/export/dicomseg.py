"""Label masks as DICOM Segmentation objects (highdicom) that reference their source series.

A mask predicted or painted on a scan read from DICOM goes back as one binary segment per class,
named from the workspace's label names, with the source series' Study / Series / SOP Instance
UIDs and frame of reference, and the algorithm that made it (napari-mtssl, the model, the run and
the round) or, for a mask a person drew, a manual segment. Each segmentation frame references
the source image it lies on: the reader recorded which file (and frame) every plane of the scan
came from (``Scan.meta["frames"]``), so the mask is put back into that order before writing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_mtssl._atomic import atomic_write_with
from napari_mtssl.io._orient import from_canonical

from . import ExportError, require

__all__ = ["write_dicom_seg", "can_write_dicom_seg"]


def can_write_dicom_seg(scan_meta: dict[str, Any]) -> str | None:
    """None if a mask of a scan with this metadata can be a DICOM-SEG, else why not."""
    if scan_meta.get("format") != "dicom":
        return (
            "the scan did not come from DICOM, so there is no series for a DICOM-SEG to "
            "reference; save the mask as NIfTI (.nii.gz) instead"
        )
    if not scan_meta.get("frames") or "dicom_transform" not in scan_meta:
        return "the scan's record of its DICOM source files is missing; open the series again"
    return None


def write_dicom_seg(
    labels: np.ndarray,
    scan_meta: dict[str, Any],
    path: str | Path,
    *,
    label_names: dict[int, str],
    algorithm: dict[str, Any] | None = None,
    series_description: str = "napari-mtssl segmentation",
) -> Path:
    """Write ``labels`` (``(z, y, x)`` in the scan's canonical grid) as a DICOM-SEG at ``path``.

    ``algorithm``: ``{"model": ..., "run": ..., "round": ...}`` for a model's prediction; None
    for a mask drawn by a person (segments marked MANUAL).
    """
    hd = require("highdicom", "Writing DICOM-SEG")
    import pydicom
    from pydicom.sr.codedict import codes

    why = can_write_dicom_seg(scan_meta)
    if why:
        raise ExportError(f"{path}: {why}")
    frames = [(Path(p), f) for p, f in scan_meta["frames"]]
    missing = [str(p) for p, _ in frames if not p.is_file()]
    if missing:
        raise ExportError(f"{missing[0]}: a source file of the series is missing (moved?)")
    stack = from_canonical(np.asarray(labels), scan_meta["dicom_transform"])  # (k, row, col)
    if stack.shape[0] != len(frames):
        raise ExportError(
            f"{path}: the mask has {stack.shape[0]} slices but the series {len(frames)} images"
        )
    files = list(dict.fromkeys(p for p, _ in frames))
    datasets = {p: _with_type2(pydicom.dcmread(p, stop_before_pixels=True)) for p in files}
    if len(files) == 1 and frames[0][1] is not None:  # one multi-frame file
        ds = datasets[files[0]]
        n = int(ds.NumberOfFrames)
        pixel = np.zeros((n, *stack.shape[1:]), np.uint16)
        for k, (_, f) in enumerate(frames):
            pixel[f] = stack[k]
        sources = [ds]
    else:
        sources = [datasets[p] for p, _ in frames]
        pixel = stack
    present = sorted(int(c) for c in np.unique(pixel) if c > 0)
    if not present:
        raise ExportError(f"{path}: the mask is empty; there is no segment to write")
    unknown = [c for c in present if c not in label_names]
    if unknown:
        raise ExportError(f"{path}: the mask holds class(es) {unknown} that have no name")
    algo_id = None
    if algorithm is not None:
        from napari_mtssl import __version__

        params = {k: str(v) for k, v in algorithm.items() if v is not None}
        algo_id = hd.AlgorithmIdentificationSequence(
            name="napari-mtssl",
            version=__version__,
            family=codes.cid7162.ArtificialIntelligence,
            parameters=params or None,
        )
    descriptions = []
    remap = np.zeros(int(pixel.max()) + 1, np.uint16)
    for number, c in enumerate(present, start=1):
        remap[c] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(label_names[c])[:64],
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=(
                    hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
                    if algo_id is not None
                    else hd.seg.SegmentAlgorithmTypeValues.MANUAL
                ),
                algorithm_identification=algo_id,
            )
        )
    ref = sources[0]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=remap[pixel.astype(np.int64)],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(ref, "SeriesNumber", 0) or 0) + 900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-mtssl",
        manufacturer_model_name="napari-mtssl",
        software_versions=_version(),
        device_serial_number="0",
        series_description=series_description,
        content_description=(
            f"{algorithm.get('model')} of run {algorithm.get('run')}"
            if algorithm
            else "drawn in napari"
        )[:64],
        content_label="MTSSL",
    )
    out = Path(path)
    atomic_write_with(out, lambda tmp: seg.save_as(tmp, enforce_file_format=True))
    return out


# Patient and study attributes a DICOM-SEG copies from its source; DICOM requires them to be
# present (possibly empty). Exports from research tools sometimes drop them: the copies read
# here (never the user's files) get them empty.
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "ReferringPhysicianName",
    "AccessionNumber",
)


def _with_type2(ds: Any) -> Any:
    for key in _TYPE2:
        if key not in ds:
            setattr(ds, key, "")
    return ds


def _version() -> str:
    from napari_mtssl import __version__

    return str(__version__)
