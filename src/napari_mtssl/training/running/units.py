"""A run as a plan of units: what each model's training is, what it waits for, and how one
unit trains wherever an executor runs it.

A :class:`Unit` is JSON: the kind of model (``baseline``, a task in one ``mode``, ``all_joint``,
``student``), the steps it trains, and for successive halving the step it pauses at. Units do
not share memory: one reads the run's config and plan and the workspace's prepared data, trains,
and writes its model (safetensors + sidecar with its scores) into the run; its result is a small
JSON dict. So the same unit runs in the run's own process (the inline executor), in a process of
its own beside others (local), or on another machine of a Ray cluster that sees the workspace.

What depends on what (the pipeline's scheduler reads ``deps``): a task's two modes train
independently up to the halving point; the continuation of each waits for both (the decision);
the student waits for the teachers it distils. Selecting a task's teacher is a copy the
scheduler does itself.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_mtssl.events import Events, Note
from napari_mtssl.ids import ModelId, Stage, What
from napari_mtssl.training.config import ExperimentConfig
from napari_mtssl.training.data.slices import StudyData
from napari_mtssl.training.loop import checkpoints, soft_labels, stages
from napari_mtssl.training.loop.pace import TooFewSteps
from napari_mtssl.training.loop.trainer import evaluate
from napari_mtssl.training.planning.plan import MIN_STEPS, MIN_STEPS_SHORTENED, Plan, PlanError
from napari_mtssl.training.planning.planner import too_short
from napari_mtssl.training.planning.timing import SOFT_MIN_SCANS, SOFT_OVERLAP
from napari_mtssl.training.prediction.inference import resolve_device

__all__ = ["Unit", "UnitContext", "train", "unit_job", "warm_up"]


@dataclass
class Unit:
    """One model's training, as the scheduler hands it to an executor.

    ``id``: unique in the run (``sdm:joint@rung`` for the halving rung); ``model``: the model it
    writes; ``kind``: baseline | mode | all_joint | student; ``steps``: its step count (fixed
    once it started: the learning-rate schedule depends on it); ``pause_at``: the halving step;
    ``deps``: unit ids it waits for. Pre-training: ``pretext_file`` (the workspace cache entry,
    or None) and ``reuse``. Student: ``teachers`` and ``init`` as ``[run id, model]`` pairs.
    """

    id: str
    model: str
    kind: str
    steps: int
    task: str | None = None
    mode: str | None = None
    pause_at: int | None = None
    probe_at: int | None = None  # the baseline: an extra validation at the teachers' rung
    deps: list[str] = field(default_factory=list)
    pretext_file: str | None = None
    reuse: bool = False
    teachers: list[list[str]] = field(default_factory=list)
    init: list[str] | None = None
    stage: Stage = Stage.STAGE2  # the student's: STAGE2 | RETRAIN
    # the last unit of a budgeted run, alone on the machine: up to `grow` x its steps when the
    # machine runs faster than planned, threads fitted to the free cores up to `threads_max`
    # (training/loop/pace.py)
    grow: float = 1.0
    threads_max: int = 0
    # where the unit aims to end, in seconds after the deadline it is given (<= 0: the run's
    # budget, before the deadline's slack); the deadline itself is the hard end
    aim_s: float = 0.0

    def __post_init__(self) -> None:
        self.stage = Stage(self.stage)  # as its JSON form gives it: a string
        ModelId.parse(self.model)  # a unit writes a model: never a name ModelId refuses

    @property
    def model_id(self) -> ModelId:
        """The model the unit writes, as a type (``model`` is its text, as stored)."""
        return ModelId.parse(self.model)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "stage": self.stage.value}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Unit:
        return cls(**d)


@dataclass
class UnitContext:
    """What a unit trains with: the workspace, its run, the run's config and plan, the data."""

    ws: Any
    run: Any
    cfg: ExperimentConfig
    plan: Any
    study: Any
    device: torch.device

    def load(self, run_id: str, model: str) -> torch.nn.Module:
        src = self.run if run_id == self.run.id else self.ws.run(run_id)
        net, _ = checkpoints.load_model(src.model_path(model), self.device)
        return net


