"""A new workspace filled from a study: a dataset folder (Decathlon layout) or a study held in
memory (the built-in sample), with the labels of the first N training patients kept.

The api's ``create_workspace`` is a thin door onto this module; the Study dock and the CLI
reach it through the api.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_mtssl.io import open_dataset

from ._errors import WorkspaceError
from .core import Workspace, _check_label_names

__all__ = ["import_dataset", "import_study", "patient_of"]

Progress = Callable[[int, int, str], None]


def patient_of(case: str) -> str:
    """Patient of a dataset case: the name before ``_frame`` (ACDC), else the case itself."""
    m = re.match(r"^(.*?)_frame", case)
    return m.group(1) if m else case


def import_dataset(
    folder: str | os.PathLike,
    source: str | os.PathLike,
    labelled: int | None = None,
    progress: Progress | None = None,
) -> Workspace:
    """A new workspace in ``folder`` holding the dataset folder ``source``: its train split
    becomes "train", its val split "val" (without splits every case trains and training holds
    out scans). ``labelled=N`` keeps the labels of the first N training patients and leaves the
    other training scans unlabelled; validation labels are always kept. ``progress(done,
    total, case)`` is called as each case is imported. A workspace this call created is removed
    again when the import fails, so a half-imported one is never mistaken for a whole one."""
    ds = open_dataset(source)
    train, val = _dataset_splits(ds, Path(source))
    keep = _labelled_patients(ds, train, labelled)
    label_names = _dataset_label_names(ds, Path(source))
    existed = Path(folder).exists()
    ws = Workspace.create(folder, label_names=label_names)
    total = len(train) + len(val)
    try:
        done = 0
        for split, cases in (("train", train), ("val", val)):
            for name in cases:
                if progress is not None:
                    progress(done, total, name)
                done += 1
                scan, lab = ds.load(name)
                sid = ws.add_scan(scan, split=split)
                if lab is not None and (split == "val" or patient_of(name) in keep):
                    ws.set_labels(sid, lab, slices=range(lab.shape[0]), status="annotated")
    except BaseException:
        if not existed:
            shutil.rmtree(ws.root, ignore_errors=True)
        raise
    return ws


def import_study(
    folder: str | os.PathLike, study: Any, labelled: int | None = None, n_val: int = 1
) -> Workspace:
    """A new workspace in ``folder`` holding ``study`` (``scans``, ``labels``, ``labelled``
    flags and ``label_names``, as :func:`napari_mtssl.sample.make_sample_study` gives): its last
    ``n_val`` scans for validation, the labels of its first ``labelled`` labelled training
    scans (all of them where None)."""
    ws = Workspace.create(folder, label_names=dict(study.label_names))
    n = len(study.scans)
    kept = 0
    for i, (scan, lab, has) in enumerate(zip(study.scans, study.labels, study.labelled)):
        split = "val" if i >= n - n_val else "train"
        sid = ws.add_scan(scan, split=split)
        keep = split == "val" or (has and (labelled is None or kept < int(labelled)))
        if split == "train" and keep:
            kept += 1
        if keep and lab is not None:
            ws.set_labels(sid, lab, slices=range(lab.shape[0]), status="annotated")
    return ws


def labelled_training_patients(source: str | os.PathLike) -> list[str]:
    """The training patients of a dataset folder that have labels, in its split's order: those
    that ``labelled=N`` chooses the first N of (its validation cases are not among them). Opening
    the folder fails here, naming the file, for a folder that is not a dataset."""
    ds = open_dataset(source)
    train, _ = _dataset_splits(ds, Path(source))
    return _labelled_patients(ds, train, None)


def _labelled_patients(ds: Any, train: Sequence[str], labelled: int | None) -> list[str]:
    """The first ``labelled`` training patients with labels, in the split's order."""
    keep: list[str] = []
    for c in train:
        p = patient_of(c)
        if p not in keep and ds.case(c).label is not None:
            keep.append(p)
    return keep if labelled is None else keep[: int(labelled)]


def _dataset_splits(ds: Any, source: Path) -> tuple[list[str], list[str]]:
    """The dataset's training and validation case names (every case that is not a test case
    trains where ``dataset.json`` names no training split), or ValueError naming the cases a
    split names that the folder lacks."""
    names = {c.name for c in ds.cases if not c.test}
    for split in ("train", "val"):
        missing = [c for c in ds.splits.get(split, []) if c not in names]
        if missing:
            raise ValueError(
                f"{source / 'dataset.json'}: its {split!r} split names "
                f"{len(missing)} case(s) that are not in the dataset folder "
                f"({', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''})"
            )
    train = [c for c in ds.splits.get("train", []) if c in names]
    val = [c for c in ds.splits.get("val", []) if c in names]
    if not train:
        train = [c.name for c in ds.cases if not c.test and c.name not in set(val)]
    return train, val


def _dataset_label_names(ds: Any, source: Path) -> dict[int, str]:
    """The dataset's class names (``dataset.json``; without them, the classes of its first
    label file, "class N"), checked: ValueError naming ``dataset.json`` when they are not
    usable."""
    label_names = dict(ds.label_names)
    if not label_names:  # no dataset.json labels: name the classes of the first label file
        first = next((c for c in ds.cases if c.label is not None), None)
        top = int(ds.load(first)[1].max()) if first is not None else 1
        label_names = {0: "background", **{c: f"class {c}" for c in range(1, max(top, 1) + 1)}}
    try:
        _check_label_names(label_names, source / "dataset.json")
    except WorkspaceError as exc:
        raise ValueError(str(exc)) from None
    return label_names
