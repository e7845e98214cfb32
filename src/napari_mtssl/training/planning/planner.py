"""The planner's entry point: the run's shape (:func:`.shape.shape_plan`), then its budget
shared across the models (:func:`allocate`).

Every model of a run gets the same number of segmentation steps (the comparison the method is
judged by is at equal training); the student of a semi-supervised run gets its own share of
the time; units trained side by side are priced so (:mod:`.lanes`); a budget too short for
the teachers to pay trains the baseline and its student only; a budget too small for the
chosen tasks is refused with what fits.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from napari_mtssl.ids import ModelId, What
from napari_mtssl.training.config import ExperimentConfig, format_budget
from napari_mtssl.training.planning import lanes as _lanes  # (``lanes`` is a count here)
from napari_mtssl.training.planning.fingerprint import Fingerprint
from napari_mtssl.training.planning.plan import (
    EVALS,
    JOINT_PAYS_STEPS,
    MIN_RETRAIN_STEPS,
    MIN_STEPS,
    OVERHEAD_PER_MODEL_S,
    OVERHEAD_S,
    SIDE_MIN_BUDGET_S,
    Plan,
    PlanError,
    mode_of,
    model_units,
)
from napari_mtssl.training.planning.shape import UNTIMED_REASON_START, shape_plan
from napari_mtssl.training.planning.timing import (
    SOFT_EVAL,
    SOFT_MIN_SCANS,
    SOFT_SHARE,
    nominal_timings,
    time_steps,
    unit_step_s,
)

__all__ = [
    "make_plan",
    "allocate",
    "min_steps",
    "student_share",
    "soft_scan_count",
    "too_short",
]


def make_plan(
    fp: Fingerprint,
    cfg: ExperimentConfig,
    what: What = What.ALL,
    *,
    allocate_steps: bool = True,
    **shape: Any,
) -> Plan:
    """The run's plan: its shape for ``fp`` (:func:`.shape.shape_plan`, whose keywords
    ``shape`` takes: ``device``, ``probe``, ``interactive``, ``fixed``, ``planner``), then, within
    ``cfg.budget_s``, the steps of every model (:func:`allocate`; ``allocate_steps=False``:
    later, by the caller). Without a budget the steps are ``cfg``'s."""
    plan = shape_plan(fp, cfg, what, **shape)
    if cfg.budget_s > 0 and allocate_steps:
        allocate(plan, cfg, what, fp, probe=shape.get("probe", True))
    return plan


def allocate(plan: Plan, cfg: ExperimentConfig, what: What, fp: Fingerprint, **kw: Any) -> Plan:
    """Share ``cfg.budget_s - spent_s`` across the run's models (in place; returns ``plan``):
    :func:`_allocate`, less the teachers where the budget is too short for them to pay
    (``stage1.min_teacher_steps``: the plan then says so in ``teachers_skipped``)."""
    plan.teachers_skipped = {}
    if not _may_skip_teachers(cfg, what):
        try:
            _allocate(plan, cfg, what, fp, **kw)
        except PlanError:
            if not plan.untimed:
                raise
            _time_untimed(plan)  # refused at a guessed speed: timed, and said truly
            _allocate(plan, cfg, what, fp, **{**kw, "timings": None})
        return _restate_steps_allocated(plan)
    try:
        _allocate(plan, cfg, what, fp, **kw)
        n = int(plan.steps["seg"])
    except PlanError:  # too short for every model: without the teachers it may fit
        n = 0
    want = int(cfg.stage1.min_teacher_steps)
    if n >= want:
        return _restate_steps_allocated(plan)
    kw["timings"] = kw.get("timings") or plan.timings or None
    lean = ExperimentConfig.from_dict(cfg.to_dict())
    lean.stage1.tasks, lean.stage1.lambda_ = [], {}
    lean.stage1.modes = "pretrain"  # one mode: no halving, one validation per model
    _allocate(plan, lean, what, fp, **kw)  # too short even so: its own message says what fits
    _restate_steps_per_model(plan, int(plan.steps["seg"]), n)
    tasks = list(cfg.stage1.tasks)
    about = f"about {n}" if n else "too few"
    more = format_budget(math.ceil(cfg.budget_s * want / max(n, 1) / 300) * 300) if n else ""
    plan.teachers_skipped = {
        "tasks": tasks,
        "steps": n,
        "why": (
            f"no teacher trained: a {format_budget(cfg.budget_s)} budget gives each teacher "
            f"{about} segmentation steps on this machine, fewer than "
            f"stage1.min_teacher_steps ({want}; below that, teachers did not lead the "
            "baseline on the ACDC benchmark); the baseline and the student share the time, "
            "and the student learns from the baseline and the unlabelled scans"
            + (
                f". Teachers ({', '.join(tasks)}) train from a budget of about {more}"
                if more
                else ""
            )
        ),
    }
    return plan