def _unit_cfg(cfg: ExperimentConfig, steps: int) -> ExperimentConfig:
    """The run's config as one unit trains it: its own copy (nothing a stage does with it
    reaches the run's), with the unit's ``steps`` in every field a model's step count is read
    from: ``baseline.steps`` (the baseline), ``stage1.joint_steps`` (a joint mode, all_joint),
    ``stage1.finetune_steps`` (a pre-trained mode's fine-tuning), ``stage2.steps`` and
    ``stage2.retrain_steps`` (the student, new or retrained); so a unit need not know which
    is its own. ``stage1.pretrain_steps`` stays the run's: the pre-training is not the
    model's training, and its cached result is reused by its own count."""
    c = ExperimentConfig.from_dict(cfg.to_dict())
    return dataclasses.replace(
        c,
        baseline=dataclasses.replace(c.baseline, steps=steps),
        stage1=dataclasses.replace(c.stage1, joint_steps=steps, finetune_steps=steps),
        stage2=dataclasses.replace(c.stage2, steps=steps, retrain_steps=steps),
    )


def _fp32_by_timing(plan: Any) -> bool:
    """Whether the plan chose fp32 on a CPU because bf16 timed no faster (not by the user's
    setting): a timing that a busy machine may have distorted, which the unit re-checks."""
    if plan is None or getattr(plan, "device", "") != "cpu":
        return False
    return plan.precision == "fp32" and "optim.precision" not in (plan.overridden or ())


def _val_guess(plan: Any) -> tuple[float, float] | None:
    """(seconds of a validation pass, seconds of a forward batch) as the plan timed them, which
    the unit's pace keeps for its final validation until it has timed one; None where the plan
    timed neither (steps the user fixed, a plan without timings)."""
    timings = getattr(plan, "timings", None) or {}
    fwd_s, val_s = timings.get("fwd"), timings.get("eval")
    if not fwd_s or not val_s:
        return None
    return float(val_s), float(fwd_s)


def _generator(ctx: UnitContext, unit: Unit, stop, deadline) -> Events[dict]:
    """The stage that trains ``unit`` (a generator returning its result with the network)."""
    cfg = _unit_cfg(ctx.cfg, unit.steps)
    ckpt = ctx.run.checkpoint_dir
    args = (ctx.study, cfg, ctx.device, ckpt, stop)
    guess = _val_guess(ctx.plan)
    pace = {"grow": unit.grow, "threads_max": unit.threads_max, "aim_s": unit.aim_s,
            "recheck_precision": _fp32_by_timing(ctx.plan), "val_guess": guess}  # fmt: skip
    if unit.kind == "baseline":
        # An untimed plan checks its budget against the steps its first window times, at the
        # floor a run keeps when it shortens a unit: the first window runs slow (1.59 s a step
        # there against 1.12 s after, in the viewer's walk beside two busy processes), so
        # MIN_STEPS itself would refuse budgets that fit it.
        floor = MIN_STEPS_SHORTENED if getattr(ctx.plan, "untimed", False) else 0
        return stages.baseline(
            *args, deadline=deadline, probe_at=unit.probe_at, floor=floor, **pace
        )
    if unit.kind == "all_joint":
        return stages.all_joint(ctx.cfg.stage1.tasks, *args, deadline=deadline, **pace)
    if unit.kind == "mode" and unit.mode == "joint":
        return stages.joint(
            unit.task, *args, pause_at=unit.pause_at, deadline=deadline, aim_s=unit.aim_s,
            val_guess=guess,
        )  # fmt: skip
    if unit.kind == "mode" and unit.mode == "pretrain":
        return stages.pretrain(
            unit.task,
            *args,
            pretext_file=Path(unit.pretext_file) if unit.pretext_file else None,
            reuse=unit.reuse,
            pause_at=unit.pause_at,
            deadline=deadline,
            aim_s=unit.aim_s,
            val_guess=guess,
        )
    if unit.kind == "student":
        return _student(ctx, unit, cfg, stop, deadline, pace)
    raise ValueError(f"unit {unit.id}: unknown kind {unit.kind!r}")


