"""Dataset folders in the Medical Segmentation Decathlon / nnU-Net layout.

::

    root/dataset.json     labels, optional splits
    root/imagesTr/<case>.nii.gz        (MSD)   or  <case>_0000.nii.gz (nnU-Net channel 0)
    root/labelsTr/<case>.nii.gz
    root/imagesTs/...                  optional, usually without labels

Label names may be written ``{"0": "background"}`` (MSD) or ``{"background": 0}`` (nnU-Net v2);
both become ``{0: "background"}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import formats
from ._common import is_dataset_folder, natural_key, stem_of, suffix_of
from .files import read_labels, read_scans
from .scan import Scan, ScanReadError

_READABLE = formats.suffixes()  # the files a dataset folder's cases may be
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class DatasetCase:
    name: str
    image: Path
    label: Path | None
    test: bool = False  # from imagesTs/


@dataclass
class Dataset:
    """An opened dataset folder; images are read only by :meth:`load`."""

    root: Path
    label_names: dict[int, str]
    cases: list[DatasetCase]
    splits: dict[str, list[str]] = field(default_factory=dict)
    name: str = ""
    notes: list[str] = field(default_factory=list)

    def case(self, name: str) -> DatasetCase:
        for c in self.cases:
            if c.name == name:
                return c
        raise KeyError(f"{self.root}: no case named {name!r} ({len(self.cases)} cases)")

    def load(self, case_or_name: DatasetCase | str) -> tuple[Scan, np.ndarray | None]:
        """The case's image and (if it has one) its label mask, in the canonical orientation."""
        case = self.case(case_or_name) if isinstance(case_or_name, str) else case_or_name
        scans = read_scans(case.image)
        if len(scans) != 1:
            raise ScanReadError(case.image, f"holds {len(scans)} images; a dataset case needs one")
        scan = scans[0]
        scan.name = case.name
        labels = None if case.label is None else read_labels(case.label, like=scan)
        return scan, labels

    @property
    def labelled(self) -> list[DatasetCase]:
        return [c for c in self.cases if c.label is not None]


def _label_names(raw: Any, root: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    if not isinstance(raw, dict):
        return names
    for key, value in raw.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            names[int(value)] = str(key)  # nnU-Net v2: {"background": 0}
        elif isinstance(key, str) and key.strip().lstrip("-").isdigit():
            names[int(key)] = str(value)  # MSD: {"0": "background"}
        elif isinstance(value, list):
            continue  # nnU-Net region labels ({"tumor": [1, 2]}) name unions of classes
        else:
            raise ScanReadError(
                root / "dataset.json",
                f'label {key!r}: {value!r} is neither {{"<class number>": "<name>"}} '
                '(Decathlon) nor {"<name>": <class number>} (nnU-Net)',
            )
    return dict(sorted(names.items()))


def label_names_near(path: str | Path) -> dict[int, str]:
    """The class names a ``dataset.json`` beside a mask file gives (in its folder, or one up:
    ``labelsTr/case.nii.gz`` of a Decathlon / nnU-Net folder), or ``{}`` when none does.
    A file that cannot be read or understood gives ``{}``: names are a convenience, and the
    mask opens without them."""
    here = Path(path).parent
    for folder in (here, here.parent):
        meta = folder / "dataset.json"
        if not meta.is_file():
            continue
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            return _label_names(info.get("labels"), folder) if isinstance(info, dict) else {}
        except (OSError, ValueError, ScanReadError):
            return {}
    return {}


def _case_files(folder: Path) -> dict[str, Path]:
    """``{case name: image file}``; for nnU-Net channels only channel 0000 is used."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir(), key=lambda q: natural_key(q.name)):
        if p.name.startswith(".") or not p.is_file() or suffix_of(p) not in _READABLE:
            continue
        stem = stem_of(p)
        m = _CHANNEL.match(stem)
        if m:
            if m["channel"] != "0000":
                continue
            stem = m["case"]
        out[stem] = p
    return out


def open_dataset(folder: str | Path) -> Dataset:
    """Open a Decathlon / nnU-Net folder: pair images with labels by case name.

    Raises ScanReadError when ``folder`` has no ``imagesTr/`` or ``dataset.json`` is not JSON.
    """
    root = Path(folder)
    if not root.exists():
        raise ScanReadError(root, "no such folder")
    if not is_dataset_folder(root):
        raise ScanReadError(
            root, "not a dataset folder: expected imagesTr/ (and labelsTr/, dataset.json)"
        )
    info: dict[str, Any] = {}
    notes: list[str] = []
    meta_file = root / "dataset.json"
    if meta_file.is_file():
        try:
            info = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ScanReadError(meta_file, f"not valid JSON ({exc})") from exc
        if not isinstance(info, dict):
            raise ScanReadError(meta_file, "expected a JSON object")
    else:
        notes.append("no dataset.json: label names and splits unknown")
    label_names = _label_names(info.get("labels"), root)
    images = _case_files(root / "imagesTr")
    labels = _case_files(root / "labelsTr")
    if not images:
        raise ScanReadError(root / "imagesTr", "holds no readable images")
    cases = [DatasetCase(name, path, labels.get(name)) for name, path in images.items()]
    orphans = sorted(set(labels) - set(images))
    if orphans:
        notes.append(f"{len(orphans)} label files without an image, e.g. {orphans[0]}")
    test_labels = _case_files(root / "labelsTs")
    cases += [
        DatasetCase(name, path, test_labels.get(name), test=True)
        for name, path in _case_files(root / "imagesTs").items()
    ]
    if len({c.name for c in cases}) != len(cases):
        notes.append("some case names appear in both imagesTr and imagesTs")
    splits = _splits(info.get("splits"), notes)
    known = {c.name for c in cases}
    for split, names in splits.items():
        missing = [n for n in names if n not in known]
        if missing:
            notes.append(f"split {split!r} names {len(missing)} unknown cases, e.g. {missing[0]}")
    return Dataset(
        root=root,
        label_names=label_names,
        cases=cases,
        splits=splits,
        name=str(info.get("name", root.name)),
        notes=notes,
    )


def _splits(raw: Any, notes: list[str]) -> dict[str, list[str]]:
    if isinstance(raw, list) and raw and isinstance(raw[0], dict):  # nnU-Net folds: use fold 0
        notes.append(f"{len(raw)} cross-validation folds in splits; fold 0 used")
        raw = raw[0]
    if not isinstance(raw, dict):
        return {}
    return {str(k): [str(n) for n in v] for k, v in raw.items() if isinstance(v, list)}
