"""Model ids: which model of a run a name means, as a type instead of strings built and parsed
all over the code.

A run's models are ``baseline``, one model per auxiliary task and mode (``sdm:joint``,
``sdm:pretrain``), the selected teacher of each task (``teacher:sdm``), ``all_joint`` and the
``student``. The string form is what the workspace stores (model files, metrics, history) and
what users type (``--model teacher:sdm``); :meth:`ModelId.parse` is the one place that reads it.
No torch, no Qt: the widgets use it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "ModelId",
    "What",
    "Stage",
    "BASELINE",
    "STUDENT",
    "ALL_JOINT",
    "MODES",
    "teacher",
    "teachers",
    "model_key",
    "in_order",
    "trained",
]


class What(str, Enum):
    """What a run trains (``napari-mtssl train --what``). A string too, so the value a user
    typed, stored in a run's record or sent between processes compares equal to it."""

    BASELINE = "baseline"
    STAGE1 = "stage1"
    STAGE2 = "stage2"
    ALL = "all"
    RETRAIN_QUICK = "retrain-quick"
    RETRAIN_STAGE2 = "retrain-stage2"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, what: str | What) -> What:
        """``what`` as a What, or ValueError naming the choices."""
        try:
            return cls(what)
        except ValueError:
            choices = ", ".join(w.value for w in cls)
            raise ValueError(f"what must be one of {choices}; got {what!r}") from None

    @property
    def trains_baseline(self) -> bool:
        return self in (What.BASELINE, What.ALL)

    @property
    def trains_teachers(self) -> bool:
        """Stage 1: the auxiliary tasks' models and the teachers selected from them."""
        return self in (What.STAGE1, What.ALL)

    @property
    def trains_student(self) -> bool:
        """A student learning from an ensemble (a quick retrain fine-tunes one instead)."""
        return self in (What.STAGE2, What.ALL, What.RETRAIN_STAGE2)

    @property
    def keeps_shape(self) -> bool:
        """Runs on trained models, which keep their data shape (spacing, patch, network)."""
        return self in (What.STAGE2, What.RETRAIN_QUICK, What.RETRAIN_STAGE2)

    @property
    def is_retrain(self) -> bool:
        """A retraining round after corrections: its student trains as :attr:`Stage.RETRAIN`."""
        return self in (What.RETRAIN_QUICK, What.RETRAIN_STAGE2)


class Stage(str, Enum):
    """The stage a training unit belongs to: what its steps report (``Progress.stage``), and
    for a student how it trains (a retrain keeps no moving average of its weights and is not
    compared with its ensemble or its start). A string too, so the events and the units sent
    between processes keep the same values."""

    BASELINE = "baseline"
    STAGE1 = "stage1"  # a task's model in one mode, its pre-training and fine-tuning included
    ALL_JOINT = "all_joint"
    STAGE2 = "stage2"  # a new student
    RETRAIN = "retrain"  # a student retrained after corrections

    def __str__(self) -> str:
        return self.value


MODES = ("joint", "pretrain")
_PLAIN = ("baseline", "student", "all_joint")


@dataclass(frozen=True)
class ModelId:
    """``kind``: ``baseline`` | ``student`` | ``all_joint`` | ``teacher`` (a task's selected
    model) | ``task`` (a task trained in one ``mode``: ``joint`` or ``pretrain``)."""

    kind: str
    task: str | None = None
    mode: str | None = None

    def __post_init__(self) -> None:
        ok = (
            (self.kind in _PLAIN and self.task is None and self.mode is None)
            or (self.kind == "teacher" and bool(self.task) and self.mode is None)
            or (self.kind == "task" and bool(self.task) and self.mode in MODES)
        )
        if not ok or (self.task and ":" in self.task):
            raise ValueError(
                f"not a model id: kind={self.kind!r} task={self.task!r} mode={self.mode!r}"
            )

    @classmethod
    def parse(cls, name: str | ModelId) -> ModelId:
        """``"teacher:sdm"`` -> teacher of sdm, ``"sdm:joint"`` -> sdm in joint mode, ...;
        ValueError saying what names exist otherwise."""
        if isinstance(name, ModelId):
            return name
        text = str(name).strip()
        if text in _PLAIN:
            return cls(text)
        head, sep, tail = text.partition(":")
        if sep and head and tail and ":" not in tail:
            if head == "teacher":
                return cls("teacher", tail)
            if tail in MODES:
                return cls("task", head, tail)
        raise ValueError(
            f"{name!r} is not a model name; models are baseline, student, all_joint, "
            "teacher:<task> and <task>:joint or <task>:pretrain"
        )

    @classmethod
    def is_valid(cls, name: str) -> bool:
        try:
            cls.parse(name)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        if self.kind == "teacher":
            return f"teacher:{self.task}"
        if self.kind == "task":
            return f"{self.task}:{self.mode}"
        return self.kind

    @property
    def is_teacher(self) -> bool:
        return self.kind == "teacher"

    def other_mode(self) -> ModelId:
        """The same task in the other mode (only for ``kind == "task"``)."""
        if self.kind != "task":
            raise ValueError(f"{self} has no mode")
        return trained(self.task, "pretrain" if self.mode == "joint" else "joint")


BASELINE = ModelId("baseline")
STUDENT = ModelId("student")
ALL_JOINT = ModelId("all_joint")


def teacher(task: str) -> ModelId:
    """The selected teacher of ``task``."""
    return ModelId("teacher", task)


def trained(task: str, mode: str) -> ModelId:
    """``task`` trained in ``mode`` (joint, or pre-train then fine-tune)."""
    return ModelId("task", task, mode)


def teachers(names) -> list[str]:
    """The teachers among model names, in their order."""
    return [n for n in names if ModelId.is_valid(n) and ModelId.parse(n).is_teacher]


FIRST = tuple(str(m) for m in (STUDENT, BASELINE, ALL_JOINT))  # first in every list


def model_key(name: str) -> tuple:
    """The one order of models (reports, the CLI, the docks): the student, the baseline, all
    tasks jointly, the teachers, then the rest (stage-1 candidates), each group by name."""
    if name in FIRST:
        return (FIRST.index(name), name)
    if ModelId.is_valid(name) and ModelId.parse(name).is_teacher:
        return (len(FIRST), name)
    return (len(FIRST) + 1, name)


def in_order(names) -> list[str]:
    """``names`` in :func:`model_key`'s order."""
    return sorted(names, key=model_key)