def _time_untimed(plan: Plan) -> None:
    """An untimed plan (:func:`.shape.shape_plan`) whose guessed step costs refused its budget:
    the refusal and what fits instead are worked out from the chosen network timed now (the
    shape stays: timing only finds the machine slower than the bound that chose it)."""
    plan.untimed = False
    plan.timings = {}
    plan.reasons = [r for r in plan.reasons if not r.startswith(UNTIMED_REASON_START)]


def _restate_steps_allocated(plan: Plan) -> Plan:
    """The network's reason priced the steps per model from a step cost guessed before the
    chosen network was timed; once the budget is shared out, it says the steps the plan gives
    (the figure of its table, the CLI's, the report's and the dock's)."""
    seg = (plan.steps or {}).get("seg")
    if seg:
        said = re.compile(r"the budget leaves about \d+ steps per model")
        plan.reasons = [said.sub(f"the budget leaves about {int(seg)} steps per model", r)
                        for r in plan.reasons]  # fmt: skip
    return plan


def _restate_steps_per_model(plan: Plan, n: int, with_teachers: int = 0) -> None:
    """The network's reason (:meth:`.shape.ShapePlanner.plan`, which priced every model of the
    run, teachers included) says what the budget left each model with the teachers
    (``with_teachers``, as allocated; 0: the shape's own estimate); without them, ``n``.
    The shape stays the one chosen with the teachers (the one the benchmarks measured)."""
    said = re.compile(
        r"the budget (?:leaves|would leave) about (\d+) steps per model(?: with the teachers)?"
        r"(, fewer than the \d+ the planner aims for)?(?:; without them .*)?$"
    )

    def now(m: re.Match) -> str:
        return (
            f"the budget would leave about {with_teachers or m.group(1)} steps per model with "
            "the teachers"
            f"{m.group(2) or ''}; without them (no teacher: see below) it leaves about {n} "
            "steps per model"
        )

    plan.reasons = [said.sub(now, r) for r in plan.reasons]


def _may_skip_teachers(cfg: ExperimentConfig, what: What) -> bool:
    """Whether a budget may leave the teachers out: a budgeted run of everything whose
    semi-supervised student can learn from the run's baseline instead, no steps set by hand."""
    s1 = cfg.stage1
    return bool(
        what == What.ALL
        and cfg.budget_s > 0
        and s1.tasks
        and s1.min_teacher_steps > 0
        and cfg.stage2.method == "semi"
        and cfg.stage2.with_baseline
        and not (s1.joint_steps or s1.finetune_steps or cfg.baseline.steps)
    )


def _allocate(
    plan: Plan,
    cfg: ExperimentConfig,
    what: What,
    fp: Fingerprint,
    *,
    probe: bool = True,
    spent_s: float = 0.0,
    cached_pretext: Sequence[str] = (),
    timings: dict[str, float] | None = None,
    lanes: int = 1,
) -> Plan:
    """Share ``cfg.budget_s - spent_s`` across the models of ``cfg``'s run.

    Every model gets the same number N of segmentation steps (the comparison the method is
    judged by is at equal training); pre-training gets ``pretrain_ratio * N`` steps (nothing
    for a task whose pre-training is cached); successive halving trains the losing mode for a
    share ``halving`` of N only. Validation passes and a safety margin of 5 % are counted.
    ``lanes`` > 1: the run may train that many units at once; the steps are also priced side
    by side (:func:`.lanes.price_side_by_side`) and the way that gives more steps is kept
    (``plan.lanes``), or side by side whatever it gives when ``units_at_once`` asks for it.
    """
    if cfg.stage1.modes == "auto" and What.parse(what).trains_teachers:
        return _allocate_auto(
            plan, cfg, what, fp, probe=probe, spent_s=spent_s,
            cached_pretext=cached_pretext, timings=timings, lanes=lanes,
        )  # fmt: skip
    t = (
        timings
        or plan.timings
        or (time_steps(plan, cfg, fp, what) if probe else nominal_timings(plan, cfg))
    )
    if lanes > 1 and cfg.budget_s < SIDE_MIN_BUDGET_S and not cfg.units_at_once:
        lanes = 1  # timing steps side by side would cost a share of so small a budget
    t, lanes, failed, spent_s = _with_side_timings(plan, cfg, fp, t, lanes, probe, spent_s)
    plan.timings = {k: round(float(v), 5) for k, v in t.items()}
    c = _Costs.of(cfg, what, fp, t, max(0.0, cfg.budget_s - spent_s), cached_pretext)
    n = int(c.usable_s / c.per_n) if c.per_n > 0 else 0
    plan.lanes, plan.lanes_why, side = 1, failed, None
    if lanes > 1:
        n, side = _side_by_side(plan, cfg, what, c, lanes, n)
    floor = min_steps(what)
    if n < floor:
        # the student's share is taken from the training time before the others' steps
        need = (floor * c.per_n / (1 - c.s_share) + c.fixed) / 0.95 + spent_s
        raise PlanError(_too_small(plan, cfg, what, fp, t, spent_s, n, need))
    s1 = cfg.stage1
    if s1.joint_steps or cfg.baseline.steps:
        n = int(cfg.baseline.steps or s1.joint_steps)
    plan.steps = c.steps(cfg, n)
    plan.estimate_s = c.estimate(plan.steps, n)
    if plan.lanes > 1 and side is not None:
        plan.estimate_s.update(side.estimate(n))
    plan.budget_s = cfg.budget_s
    plan.models, plan.what = c.units, str(What.parse(what))
    return plan


