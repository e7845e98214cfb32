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

Users give codes in a JSON file (``read_codes_file``): a workspace's own ``segment_codes.json``
(``CODES_FILE``), read wherever a DICOM-SEG of that workspace is written, and one given for a
single call (``predict --codes FILE``), whose entries win class by class (``codes_for``)::

    {"liver": {"value": "10200004", "scheme": "SCT", "meaning": "Liver"},
     "2": {"type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"},
           "category": {"value": "49755003", "scheme": "SCT",
                        "meaning": "Morphologically Abnormal Structure"}}}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code

from napari_mtssl import __version__
from napari_mtssl._atomic import atomic_write_with
from napari_mtssl.colours import class_dicom_cielab
from napari_mtssl.io._orient import from_canonical

from . import ExportError, require

__all__ = [
    "CODES_FILE",
    "DEFAULT_CODES",
    "codes_for",
    "describe_codes",
    "read_codes_file",
    "segment_codes",
    "workspace_codes",
    "write_dicom_seg",
    "can_write_dicom_seg",
]

CODES_FILE = "segment_codes.json"  # a workspace's codes per class, written by its user

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


_CONCEPT_KEYS = {"value", "scheme", "meaning"}


def _concept(given: Any, what: str) -> Concept:
    """A code as ``(value, scheme, meaning)`` or ``{"value", "scheme", "meaning"}``."""
    if isinstance(given, Mapping):
        if set(given) != _CONCEPT_KEYS:
            raise ExportError(
                f'{what}: a code is {{"value": ..., "scheme": ..., "meaning": ...}}, e.g. '
                f'{{"value": "10200004", "scheme": "SCT", "meaning": "Liver"}}; got {dict(given)!r}'
            )
        given = (given["value"], given["scheme"], given["meaning"])
    try:
        if isinstance(given, str | bytes) or any(
            isinstance(v, bool) or not isinstance(v, str | int) for v in given
        ):
            raise TypeError
        value, scheme, meaning = (str(v).strip() for v in given)
    except (TypeError, ValueError):
        raise ExportError(
            f"{what}: a code is (code value, coding scheme, meaning), e.g. "
            f"('10200004', 'SCT', 'Liver'); got {given!r}"
        ) from None
    if not (value and scheme and meaning):
        raise ExportError(f"{what}: code value, coding scheme and meaning must all be given")
    return value, scheme, meaning[:64]


def _given_codes(
    label_names: Mapping[int, str], codes: Mapping[Any, Any] | None
) -> dict[int, tuple[Concept, Concept]]:
    """``codes`` (see :func:`segment_codes`) checked and by class id: ``{id: (category, type)}``."""
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
        if isinstance(spec, Mapping) and not set(spec) & _CONCEPT_KEYS:
            unknown = set(spec) - {"type", "category"}
            if unknown or "type" not in spec:
                raise ExportError(
                    f"{what}: give a code, or {{'type': (code), 'category': (code)}}; "
                    f"got {dict(spec)!r}"
                )
            category = _concept(spec.get("category", ANATOMICAL_STRUCTURE), what)
            given[c] = (category, _concept(spec["type"], what))
        else:
            given[c] = (ANATOMICAL_STRUCTURE, _concept(spec, what))
    return given


def segment_codes(
    label_names: Mapping[int, str], codes: Mapping[int | str, Any] | None = None
) -> dict[int, tuple[Concept, Concept]]:
    """(category, type) of every named class but the background.

    ``codes``: ``{class id or name: code}`` sets a class's property type (its category then is
    "Anatomical Structure"), or ``{...: {"type": code, "category": code}}`` both; a code is
    ``(value, scheme, meaning)`` or ``{"value": ..., "scheme": ..., "meaning": ...}``. Then
    ``DEFAULT_CODES`` by class name, then the generic "Tissue". A key that names no class is
    refused, so a misspelt name does not go unnoticed.
    """
    given = _given_codes(label_names, codes)
    return {
        int(c): given.get(int(c)) or DEFAULT_CODES.get(_key(name), GENERIC)
        for c, name in label_names.items()
        if int(c) > 0
    }


_EXAMPLE = '{"liver": {"value": "10200004", "scheme": "SCT", "meaning": "Liver"}}'


def read_codes_file(
    path: str | Path, label_names: Mapping[int, str]
) -> dict[int, dict[str, Concept]]:
    """The codes of a JSON file, checked against the classes ``label_names``, as
    ``write_dicom_seg``'s ``codes`` takes them: ``{class id: {"category": ..., "type": ...}}``.

    The file maps a class number or name to a code (``{"value", "scheme", "meaning"}`` or
    ``[value, scheme, meaning]``), or to ``{"type": code, "category": code}``. Anything else
    is an :class:`ExportError` of one line that names the file and the entry.
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(f"{path}: no such codes file") from None
    except IsADirectoryError:
        raise ExportError(f"{path}: is a folder; give the JSON file of the codes") from None
    except UnicodeDecodeError:
        raise ExportError(f"{path}: not a text file; the codes are JSON, e.g. {_EXAMPLE}") from None
    except OSError as exc:
        raise ExportError(f"{path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(
            f"{path}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise ExportError(
            f"{path}: the codes are a JSON object of class number or name to code, e.g. {_EXAMPLE}"
        )
    try:
        given = _given_codes(label_names, data)
    except ExportError as exc:
        raise ExportError(f"{path}: {exc}") from None
    return {c: {"category": cat, "type": kind} for c, (cat, kind) in given.items()}


def workspace_codes(
    root: str | Path, label_names: Mapping[int, str]
) -> dict[int, dict[str, Concept]]:
    """The codes of the workspace in ``root`` (its ``segment_codes.json``); none without one."""
    p = Path(root) / CODES_FILE
    return read_codes_file(p, label_names) if p.exists() else {}


def codes_for(
    label_names: Mapping[int, str],
    *,
    workspace: str | Path | None = None,
    codes_file: str | Path | None = None,
) -> dict[int, dict[str, Concept]]:
    """The codes a DICOM-SEG of ``workspace`` gets: its ``segment_codes.json``, and over it,
    class by class, those of ``codes_file`` (given for one export)."""
    codes = workspace_codes(workspace, label_names) if workspace is not None else {}
    if codes_file is not None:
        codes.update(read_codes_file(codes_file, label_names))
    return codes


def describe_codes(
    label_names: Mapping[int, str], codes: Mapping[Any, Any] | None = None, given: str = "given"
) -> list[str]:
    """One line per class but the background: its codes and where they come from (``given``
    for ``codes``, the default table, or the generic "Tissue")."""
    mine = _given_codes(label_names, codes)
    lines = []
    for c, (category, kind) in segment_codes(label_names, codes).items():
        name = label_names[c]
        if c in mine:
            source = given
        elif _key(name) in DEFAULT_CODES:
            source = "the default table"
        else:
            source = "nobody coded it: generic"
        lines.append(
            f"{c} {name}: {kind[1]} {kind[0]} {kind[2]!r} (category {category[1]} "
            f"{category[0]} {category[2]!r}; {source})"
        )
    return lines


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
    codes per class id or name, as ``segment_codes`` reads them (a workspace's: ``codes_for``);
    classes without one get ``DEFAULT_CODES`` by name, else the generic "Tissue".
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
