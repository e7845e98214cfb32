"""The events a training job reports, as types, with their JSON form.

Jobs yield these as dicts (``to_dict``): that form crosses the job's process queue and is kept
in each run's ``events.jsonl``. Readers (the docks, the CLI) call :func:`parse` and read fields;
nobody guesses a key. An event of a type this version does not know parses as :class:`Other`.
No torch, no Qt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "Cancelled",
    "Event",
    "Status",
    "Start",
    "PlanMade",
    "Note",
    "Progress",
    "Resumed",
    "ModelDone",
    "Halving",
    "Selected",
    "Stopped",
    "Done",
    "SimulateNote",
    "SimulateRound",
    "Other",
    "parse",
]


@dataclass
class Cancelled(Exception):
    """Raised by a ``progress`` callback to stop long work (ranking slices for correction)
    between two items; the work then ends without a result."""


class Event:
    type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        d = {"type": self.type}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None or f.metadata.get("keep_none"):
                d[f.name] = v
        return d


def _keep() -> Any:
    return field(default=None, metadata={"keep_none": True})


@dataclass
class Status(Event):
    """A transient line while the job prepares (shown, not logged)."""

    type: ClassVar[str] = "status"
    message: str = ""
    done: int | None = None  # how far the preparation is, of ``total`` (None: not counted)
    total: int | None = None


@dataclass
class Start(Event):
    type: ClassVar[str] = "start"
    run: str = ""
    what: str = ""
    device: str = ""
    plan: list[str] = field(default_factory=list)  # model names, in training order
    resumed: bool = False
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class PlanMade(Event):
    type: ClassVar[str] = "plan"
    plan: dict[str, Any] = field(default_factory=dict)  # Plan.to_dict()
    describe: list[str] = field(default_factory=list)


@dataclass
class Note(Event):
    type: ClassVar[str] = "note"
    message: str = ""


@dataclass
class Progress(Event):
    """A training step of one model (``model``), with its running losses."""

    type: ClassVar[str] = "progress"
    model: str = ""
    step: int = 0
    total: int = 0
    stage: str | None = None
    task: str | None = None
    mode: str | None = None  # joint | pretrain (its pre-training) | finetune | None
    losses: dict[str, float] = field(default_factory=dict)
    lr: float | None = None
    val_dice: float | None = _keep()
    eta_s: float | None = None
    elapsed_s: float | None = None
    data_wait_s: float | None = None
    run_elapsed_s: float | None = None
    run_budget_s: float | None = None

    @property
    def loss(self) -> float | None:
        """The step's total loss (running average)."""
        v = self.losses.get("total")
        return None if v is None else float(v)


@dataclass
class Resumed(Event):
    type: ClassVar[str] = "resumed"
    model: str = ""
    step: int = 0


@dataclass
class ModelDone(Event):
    """A model finished, with its validation scores (the run's ``metrics.json`` entry)."""

    type: ClassVar[str] = "model_done"
    model: str = ""
    dice: dict[str, float | None] = field(default_factory=dict)
    mean_dice: float | None = _keep()
    hd95: dict[str, float | None] | float | None = _keep()
    steps: int = 0
    seconds: float = 0.0
    mode: str | None = _keep()
    task: str | None = _keep()
    postprocess: str = "none"
    raw_mean_dice: float | None = None
    pretext_steps: int | None = None
    pretext_cached: bool | None = None
    halted_by: str | None = None
    ended_early: str | None = None
    kept_start: dict[str, Any] | None = None  # a student kept as the model it started from


@dataclass
class Halving(Event):
    """Successive halving: a task's two modes at the halving point, and which goes on."""

    type: ClassVar[str] = "halving"
    task: str = ""
    at_steps: int = 0
    dice: dict[str, float] = field(default_factory=dict)
    continue_: list[str] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["continue"] = d.pop("continue_")
        return d


@dataclass
class Selected(Event):
    """The mode kept for a task's teacher, with both modes' validation Dice."""

    type: ClassVar[str] = "selected"
    task: str = ""
    mode: str = ""
    joint: float | None = _keep()
    pretrain: float | None = _keep()
    steps: dict[str, int] = field(default_factory=dict)
    halving: dict[str, Any] | None = None


@dataclass
class Stopped(Event):
    type: ClassVar[str] = "stopped"
    run: str = ""
    unit: str | None = _keep()
    step: int | None = _keep()


@dataclass
class Done(Event):
    type: ClassVar[str] = "done"
    run: str | None = None
    round: int | None = None
    out: str | None = None  # a simulation's output folder


@dataclass
class SimulateNote(Event):
    """A line from the simulated annotator (``simulate``: the strategy it concerns)."""

    type: ClassVar[str] = "simulate_note"
    message: str = ""
    simulate: str | None = None


@dataclass
class SimulateRound(Event):
    """A simulated correction round finished: the student's validation Dice after it."""

    type: ClassVar[str] = "simulate_round"
    strategy: str = ""
    round: int = 0
    corrected: int = 0
    mean_dice: float | None = _keep()
    stage2_dice: float | None = _keep()


@dataclass
class Other(Event):
    """An event of a type this version does not know (its dict, as it came)."""

    kind: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


EVENTS: dict[str, type[Event]] = {
    c.type: c
    for c in (Status, Start, PlanMade, Note, Progress, Resumed, ModelDone, Halving, Selected)
    + (Stopped, Done, SimulateNote, SimulateRound)
}


def parse(d: dict[str, Any] | Event) -> Event:
    """The event a dict describes; keys the type does not have are ignored."""
    if isinstance(d, Event):
        return d
    cls = EVENTS.get(str(d.get("type")))
    if cls is None:
        return Other(str(d.get("type")), dict(d))
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    if cls is Halving and "continue" in d:
        kw["continue_"] = d["continue"]
    return cls(**kw)