def _with_side_timings(
    plan: Plan,
    cfg: ExperimentConfig,
    fp: Fingerprint,
    t: dict[str, float],
    lanes: int,
    probe: bool,
    spent_s: float,
) -> tuple[dict[str, float], int, str, float]:
    """``t`` with the steps timed side by side (``side:`` keys) when ``lanes`` > 1 asks for
    them and they are not timed yet; the lanes left (1 where the timing failed), why it
    failed, and ``spent_s`` with the timing's cost (it is paid from the budget)."""
    if lanes <= 1 or not probe or any(k.startswith("side:") for k in t):
        return t, lanes, "", spent_s
    t0 = time.perf_counter()
    failed = ""
    try:
        side = _lanes.time_side_by_side(plan, cfg, fp, lanes)
        t = {**t, **{f"side:{k}": v for k, v in side.items()}}
    except (OSError, RuntimeError) as exc:  # one at a time, as priced without it
        lanes, failed = 1, f"the steps could not be timed side by side ({exc})"
    return t, lanes, failed, spent_s + time.perf_counter() - t0


def _side_by_side(
    plan: Plan, cfg: ExperimentConfig, what: What, c: _Costs, lanes: int, n: int
) -> tuple[int, Any]:
    """The steps per model with ``lanes`` units at a time where that gives more than ``n`` one
    at a time (or where the user asked for it: ``units_at_once``), and the pricing
    (:func:`.lanes.price_side_by_side`; None where it could not price them). Sets
    ``plan.lanes`` and ``plan.lanes_why``."""
    room = c.budget_s * 0.95 - OVERHEAD_S - OVERHEAD_PER_MODEL_S * len(c.units)
    if c.s_share:
        room -= c.student_s + c.fixed_student + EVALS * c.t_eval
    side = _lanes.price_side_by_side(cfg, what, c.t, lanes, room, c.cached_pretext, not c.s_share)
    if side is None:
        return n, None
    chosen = bool(cfg.units_at_once) or side.steps > n * _lanes.SIDE_GAIN
    plan.lanes_why = side.why(n, chosen)
    if chosen:
        plan.lanes, n = lanes, side.steps
    return n, side