def _student(ctx: UnitContext, unit: Unit, cfg: ExperimentConfig, stop, deadline, pace=None):
    """The student: its ensemble's predictions attached to the data (stored once, reused while
    the members do not change), the ensemble's own validation scores (a new student only), then
    stage 2. The result carries ``ensemble``: members and scores."""
    online = _own_start_online(unit, cfg)
    init = ctx.load(*unit.init) if unit.init else None
    teachers = [init] if online else [ctx.load(r, m) for r, m in unit.teachers]  # one load
    s2 = cfg.stage2
    ensemble: dict[str, Any] = {"members": [m for _, m in unit.teachers]}
    if online:
        ensemble["stored"] = {"online": True, "scans": 0, "seconds": 0.0}
        yield Note(
            f"stage 2: the ensemble is the student's own start ({unit.init[1]}): its moving "
            "average labels the unlabelled slices from the first step, nothing to store"
        )
    elif s2.method == "semi" or (s2.stored and s2.temperature == 1.0):
        got = yield from _store_maps(ctx, unit, cfg, teachers, stop)
        if got.get("stopped"):
            return {"stopped": True, "step": 0, "name": unit.id}
        ensemble["stored"] = got
    if unit.stage == Stage.STAGE2 and len(teachers) > 1 and ctx.study.val:
        m = soft_labels.ensemble_scores(
            teachers,
            ctx.study,
            ctx.device,
            overlap=SOFT_OVERLAP,
            precision=ctx.plan.precision,
        )
        ensemble.update(mean_dice=m["mean_dice"], dice=m["dice"])
    res = yield from stages.student(
        teachers,
        ctx.study,
        cfg,
        ctx.device,
        ctx.run.checkpoint_dir,
        stop,
        init=init,
        steps=unit.steps,
        stage=unit.stage,
        deadline=deadline,
        online=online,
        **(pace or {}),
    )
    if init is not None and unit.stage == Stage.STAGE2 and not res.get("stopped"):
        res = _keep_the_better(ctx, unit, init, res)
    return {**res, "ensemble": ensemble}


