"""What each auxiliary task needs of the data, answered without importing torch.

The training dock asks this every time a task is ticked, in the viewer's process: importing the
task classes (torch, the networks) there froze the viewer for seconds. The task classes
(:mod:`napari_mtssl.tasks`) take their ``check_data`` and ``min_batch`` from here, so the two
never disagree; a test holds the names of both registries equal.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DataSummary",
    "MIN_SLICES",
    "NAMES",
    "check",
    "check_names",
    "min_batch",
    "unknown_task",
    "workspace_summary",
]

MIN_SLICES = 3  # the tasks that pair slices of one scan


@dataclass(frozen=True)
class DataSummary:
    """What the tasks need to know about a study to say whether they can run on it."""

    n_scans: int
    n_labelled_slices: int
    n_unlabelled_slices: int
    min_slices: int
    max_slices: int
    num_classes: int
    slice_spacing: float  # median z spacing, mm

    @property
    def n_slices(self) -> int:
        return self.n_labelled_slices + self.n_unlabelled_slices


def _any_slice(name: str, s: DataSummary) -> str | None:
    if s.n_slices < 1:
        return f"{name} needs at least one image slice; the data holds none"
    return None


def _labelled(name: str, s: DataSummary) -> str | None:
    if s.n_labelled_slices == 0:
        return f"{name} learns from the labels and needs labelled slices; the data has none"
    return None


def _two_slices(why: str) -> Callable[[str, DataSummary], str | None]:
    def check_two(name: str, s: DataSummary) -> str | None:
        if s.n_slices < 2:
            return f"{name} {why} and needs at least 2 image slices"
        return None

    return check_two


def _three_d(name: str, s: DataSummary) -> str | None:
    if s.max_slices < MIN_SLICES:
        held = (
            "single 2D images" if s.max_slices <= 1 else f"scans of at most {s.max_slices} slices"
        )
        return f"{name} needs 3D scans with at least {MIN_SLICES} slices; the data holds {held}"
    return None


# name -> (what the data must hold, the smallest task batch it trains on)
_NEEDS: dict[str, tuple[Callable[[str, DataSummary], str | None], int]] = {
    "sdm": (_labelled, 1),
    "rubik": (_any_slice, 1),
    "moco": (_two_slices("contrasts slices with each other"), 2),
    "vicreg": (_two_slices("uses batch statistics"), 2),  # variance and covariance
    "slices": (_three_d, 1),
    "simsiam": (_three_d, 2),  # BatchNorm in the projector
    "inpaint": (_any_slice, 1),
}
NAMES: tuple[str, ...] = tuple(_NEEDS)


def unknown_task(name: object) -> ValueError:
    """The error for a task name nobody registered, with the closest valid name."""
    close = difflib.get_close_matches(str(name), list(NAMES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown auxiliary task {name!r}.{hint} Valid tasks: {', '.join(NAMES)}")


def check(name: str, summary: DataSummary) -> str | None:
    """None if task ``name`` can train on data like ``summary``, else the reason it cannot."""
    if name not in _NEEDS:
        raise unknown_task(name)
    return _NEEDS[name][0](name, summary)


def min_batch(name: str) -> int:
    """The smallest batch task ``name`` trains on (batch statistics need two samples)."""
    if name not in _NEEDS:
        raise unknown_task(name)
    return _NEEDS[name][1]


def check_names(
    summary: DataSummary, names: Sequence[str], task_batch: int = 0
) -> dict[str, str | None]:
    """Per task name: why it cannot run on data like ``summary`` (None: it can). ``task_batch``:
    the configured task batch (0: the planner chooses it, at least every task's minimum)."""
    out: dict[str, str | None] = {}
    for name in names:
        if name not in _NEEDS:
            out[name] = str(unknown_task(name))
            continue
        reason = check(name, summary)
        if reason is None and task_batch and task_batch < min_batch(name):
            reason = f"{name} needs task batches of at least {min_batch(name)}; got {task_batch}"
        out[name] = reason
    return out


def workspace_summary(ws: Any) -> DataSummary:
    """The task-check summary of a workspace's training split, from its records alone.

    No scan is read: the dock calls this each time a task is ticked, and a study of hundreds of
    scans must answer at once. The training run checks again on the loaded data.
    """
    sids = ws.scan_ids("train")
    n = [int(ws.record(s).shape[0]) for s in sids] or [0]
    nl = sum(len(ws.labelled_slices(s)) for s in sids)
    spacing = [float(ws.record(s).spacing[0]) for s in sids]
    return DataSummary(
        n_scans=len(sids),
        n_labelled_slices=nl,
        n_unlabelled_slices=sum(n) - nl,
        min_slices=min(n),
        max_slices=max(n),
        num_classes=int(ws.num_classes),
        slice_spacing=float(np.median(spacing)) if spacing else 1.0,
    )