@dataclass
class _Costs:
    """What a run's models cost in a budget, one at a time: ``per_n`` seconds per step of N
    summed over the models (halving discounts the expected loser), ``fixed`` seconds whatever
    N is (validation passes, overheads, the student's stored maps), and the student's own time
    ``student_s`` (its share of the training time, semi after stage 1 in the same run)."""

    cfg: ExperimentConfig
    t: dict[str, float]
    units: list[str]
    cached_pretext: Sequence[str]
    budget_s: float
    both: bool
    evals: int
    halving: float
    s_share: float
    soft_scans: int
    fixed_student: float
    per_n: float = 0.0
    fixed: float = 0.0
    student_s: float = 0.0
    usable_s: float = 0.0

    @classmethod
    def of(cls, cfg, what, fp, t, budget_s, cached_pretext) -> _Costs:
        s1 = cfg.stage1
        both = s1.modes == "both" and s1.halving > 0
        # Validation passes per model: halfway (the halving's decision) and at the end; one at
        # the end when nothing is decided halfway (Plan.apply sets stage1.eval_every so)
        s_share = student_share(cfg, what)
        members = _members_guess(cfg, what)
        c = cls(
            cfg=cfg,
            t=t,
            units=model_units(what, cfg),
            cached_pretext=cached_pretext,
            budget_s=budget_s,
            both=both,
            evals=EVALS if both or s1.eval_every else 1,
            halving=s1.halving if both else 1.0,
            s_share=s_share,
            soft_scans=soft_scan_count(cfg, fp, t, members, budget_s, s_share),
            fixed_student=0.0,
        )
        # the teachers' predictions the student computes once, priced as fixed time
        stores = What.parse(what).trains_student and not _student_online(cfg, what)
        if "student" in c.units and stores:
            per_scan = t.get("soft", 0.0) / max(1, fp.n_train)
            c.fixed_student = members * per_scan * c.soft_scans
            c.fixed_student += (members if members > 1 else 0) * c.t_eval * SOFT_EVAL
        c._price()
        return c

    @property
    def t_eval(self) -> float:
        return self.t["eval"]

    def per_step(self, u: str) -> tuple[float, float]:
        return unit_step_s(u, self.t, self.cfg, self.cached_pretext)

    def _loses_halving(self, u: str) -> bool:
        """Whether ``u`` is the mode expected to stop at the halving: the leader is not known
        yet, so the dearer mode is assumed to go on (a safe estimate)."""
        if not (self.both and mode_of(u)):
            return False
        other = str(ModelId.parse(u).other_mode())
        return self.per_step(u)[0] < self.per_step(other)[0]

    def _price(self) -> None:
        fixed = self.fixed_student
        for u in self.units:
            if u == "student" and self.s_share:
                fixed += EVALS * self.t_eval
                continue
            seg, pre = self.per_step(u)
            self.per_n += seg * (self.halving if self._loses_halving(u) else 1.0) + pre
            fixed += self.evals * self.t_eval
        self.fixed = fixed + OVERHEAD_S + OVERHEAD_PER_MODEL_S * len(self.units)
        usable = self.budget_s * 0.95 - self.fixed
        self.student_s = self.s_share * usable
        self.usable_s = usable - self.student_s

    def steps(self, cfg: ExperimentConfig, n: int) -> dict[str, int]:
        """The plan's steps for ``n`` segmentation steps per model."""
        s1, s2 = cfg.stage1, cfg.stage2
        student = int(self.student_s / max(self.t["student"], 1e-6)) if self.s_share else n
        return {
            "seg": n,
            "pretext": int(s1.pretrain_steps or max(1, round(s1.pretrain_ratio * n))),
            "student": int(s2.steps or student),
            "soft_scans": int(self.soft_scans),
            "retrain": int(s2.retrain_steps or n),
            "halving_at": int(round(self.halving * n)) if self.both else 0,
            "eval_every": max(1, n // self.evals),
        }

    def estimate(self, steps: dict[str, int], n: int) -> dict[str, float]:
        """Seconds each model is expected to take, and the run's total."""
        est: dict[str, float] = {}
        for u in self.units:
            seg, pre = self.per_step(u)
            steps_u = steps["student"] if u == "student" else n
            est[u] = round(steps_u * seg + n * pre + self.evals * self.t_eval, 1)
            if self._loses_halving(u):
                est[u] = round(self.halving * n * seg + n * pre + 2 * self.t_eval, 1)
        if "student" in est:
            est["student"] = round(est["student"] + self.fixed_student, 1)
        spent = sum(est.values()) + self.fixed - len(self.units) * self.evals * self.t_eval
        est["total"] = round(spent, 1)
        return est


def soft_scan_count(
    cfg: ExperimentConfig,
    fp: Fingerprint,
    t: dict[str, float],
    members: int,
    budget_s: float,
    share: float,
) -> int:
    """Training scans whose ensemble maps the student's run stores: every one, unless that
    would cost more than SOFT_SHARE of the student's time."""
    n = max(1, int(fp.n_train))
    per_scan = members * t.get("soft", 0.0) / n
    if per_scan <= 0 or cfg.stage2.method != "semi":
        return n  # the paper's student distils on every slice, labelled ones too
    student_s = budget_s * (share or 0.5)
    return int(min(n, max(SOFT_MIN_SCANS, SOFT_SHARE * student_s / per_scan)))


def student_share(cfg: ExperimentConfig, what: What) -> float:
    """The share of a budgeted run's training time its student gets (semi, in a run that also
    trains stage 1); 0: the same steps as every other model."""
    s2 = cfg.stage2
    if what != What.ALL or s2.method != "semi" or s2.steps:
        return 0.0
    return float(s2.share)


def _student_online(cfg: ExperimentConfig, what: What) -> bool:
    """Whether the student's ensemble will be the model it starts from (a run of everything
    with no teacher: the run's baseline), so that no map is stored and its moving average
    labels the unlabelled slices (``units._own_start_online`` decides it when it starts)."""
    s2 = cfg.stage2
    return bool(
        what == What.ALL
        and not cfg.stage1.tasks
        and s2.with_baseline
        and s2.learns_online()
        and s2.resolved_init() == "best"
    )


def _members_guess(cfg: ExperimentConfig, what: What) -> int:
    """Models in the student's ensemble before stage 1 has scored them (the most it can be)."""
    n = len(cfg.stage1.tasks)
    if cfg.stage2.method == "semi" and cfg.stage2.with_baseline and what == What.ALL:
        n += 1
    return max(1, n)


def _allocate_auto(plan: Plan, cfg: ExperimentConfig, what: What, fp: Fingerprint, **kw) -> Plan:
    """``stage1.modes = "auto"``: both modes where the budget gives every model
    JOINT_PAYS_STEPS (joint training needs many steps to pay, and its step is the dearer),
    else the pre-training mode only (its pre-training is also cached across runs)."""
    both = ExperimentConfig.from_dict(cfg.to_dict())
    both.stage1.modes = "both"
    try:
        _allocate(plan, both, what, fp, **kw)
        enough = plan.steps["seg"] >= JOINT_PAYS_STEPS
    except PlanError:
        enough = False
    if enough:
        plan.modes = "both"
        return plan
    kw["timings"] = kw.get("timings") or plan.timings or None
    pre = ExperimentConfig.from_dict(cfg.to_dict())
    pre.stage1.modes = "pretrain"
    _allocate(plan, pre, what, fp, **kw)
    plan.modes = "pretrain"
    return plan


def min_steps(what: What) -> int:
    """The fewest steps per model a budget must give a run of ``what``."""
    return MIN_RETRAIN_STEPS if what == What.RETRAIN_QUICK else MIN_STEPS


def _too_small(plan, cfg, what, fp, t, spent_s, n, need) -> str:
    """The message for a budget that gives fewer than MIN_STEPS: what fits instead."""
    tasks = list(cfg.stage1.tasks)
    fits = None
    if What.parse(what).trains_teachers and len(tasks) > 1:
        for k in range(len(tasks) - 1, 0, -1):
            c = ExperimentConfig.from_dict(cfg.to_dict())
            c.stage1.tasks = tasks[:k]
            c.stage1.lambda_ = {x: v for x, v in c.stage1.lambda_.items() if x in tasks[:k]}
            try:
                allocate(dataclasses.replace(plan), c, what, fp, timings=t, spent_s=spent_s)
            except PlanError:
                continue
            fits = k
            break
    budget = format_budget(cfg.budget_s)
    allows = ""
    if fits:
        allows = f"{budget} allows baseline + {fits} task{'s' if fits > 1 else ''}"
        allows += f" ({', '.join(tasks[:fits])})"
    what_text = ", ".join(tasks) if What.parse(what).trains_teachers and tasks else "this run"
    return too_short(cfg.budget_s, len(model_units(what, cfg)), n, min_steps(what), need,
                     what_text, allows)  # fmt: skip


def too_short(
    budget_s: float,
    models: int,
    n: int,
    floor: int,
    need_s: float,
    what_text: str = "this run",
    allows: str = "",
) -> str:
    """A budget's refusal: it gives each of ``models`` models about ``n`` steps, fewer than
    ``floor``; ``need_s`` would do (the docks read this message: ``widgets.training``)."""
    msg = (
        f"a {format_budget(budget_s)} budget gives each of the {models} model(s) of this "
        f"run about {max(0, n)} training steps on this machine; it needs at least {floor}"
    )
    if allows:
        msg += f". {allows}"
    return msg + (
        f"; give {what_text} a budget of at least "
        f"{format_budget(math.ceil(need_s * 1.05 / 60) * 60)}"
    )
