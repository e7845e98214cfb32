"""The study on disk: scans, a label store with per-slice status and provenance, runs, rounds.

No torch, no Qt. Every write is atomic (:mod:`napari_mtssl._atomic`), so a killed process leaves
the previous state readable; a lock file keeps two processes from rewriting ``workspace.json`` at
once.
"""

from ._errors import WorkspaceError
from .core import SPLITS, ScanRecord, Workspace, checksum
from .labels import SLICE_STATUSES
from .rounds import Corrections, Round, Scores
from .runs import RUN_STATUSES, Run

__all__ = [
    "RUN_STATUSES",
    "SLICE_STATUSES",
    "SPLITS",
    "Corrections",
    "Round",
    "Run",
    "Scores",
    "ScanRecord",
    "Workspace",
    "WorkspaceError",
    "checksum",
]