def _store_maps(ctx: UnitContext, unit: Unit, cfg: ExperimentConfig, teachers: list, stop):
    """The ensemble's predictions on the training scans the student's steps will draw
    (stored once, reused while the members do not change): :func:`.soft_labels.attach`'s
    result, ``stopped`` where a stop request came first."""
    s2 = cfg.stage2
    src = {r: (ctx.run if r == ctx.run.id else ctx.ws.run(r)) for r, _ in unit.teachers}
    digests = [soft_labels.file_digest(src[r].model_path(m)) for r, m in unit.teachers]
    folder = ctx.ws.root / "cache" / "soft" if cfg.data.cache else None
    paper = s2.method == "paper"
    batch = cfg.data.batch_size if paper else max(1, cfg.data.batch_size // 2)
    count = min(
        int(ctx.plan.steps.get("soft_scans") or len(ctx.study.train)),
        soft_labels.scans_needed(ctx.study, unit.steps, batch, SOFT_MIN_SCANS),
    )
    scans = soft_labels.choose_scans(ctx.study, count, paper, cfg.seed)
    got = yield from soft_labels.attach(
        ctx.study,
        teachers,
        digests,
        ctx.device,
        folder,
        overlap=SOFT_OVERLAP,
        precision=ctx.plan.precision,
        scans=scans,
        stop=stop,
    )
    return got


def _own_start_online(unit: Unit, cfg: ExperimentConfig) -> bool:
    """Whether the student's ensemble is the model it starts from (no teacher kept), so that its
    moving average, a copy of that model at the first step, labels the unlabelled slices and
    no prediction needs storing (``stage2.own_start_online``; a new semi student only: a retrain
    keeps no moving average)."""
    return bool(
        cfg.stage2.learns_online()
        and unit.stage == Stage.STAGE2
        and unit.init
        and [list(t) for t in unit.teachers] == [list(unit.init)]
    )


def _keep_the_better(ctx: UnitContext, unit: Unit, init, res: dict) -> dict:
    """A warm-started student that ends below the model it started from (validation Dice)
    is not kept: the starting model is, and the result says so (``kept_start``), as a teacher's
    mode is chosen by the same scores."""
    run_id, name = unit.init
    src = ctx.run if run_id == ctx.run.id else ctx.ws.run(run_id)
    start = (checkpoints.read_model_meta(src.model_path(name)).get("metrics") or {}).copy()
    got = res.get("val_dice")
    if start.get("mean_dice") is None or got is None or start["mean_dice"] <= got:
        return res
    res["net"].load_state_dict(init.state_dict())
    return {**res, "metrics": start, "val_dice": start["mean_dice"],
            "kept_start": {"model": name, "student_dice": got}}  # fmt: skip


def train(
    ctx: UnitContext, unit: Unit, stop: Callable[[], bool], deadline: float | None = None
) -> Events[dict]:
    """Train one unit, save its model with its scores; yields events, returns a JSON result.

    ``deadline``: wall-clock time (``time.time()``, comparable across processes and, with
    synchronised clocks, machines) past which the unit ends where it is. A stop request returns
    ``{"stopped": True, ...}`` with the unit's checkpoint saved; a damaged resumable checkpoint
    of the unit is set aside and the unit starts again.
    """
    mono = None if deadline is None else time.monotonic() + (deadline - time.time())
    try:
        res = yield from _generator(ctx, unit, stop, mono)
    except checkpoints.ModelFileError as exc:
        bad = Path(str(exc.path))
        if ctx.run.checkpoint_dir.resolve() not in bad.resolve().parents:
            raise
        for f in (bad.with_suffix(".json"), bad.with_suffix(".safetensors")):
            f.unlink(missing_ok=True)
        yield Note(f"{exc}; {unit.model} starts again")
        res = yield from _generator(ctx, unit, stop, mono)
    except TooFewSteps as exc:  # the refusal an untimed plan could not make at the click
        raise PlanError(_refusal(ctx, exc)) from None
    if res["stopped"]:
        return {"stopped": True, "step": res.get("step"), "name": res.get("name")}
    entry = _save(ctx, unit, res)
    if res.get("ensemble"):
        entry["ensemble"] = res["ensemble"]
    return {
        "stopped": False,
        "paused": bool(res.get("paused")),
        "entry": entry,
        "val_dice": res.get("val_dice"),
        "probe": res.get("probe"),
        "steps": int(res["steps"]),
        "seconds": round(float(res["seconds"]), 2),
    }


def _refusal(ctx: UnitContext, exc: TooFewSteps) -> str:
    """The planner's refusal of the run's budget (the docks offer what fits from it), from the
    steps a unit's first window timed: the budget that would fit the plan's MIN_STEPS."""
    budget = float(ctx.cfg.budget_s)
    need = budget * MIN_STEPS / max(1, exc.fits)
    models = len(getattr(ctx.plan, "models", None) or [1])
    return (
        too_short(budget, models, exc.fits, MIN_STEPS, need)
        + f" (timed from its first steps: {exc.seconds_per_step:.2f} s a step)"
    )


def _save(ctx: UnitContext, unit: Unit, res: dict) -> dict:
    """The model file with its sidecar (architecture, preprocessing, scores), and its entry in
    the run's report."""
    net = res["net"]
    cfg = ctx.cfg
    m = res.get("metrics") or evaluate(
        net,
        ctx.study.val,
        ctx.study,
        ctx.device,
        precision=cfg.optim.precision,
        overlap=cfg.data.infer_overlap,
        hd95=True,
    )
    mid = ModelId.parse(unit.model)
    entry = {
        "dice": m["dice"],
        "mean_dice": m["mean_dice"],
        "hd95": m["hd95"],
        "steps": int(res["steps"]),
        "seconds": round(float(res["seconds"]), 2),
        "mode": mid.mode or ("joint" if unit.kind == "all_joint" else None),
        "task": mid.task or ("all" if unit.kind == "all_joint" else None),
    }
    if res.get("pretext_steps"):
        entry["pretext_steps"] = int(res["pretext_steps"])
        entry["pretext_cached"] = False  # the scheduler knows whether the run reused it
    if res.get("paused"):
        entry["halted_by"] = "successive halving"
    if res.get("ended_early"):
        entry["ended_early"] = "budget"
    if res.get("kept_start"):
        entry["kept_start"] = res["kept_start"]
    entry["postprocess"] = m.get("postprocess", "none")
    entry["raw_mean_dice"] = m.get("raw_mean_dice", m["mean_dice"])
    checkpoints.save_model(
        net,
        ctx.run.model_path(unit.model),
        {
            **stages.arch_meta(cfg, ctx.study),
            "name": unit.model,
            "metrics": entry,
            "postprocess": entry["postprocess"],
            "run": ctx.run.id,
            "seed": cfg.seed,
        },
    )
    return entry


def read_plan(run: Any) -> Plan:
    """The plan a run was trained with (``plan.json``)."""
    path = run.path / "plan.json"
    try:
        pd = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pd = None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    if not isinstance(pd, dict):
        raise ValueError(f"run {run.id} has no plan.json; it cannot be resumed")
    return Plan.from_dict(pd)


def open_study(
    ws: Any,
    the_plan: Plan,
    cfg: ExperimentConfig,
    device: Any,
    threads: int,
    progress: Callable[[int, int], None] | None = None,
    what: What = What.ALL,
):
    """The training data of a run in its plan's shape, with the plan's CPU threads set. A
    baseline run (``what``) does not read the training scans that have no labels."""
    if device.type == "cpu":
        torch.set_num_threads(threads)
    return StudyData.from_workspace(
        ws,
        the_plan.preprocessing(),
        cfg.data.patch_size,
        val_fraction=cfg.data.val_fraction,
        seed=cfg.seed,
        cache=cfg.data.cache,
        progress=progress,
        labelled_only=what == What.BASELINE,
    )


# The last run a worker process opened: (workspace folder, run id) -> its UnitContext. A
# worker of the local executor (or a Ray worker) trains several units of one run; they share
# the opened data, as the units of the inline executor do.
_OPENED: dict[tuple[str, str], UnitContext] = {}


def _context(workspace: str, run: str, threads: int) -> UnitContext:
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.workspace import Workspace

    key = (str(Path(workspace).resolve()), run)
    ctx = _OPENED.get(key)
    if ctx is None:
        ws = Workspace.open(workspace)
        r = ws.run(run)
        cfg = ExperimentConfig.from_dict(r.config)
        plan = read_plan(r)
        device = resolve_device(cfg.device)
        study = open_study(ws, plan, cfg, device, threads, what=What.parse(r.kind))
        ctx = UnitContext(ws, r, cfg, plan, study, device)
        _OPENED.clear()  # one run at a time: the data of an earlier one is let go
        _OPENED[key] = ctx
    if ctx.device.type == "cpu":
        torch.set_num_threads(threads)
    return ctx


def warm_up(workspace: str, run: str, threads: int = 1) -> None:
    """What a worker does before its first unit: import the engine, open the run's data."""
    _context(workspace, run, threads)


def unit_job(
    workspace: str,
    run: str,
    unit: dict,
    threads: int = 1,
    deadline: float | None = None,
    stop: Callable[[], bool] | None = None,
) -> Events[dict]:
    """JSON-able entry point of a unit in a worker process (local and Ray executors): the
    workspace, the run's config and plan and the prepared data (opened once per process and
    run), then :func:`train`."""
    ctx = _context(workspace, run, threads)
    result = yield from train(ctx, Unit.from_dict(unit), stop or (lambda: False), deadline)
    return result
