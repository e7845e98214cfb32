"""The events a training job reports, as types, with their JSON form.

Jobs yield these types (:data:`Events`), and readers (the docks, the CLI, a script's
``on_event``) read their fields: nobody guesses a key. The JSON form (:func:`wire`, a dict with
``type``) exists only where an event leaves the process: a job's or a unit's queue, Ray's queue,
and each run's ``events.jsonl``; :func:`parse` turns it back into the type. An event of a type
this version does not know parses as :class:`Other`. No torch, no Qt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

__all__ = [
    "describe",
    "progress_parts",
    "Events",
    "wire",
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
    what: str = ""  # what the run trains: an ids.What's value
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


R = TypeVar("R")
#: A job's body: a generator of events whose return value is the job's result.
Events = Generator[Event, None, R]


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


def wire(event: Event | dict[str, Any]) -> dict[str, Any]:
    """The JSON form of an event, for a queue between processes or a log file."""
    return event.to_dict() if isinstance(event, Event) else dict(event)


def _dice(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _start_line(e: Start) -> str:
    d = e.data
    return (
        f"run {e.run} on {e.device}: {len(d.get('train_scans', []))} training scans "
        f"({d.get('labelled_slices', 0)} labelled slices), {len(d.get('val_scans', []))} "
        f"validation scans; models: {', '.join(e.plan)}"
    )


def _halving_line(e: Halving) -> str:
    scores = ", ".join(f"{m} {_dice(v)}" for m, v in e.dice.items())
    went = ", ".join(e.continue_) or "none"
    return f"{e.task} after {e.at_steps} steps: {scores}; goes on: {went}" + (
        f" ({e.reason})" if e.reason else ""
    )


def _plan_line(e: PlanMade) -> str:
    plan = e.plan
    return (
        f"plan: {plan.get('patch')} px patches, width {plan.get('width')}, "
        f"{len(plan.get('models', []))} model(s)"
    )


# One line per kind of event, the same in the CLI's log and the docks' status lines
_LINES: dict[type, Any] = {
    Status: lambda e: e.message,
    Note: lambda e: e.message,
    Start: _start_line,
    PlanMade: _plan_line,
    ModelDone: lambda e: (
        f"{e.model} done: validation Dice {_dice(e.mean_dice)} ({e.steps} steps, {e.seconds:.0f} s)"
    ),
    Halving: _halving_line,
    Selected: lambda e: f"teacher for {e.task}: {e.mode} mode",
    Resumed: lambda e: f"resumed {e.model} at step {e.step}",
    Stopped: lambda e: f"stopped at step {e.step} of {e.unit}; the checkpoint is kept",
    Done: lambda e: f"finished: run {e.run or ''}, round {e.round or ''}",
}


def describe(event: dict[str, Any] | Event) -> str:
    """One line for an event (its progress, for a step), e.g.
    ``stage1 sdm:joint 40/200  loss 0.310``: the one wording the CLI and the docks share."""
    e = parse(event)
    line = _LINES.get(type(e))
    if line is not None:
        return line(e)
    if not isinstance(e, Progress):
        d = event if isinstance(event, dict) else e.to_dict()
        return str(d.get("message") or d.get("type") or "")
    parts = [e.stage or "", e.model, f"{e.step}/{e.total}", *progress_parts(e)]
    return "  ".join(p for p in parts if p)


def progress_parts(e: Progress, eta: bool = True) -> list[str]:
    """A step's figures as words (``loss 0.310``, ``val Dice 0.700``, ``run 1.5 of 10 min``
    or, without a budget, ``ETA 12s``): :func:`describe`'s and the CLI's bar's."""
    parts = []
    if e.loss is not None:
        parts.append(f"loss {e.loss:.3f}")
    if e.val_dice is not None:
        parts.append(f"val Dice {e.val_dice:.3f}")
    if e.run_budget_s:
        parts.append(f"run {(e.run_elapsed_s or 0) / 60:.1f} of {e.run_budget_s / 60:.0f} min")
    elif eta and e.eta_s is not None:
        parts.append(f"ETA {e.eta_s:.0f}s")
    return parts
