"""Label masks as DICOM Segmentation objects (highdicom) that reference their source series.

A mask predicted or painted on a scan read from DICOM goes back as one binary segment per class,
named from the workspace's label names, with the source series' Study / Series / SOP Instance
UIDs and frame of reference, and the algorithm that made it (napari-mtssl, the model, the run and
the round) or, for a mask a person drew, a manual segment. Each segmentation frame references
the source image it lies on: the reader recorded which file (and frame) every plane of the scan
came from (``Scan.meta["frames"]``), so the mask is put back into that order before writing.

Each segment carries what a viewer needs to show and file it without asking: its class name as
SegmentLabel, the class's colour from ``napari_mtssl.colours`` (the napari layers' colour) as
RecommendedDisplayCIELabValue, and SNOMED CT codes for what it is: the codes a caller gives per
class, else ``DEFAULT_CODES`` for common anatomy by name, else the generic "Tissue".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_mtssl import __version__
from napari_mtssl._atomic import atomic_write_with
from napari_mtssl.colours import class_dicom_cielab
from napari_mtssl.io._orient import from_canonical

from . import ExportError, require

__all__ = ["DEFAULT_CODES", "segment_codes", "write_dicom_seg", "can_write_dicom_seg"]

# A coded concept as DICOM writes it: (code value, coding scheme designator, code meaning).
Concept = tuple[str, str, str]

# Segmented property categories (DICOM CID 7150).
ANATOMICAL_STRUCTURE: Concept = ("91723000", "SCT", "Anatomical Structure")
ABNORMAL_STRUCTURE: Concept = ("49755003", "SCT", "Morphologically Abnormal Structure")
TISSUE: Concept = ("85756007", "SCT", "Tissue")
GENERIC: tuple[Concept, Concept] = (TISSUE, TISSUE)  # a class nobody coded: (category, type)


def _anatomy(value: str, meaning: str, *names: str) -> dict[str, tuple[Concept, Concept]]:
    return {n: (ANATOMICAL_STRUCTURE, (value, "SCT", meaning)) for n in names}


def _abnormal(value: str, meaning: str, *names: str) -> dict[str, tuple[Concept, Concept]]:
    return {n: (ABNORMAL_STRUCTURE, (value, "SCT", meaning)) for n in names}


# Class name (lower case, "_" and "-" read as spaces) -> (category, type). SNOMED CT codes as the
# DICOM standard's segmentation contexts (CID 7150 / 7151 / 7159) list them; "Myocardium" is
# the SNOMED CT concept "Myocardium structure". Only names whose meaning is unambiguous: an
# "LV" is the left ventricle (cavity) of a cardiac study, as the common challenge data name it.
DEFAULT_CODES: dict[str, tuple[Concept, Concept]] = {
    **_anatomy(
        "87878005",
        "Left ventricle",
        "left ventricle",
        "left ventricular cavity",
        "left ventricle cavity",
        "lv",
        "lv cavity",
        "lvc",
        "lv blood pool",
    ),
    **_anatomy(
        "53085002",
        "Right ventricle",
        "right ventricle",
        "right ventricular cavity",
        "right ventricle cavity",
        "rv",
        "rv cavity",
        "rvc",
        "rv blood pool",
    ),
    **_anatomy("74281007", "Myocardium", "myocardium", "myo"),
    **_anatomy(
        "49848007",
        "Left ventricle myocardium",
        "left ventricle myocardium",
        "left ventricular myocardium",
        "lv myocardium",
        "myocardium of left ventricle",
        "mlv",
    ),
    **_anatomy("82471001", "Left atrium", "left atrium"),
    **_anatomy("73829009", "Right atrium", "right atrium"),
    **_anatomy("80891009", "Heart", "heart"),
    **_anatomy("15825003", "Aorta", "aorta"),
    **_anatomy("10200004", "Liver", "liver"),
    **_anatomy("78961009", "Spleen", "spleen"),
    **_anatomy("64033007", "Kidney", "kidney", "kidneys"),
    **_anatomy("39607008", "Lung", "lung", "lungs"),
    **_anatomy("15776009", "Pancreas", "pancreas"),
    **_abnormal("108369006", "Neoplasm", "tumor", "tumour", "tumors", "tumours", "neoplasm"),
    **_abnormal("52988006", "Lesion", "lesion", "lesions"),
    **_abnormal("4147007", "Mass", "mass"),
}


def _key(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", str(name))).strip().lower()


def _concept(given: Any, what: str) -> Concept:
    try:
        value, scheme, meaning = (str(v).strip() for v in given)
    except (TypeError, ValueError):
        raise ExportError(
            f"{what}: a code is (code value, coding scheme, meaning), e.g. "
            f"('10200004', 'SCT', 'Liver'); got {given!r}"
        ) from None
    if not (value and scheme and meaning):
        raise ExportError(f"{what}: code value, coding scheme and meaning must all be given")
    return value, scheme, meaning[:64]


def segment_codes(
    label_names: Mapping[int, str], codes: Mapping[int | str, Any] | None = None
) -> dict[int, tuple[Concept, Concept]]:
    """(category, type) of every named class but the background.

    ``codes``: ``{class id or name: (value, scheme, meaning)}`` sets a class's property type
    (its category then is "Anatomical Structure"), or ``{...: {"type": (...), "category":
    (...)}}`` both. Then ``DEFAULT_CODES`` by class name, then the generic "Tissue". A key that
    names no class is refused, so a misspelt name does not go unnoticed.
    """
    by_name = {_key(n): int(c) for c, n in label_names.items()}
    given: dict[int, tuple[Concept, Concept]] = {}
    for key, spec in (codes or {}).items():
        if isinstance(key, str) and _key(key) in by_name:
            c = by_name[_key(key)]
        elif isinstance(key, str) and key.strip().isdigit():  # a class id read from JSON
            c = int(key)
        elif not isinstance(key, bool) and isinstance(key, int | np.integer):
            c = int(key)
        else:
            c = -1
        if c not in label_names:
            raise ExportError(
                f"a code is given for {key!r}, which is no class; the classes are "
                f"{dict(label_names)}"
            )
        what = f"the code of class {c} ({label_names[c]})"
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"type", "category"}
            if unknown or "type" not in spec:
                raise ExportError(f"{what}: give {{'type': (...), 'category': (...)}}")
            category = _concept(spec.get("category", ANATOMICAL_STRUCTURE), what)
            given[c] = (category, _concept(spec["type"], what))
        else:
            given[c] = (ANATOMICAL_STRUCTURE, _concept(spec, what))
    return {
        int(c): given.get(int(c)) or DEFAULT_CODES.get(_key(name), GENERIC)
        for c, name in label_names.items()
        if int(c) > 0
    }


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
    codes: Mapping[int | str, Any] | None = None,
) -> Path:
    """Write ``labels`` (``(z, y, x)`` in the scan's canonical grid) as a DICOM-SEG at ``path``.

    ``algorithm``: ``{"model": ..., "run": ..., "round": ...}`` for a model's prediction; None
    for a mask drawn by a person (segments marked MANUAL). ``codes``: SNOMED CT (or other)
    codes per class id or name, as ``segment_codes`` reads them; classes without one get
    ``DEFAULT_CODES`` by name, else the generic "Tissue".
    """
    hd = require("highdicom", "Writing DICOM-SEG")
    why = can_write_dicom_seg(scan_meta)
    if why:
        raise ExportError(f"{path}: {why}")
    sources, pixel = _sources_and_frames(labels, scan_meta, path)
    present = sorted(int(c) for c in np.unique(pixel) if c > 0)
    if not present:
        raise ExportError(f"{path}: the mask is empty; there is no segment to write")
    unknown = [c for c in present if c not in label_names]
    if unknown:
        raise ExportError(f"{path}: the mask holds class(es) {unknown} that have no name")
    try:
        coded = segment_codes(label_names, codes)
    except ExportError as exc:
        raise ExportError(f"{path}: {exc}") from None
    descriptions = _segment_descriptions(hd, present, label_names, coded, algorithm)
    remap = np.zeros(int(pixel.max()) + 1, np.uint16)
    for number, c in enumerate(present, start=1):
        remap[c] = number
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


def _sources_and_frames(
    labels: np.ndarray, scan_meta: dict[str, Any], path: str | Path
) -> tuple[list[Any], np.ndarray]:
    """The source images' headers (read again from the series' files) and the mask as frames
    in their order: one per image, or one per frame of a multi-frame file."""
    import pydicom

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
        pixel = np.zeros((int(ds.NumberOfFrames), *stack.shape[1:]), np.uint16)
        for k, (_, f) in enumerate(frames):
            pixel[f] = stack[k]
        return [ds], pixel
    return [datasets[p] for p, _ in frames], stack


def _segment_descriptions(
    hd: Any,
    present: list[int],
    label_names: dict[int, str],
    coded: dict[int, Any],
    algorithm: dict[str, Any] | None,
) -> list[Any]:
    """One segment per class present (numbered from 1 in class order), with its name, codes,
    the colour the layers show it in, and the algorithm that made it (None: drawn by hand)."""
    from pydicom.sr.codedict import codes as dcm_codes
    from pydicom.sr.coding import Code

    algo_id = None
    if algorithm is not None:
        params = {k: str(v) for k, v in algorithm.items() if v is not None}
        algo_id = hd.AlgorithmIdentificationSequence(
            name="napari-mtssl",
            version=__version__,
            family=dcm_codes.cid7162.ArtificialIntelligence,
            parameters=params or None,
        )
    descriptions = []
    for number, c in enumerate(present, start=1):
        category, kind = coded[c]
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(label_names[c])[:64],
            segmented_property_category=Code(*category),
            segmented_property_type=Code(*kind),
            algorithm_type=(
                hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
                if algo_id is not None
                else hd.seg.SegmentAlgorithmTypeValues.MANUAL
            ),
            algorithm_identification=algo_id,
        )
        # the class's colour on the canvas (set directly: older highdicom has no argument)
        description.RecommendedDisplayCIELabValue = list(class_dicom_cielab(c))
        descriptions.append(description)
    return descriptions


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
    return str(__version__)
