"""A round of the workspace's history, as a type: what a run trained, on how many labelled
slices, with which corrections behind it, and each model's scores.

The workspace stores rounds as JSON (``workspace.json``); :meth:`Round.from_dict` is the one
place that reads that form, so the docks and the CLI read fields, never guess keys. Entries
written by older versions, or by hand, read with what they have (missing fields empty).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from napari_mtssl.ids import What

__all__ = ["Corrections", "Round", "Scores"]


def _what(value: Any) -> What | None:
    """What a round's run trained, or None for an entry without one (or with a value no
    version wrote)."""
    try:
        return What(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Scores:
    """A model's validation scores: mean foreground Dice and HD95 (mm)."""

    mean_dice: float | None = None
    hd95: float | None = None

    @classmethod
    def from_dict(cls, d: Any) -> Scores:
        if not isinstance(d, dict):
            return cls(_num(d))
        return cls(_num(d.get("mean_dice")), _num(d.get("hd95")))


@dataclass(frozen=True)
class Corrections:
    """The slices corrected in a round before its run, who corrected them, and the seconds
    people spent on the ones that were timed (from showing a slice to accepting it)."""

    slices: int = 0
    by: dict[str, int] = field(default_factory=dict)
    timed_slices: int = 0
    effort_s: float = 0.0

    @classmethod
    def from_dict(cls, d: Any) -> Corrections:
        if not isinstance(d, dict):
            return cls()
        by = d.get("by") if isinstance(d.get("by"), dict) else {}
        return cls(
            int(d.get("slices") or 0),
            {str(k): int(v) for k, v in by.items()},
            int(d.get("timed_slices") or 0),
            float(d.get("effort_s") or 0.0),
        )


@dataclass(frozen=True)
class Round:
    """One entry of the history (``api.history``), oldest first."""

    round: int
    time: str = ""  # UTC, ISO 8601
    run: str | None = None
    what: What | None = None
    labelled_slices: int | None = None
    corrections: Corrections = field(default_factory=Corrections)
    metrics: dict[str, Scores] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], index: int = 0) -> Round:
        metrics = d.get("metrics") if isinstance(d.get("metrics"), dict) else {}
        labelled = d.get("labelled_slices")
        return cls(
            round=int(d.get("round") or index + 1),
            time=str(d.get("time") or ""),
            run=d.get("run") if isinstance(d.get("run"), str) else None,
            what=_what(d.get("what")),
            labelled_slices=int(labelled) if isinstance(labelled, int) else None,
            corrections=Corrections.from_dict(d.get("corrections")),
            metrics={str(k): Scores.from_dict(v) for k, v in metrics.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "what": None if self.what is None else self.what.value}

    def dice(self, model: str) -> float | None:
        """Mean validation Dice of ``model`` in this round (None: not trained in it)."""
        s = self.metrics.get(model)
        return None if s is None else s.mean_dice
