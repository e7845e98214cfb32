"""The plan of a run: what the data and the machine allow in the user's time budget.

nnU-Net's experiment planning, for 2D slices and a wall-clock budget instead of a GPU's
memory. Three steps, each saved with the run (``plan.json``) and shown before training:

1. **Fingerprint** (:func:`.fingerprint.fingerprint`): in-plane spacings and sizes, slice
   spacing and counts, modalities with the intensity statistics CT normalisation needs, class
   frequencies, labelled and unlabelled slice counts. Read from the workspace records and
   labels; CT scans with labels are read once and their statistics cached.
2. **Shape** (:func:`.shape.shape_plan`): target in-plane spacing (the median), patch size,
   network width and depth, batch size, normalisation per modality, precision and threads
   (:mod:`.machine`). A candidate ladder is priced with the network's FLOPs and the device's
   measured speed (:mod:`.timing`): the planner keeps the finest resolution whose patch covers
   most of a slice and gives every model enough steps, then spends what is left on a wider
   network. Every choice has its reason in ``reasons``.
3. **Budget** (:func:`.planner.allocate`, with :func:`.planner.make_plan` the entry point): a
   few real steps of each kind of model are timed on the device (segmentation, each task, a
   forward pass for distillation and validation), and the budget is shared so that every model
   of the run (baseline, each task in each mode, the student) gets the same number of
   segmentation steps, with successive halving and cached pre-training counted. A budget too
   small for the chosen tasks is refused with what fits.

Any field the user set in the config wins over the plan (``overridden`` lists them).

This module is what a plan is: :class:`Plan` (saved with the run and read back), the models a
run trains (:func:`model_units`) and their step counts without a budget
(:func:`explicit_steps`), the task crops that fit the plan's shape, and the limits and
overheads the budget is shared with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from napari_mtssl.ids import STUDENT, ModelId, What, trained
from napari_mtssl.training.config import ExperimentConfig, format_budget
from napari_mtssl.training.data.preprocess import NormSpec, Preprocessing

__all__ = [
    "Plan",
    "PlanError",
    "explicit_steps",
    "model_units",
    "mode_of",
    "task_shape_overrides",
    "MIN_STEPS",
    "MIN_STEPS_SHORTENED",
    "MIN_RETRAIN_STEPS",
    "JOINT_PAYS_STEPS",
    "EVALS",
]

# Segmentation steps per model: below MIN_STEPS the planner refuses the budget (it says what
# fits instead); below GOOD_STEPS (.shape) it keeps the cheapest shape that covers enough of a
# slice rather than a larger patch or a wider network.
MIN_STEPS = 300
# A model a run already trains never falls below this: a run shortens its models no further when
# the machine slows (.running.budget), and an untimed plan refuses its budget in the run's first
# window only below it (that window runs slow: the process's first steps).
MIN_STEPS_SHORTENED = MIN_STEPS // 2
# A quick retrain fine-tunes a trained student: a couple of hundred steps already move it (the
# simulated annotator, docs/benchmarks.md); 300 refused the correction dock's 3 minutes at one
# thread of a 2-core laptop (about 210 steps).
MIN_RETRAIN_STEPS = 100
# Below this many steps per model, joint training has not paid on the data measured (ACDC, 3
# labelled patients: pre-training won for every task at 2207 steps, docs/benchmarks.md), so
# `stage1.modes = "auto"` trains the pre-training mode only and the time goes to the student.
JOINT_PAYS_STEPS = 4000
# Validation passes per model: halfway (the curve in the dock; the halving point in stage 1)
# and the final report. A pass over ACDC's 20 validation volumes costs about 25 seg steps.
EVALS = 2
OVERHEAD_S = 3.0  # per run: loading teachers, writing the report (data preparation is timed)
OVERHEAD_PER_MODEL_S = 1.0  # saving the model and its checkpoint
# Below this budget a run trains one unit at a time without pricing side by side: timing the
# steps beside other processes (starting them) takes 5 to 10 seconds.
SIDE_MIN_BUDGET_S = 300.0


class PlanError(ValueError):
    """The budget or the data do not allow a run; the message says what would."""


@dataclass
class Plan:
    """The planner's choices for one run; ``apply`` turns them into a concrete config."""

    device: str
    threads: int
    precision: str
    spacing: tuple[float, float] | None
    patch: int
    width: int
    depth: int
    batch_size: int
    norms: dict[str, dict[str, Any]]
    budget_s: float = 0.0
    models: list[str] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)  # seg / pretext / student / retrain
    estimate_s: dict[str, float] = field(default_factory=dict)  # per model + "total"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step, measured
    reasons: list[str] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    lanes: int = 1  # units a budgeted run trains at once (priced that way by allocate)
    lanes_why: str = ""
    modes: str = ""  # stage 1's modes the planner chose for `stage1.modes = "auto"`
    # the most CPU threads a unit may move to when cores free up (the plan's thread policy);
    # 0: the threads stay as they are (the user set them, or a GPU does the work)
    threads_max: int = 0
    # {"tasks", "steps", "why"}: the budget was too short for teachers (allocate), so the run
    # trains the baseline and the student only; empty: the tasks train as configured
    teachers_skipped: dict[str, Any] = field(default_factory=dict)
    what: str = ""  # what the run trains (ids.What): a quick retrain's student steps "retrain"
    # True: nothing was timed (a short baseline that starts at once, .shape.shape_plan): the
    # timings are a guess the run's pace replaces with its own steps', and the run checks the
    # budget against them in its first window (under MIN_STEPS_SHORTENED: refused) instead of at the
    # click
    untimed: bool = False

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            spacing=None if self.spacing is None else tuple(self.spacing),  # type: ignore[arg-type]
            norms={k: NormSpec(**v) for k, v in self.norms.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        if d.get("spacing") is not None:
            d["spacing"] = tuple(d["spacing"])
        if _OLD_RETRAIN in d.get("models", ()):  # written before a retrain was a stage
            d["models"] = ["student" if m == _OLD_RETRAIN else m for m in d["models"]]
            d["estimate_s"] = {
                "student" if k == _OLD_RETRAIN else k: v for k, v in d["estimate_s"].items()
            }
            d["what"] = str(What.RETRAIN_QUICK)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def apply(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """A copy of ``cfg`` with every planned field filled in (fields the user set stay)."""
        c = ExperimentConfig.from_dict(cfg.to_dict())
        c.data.patch_size = c.data.patch_size or self.patch
        c.data.batch_size = c.data.batch_size or self.batch_size
        c.model.width = c.model.width or self.width
        c.model.depth = c.model.depth or self.depth
        c.optim.precision = self.precision
        c.num_threads = c.num_threads or self.threads
        if c.stage1.modes == "auto" and self.modes:
            c.stage1.modes = self.modes
        if self.teachers_skipped:
            gone = set(self.teachers_skipped.get("tasks", []))
            c.stage1.tasks = [t for t in c.stage1.tasks if t not in gone]
            c.stage1.lambda_ = {t: v for t, v in c.stage1.lambda_.items() if t not in gone}
        self._apply_steps(c)
        c.stage1.task_overrides = task_shape_overrides(
            c.stage1.tasks, c.stage1.task_overrides, c.data.patch_size, c.model.depth
        )
        return c.validate()

    def _apply_steps(self, c: ExperimentConfig) -> None:
        """Fill ``c``'s step counts from the plan's (in place; counts the user set stay)."""
        st = self.steps
        if "seg" in st:
            c.baseline.steps = c.baseline.steps or st["seg"]
            c.stage1.joint_steps = c.stage1.joint_steps or st["seg"]
            c.stage1.finetune_steps = c.stage1.finetune_steps or st["seg"]
            if self.budget_s > 0 and not st.get("halving_at") and not c.stage1.eval_every:
                c.stage1.eval_every = st["seg"]  # nothing to decide halfway: one validation
        if "pretext" in st:
            c.stage1.pretrain_steps = c.stage1.pretrain_steps or st["pretext"]
        if "student" in st:
            c.stage2.steps = c.stage2.steps or st["student"]
        if "retrain" in st:
            c.stage2.retrain_steps = c.stage2.retrain_steps or st["retrain"]

    def describe(self) -> list[str]:
        """Markdown lines: the choices, the reasons and the per-model steps."""
        sp = "each scan's own spacing" if self.spacing is None else f"{self.spacing[0]:.3g} mm"
        lines = [
            f"- **{self.patch} x {self.patch} patches at {sp}**, U-Net width {self.width}, "
            f"depth {self.depth}, batch {self.batch_size}, {self.precision} on {self.device} "
            f"({self.threads} thread{'s' if self.threads != 1 else ''})",
        ]
        lines += [f"- {r}" for r in self.reasons]
        if self.teachers_skipped:
            lines.append(f"- {self.teachers_skipped['why']}")
        if self.budget_s:
            lines.append(
                f"- budget {format_budget(self.budget_s)}: estimated "
                f"{format_budget(self.estimate_s.get('total', 0.0))} for "
                f"{len(self.models)} model(s)"
            )
        if self.lanes_why:
            how = f"{self.lanes} units at once" if self.lanes > 1 else "one unit at a time"
            lines.append(f"- {how}: {self.lanes_why}")
        for w in self.warnings:
            lines.append(f"- note: {w}")
        return lines

    def step_table(self) -> list[tuple[str, str, str]]:
        """(model, steps, estimated time) rows for the dock and the report."""
        rows = []
        for m in self.models:
            n = self.steps.get(_step_key(m, self.what), 0)
            extra = ""
            if mode_of(m) == "pretrain":
                extra = f" + {self.steps.get('pretext', 0)} pre-training"
            rows.append((m, f"{n}{extra}", format_budget(self.estimate_s.get(m, 0.0))))
        return rows


def task_shape_overrides(
    tasks: Sequence[str], overrides: dict[str, dict[str, Any]], patch: int, depth: int
) -> dict[str, dict[str, Any]]:
    """Task crop sizes that fit the plan: no larger than the patch the crops are cut from, and
    a multiple of what the network's depth needs (Rubik's quarters each go through the
    encoder). A crop size the user set is kept."""
    # imported here, when needed: it loads MONAI, scipy
    from napari_mtssl.tasks import task_class

    out = {k: dict(v) for k, v in overrides.items()}
    for name in tasks:
        try:
            cls = task_class(name)
        except ValueError:
            continue
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        if "crop_size" not in fields or "crop_size" in out.get(name, {}):
            continue
        default = int(fields["crop_size"].default)
        unit = max(16, 2**depth) * (2 if name == "rubik" else 1)
        crop = min(default, patch) // unit * unit
        if crop >= 2 * unit and crop != default:
            out.setdefault(name, {})["crop_size"] = int(crop)
    return out


_OLD_RETRAIN = "student (retrain)"  # a quick retrain's unit in plans of earlier versions


def _step_key(model: str, what: str) -> str:
    """The key of :attr:`Plan.steps` that counts ``model``'s steps in a run of ``what``."""
    if model != "student":
        return "seg"
    return "retrain" if what == What.RETRAIN_QUICK else "student"


def mode_of(unit: str) -> str | None:
    """The mode of a task's model (``joint`` / ``pretrain``); None for the other units."""
    return ModelId.parse(unit).mode


def model_units(what: What, cfg: ExperimentConfig) -> list[str]:
    """The models a run of ``what`` trains, in order (also the budget's shares); a quick
    retrain's one model is the student (its stage, not its name, says it is a retrain)."""
    units: list[str] = []
    w = What.parse(what)
    if w.trains_baseline:
        units.append("baseline")
    if w.trains_teachers:
        for t in cfg.stage1.tasks:
            if cfg.stage1.modes in ("joint", "both", "auto"):
                units.append(str(trained(t, "joint")))
            if cfg.stage1.modes in ("pretrain", "both", "auto"):
                units.append(str(trained(t, "pretrain")))
        if cfg.all_joint and len(cfg.stage1.tasks) > 1:
            units.append("all_joint")
    if w.trains_student:
        units.append("student")
    if w == What.RETRAIN_QUICK:
        units.append(str(STUDENT))
    return units


def explicit_steps(cfg: ExperimentConfig, what: What) -> dict[str, int]:
    """Steps as the config gives them (no budget): every count must be set."""
    s1 = cfg.stage1
    n = int(cfg.baseline.steps or s1.joint_steps)
    both = s1.modes in ("both", "auto") and s1.halving > 0
    out = {
        "seg": n,
        "pretext": int(s1.pretrain_steps),
        "student": int(cfg.stage2.steps),
        "retrain": int(cfg.stage2.retrain_steps),
        "halving_at": int(round(s1.halving * s1.joint_steps)) if both else 0,
        "eval_every": int(s1.eval_every or max(1, n // 2)),
        "fixed": 1,
    }
    need = {
        What.BASELINE: ["seg"],
        What.STAGE1: ["seg"] + (["pretext"] if s1.modes != "joint" else []),
        What.STAGE2: ["student"],
        What.RETRAIN_STAGE2: ["student"],
        What.RETRAIN_QUICK: ["retrain"],
    }.get(what, ["seg", "student"] + (["pretext"] if s1.modes != "joint" else []))
    if any(not out[k] for k in need):
        raise PlanError(
            "without a time budget every step count must be set (stage1.joint_steps, "
            "stage1.pretrain_steps, stage1.finetune_steps, stage2.steps); or give a budget"
        )
    return out
