"""Errors of a training run that the command line and the docks turn into one line; no torch
here, so that reporting them never imports the engine."""

from __future__ import annotations

import errno
import shutil
from typing import Any


class UnitsFailed(RuntimeError):
    """Units of a run failed; the others ran, their models are kept, resume retrains these."""

    def __init__(self, failed: dict[str, str], root: Any = None):
        self.failed = failed
        self.root = root
        lines = "; ".join(f"{u}: {msg}" for u, msg in failed.items())
        super().__init__(
            f"{len(failed)} unit(s) failed ({lines}); the models that finished are kept, and "
            "resuming the run trains only what is missing"
        )

    @property
    def disk_full(self) -> bool:
        return any(_is_disk_full(m) for m in self.failed.values())

    def one_line(self) -> str:
        """What a user reads: which models, why in one phrase, what was kept, what to do."""
        names = ", ".join(self.failed)
        where = f" {self.root}" if self.root is not None else " WORKSPACE"
        if self.disk_full:
            return (
                f"{disk_full_message(self.root)}: {names} could not be saved; the models that "
                f"finished are kept; free some space, then napari-mtssl resume{where} trains "
                "only what is missing"
            )
        first = next(iter(self.failed.values())).strip().splitlines()
        return (
            f"{len(self.failed)} model(s) failed ({names}: {first[0] if first else 'unknown'}); "
            f"the models that finished are kept; napari-mtssl resume{where} trains only what "
            "is missing"
        )


def _is_disk_full(error: Any) -> bool:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    text = str(error)
    return "[Errno 28]" in text or "No space left on device" in text


def disk_full_message(root: Any) -> str:
    """ "no space left on the disk of <root> (<n> MB free)"."""
    try:
        free = f" ({shutil.disk_usage(root).free / 2**20:.0f} MB free)"
    except (OSError, TypeError):
        free = ""
    return f"no space left on the disk of {root}{free}"
