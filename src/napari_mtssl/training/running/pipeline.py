"""One training run of the method over a workspace, as a generator (METHOD.md end to end).

A run first makes its plan (:mod:`..planning.plan`: fingerprint of the data, the shape of the data and
network, the steps each model gets in the budget), saves it as ``plan.json``, prepares the scans
(cached), then trains. It writes everything into a workspace Run: ``config.json`` (the config
with every planned field filled in), ``plan.json``, ``events.jsonl``, ``metrics.json`` (the
report), ``models/<name>.safetensors`` (+ JSON sidecar) for ``baseline``, ``<task>:joint``,
``<task>:pretrain``, ``teacher:<task>`` (the selected one), ``all_joint`` and ``student``, and
``pipeline.json`` (which models are finished, the time spent so far, the halving state), so
``resume=`` goes on with the same plan and what is left of the budget. A finished run appends a
round to the workspace history with the metrics of each model.

``what``:

* ``baseline`` | ``stage1`` | ``stage2`` | ``all`` (baseline + stage 1 + stage 2),
* ``retrain-quick``: fine-tune the latest student on the current labels (corrections included)
  with the latest teachers' targets,
* ``retrain-stage2``: a new student distilled from the latest teachers with the current labels.

Stage 1 with both modes uses **successive halving**: each mode trains a share
(``stage1.halving``) of its steps, both are validated, and only the leader goes on, unless the
two are within ``stage1.halving_margin`` Dice. Label-free pre-training is **cached** in the
workspace per task, seed, data and shape, so later runs and retraining rounds reuse it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_mtssl import events as ev
from napari_mtssl._atomic import atomic_write_json
from napari_mtssl.ids import Stage, What, teacher, teachers, trained
from napari_mtssl.task_needs import workspace_summary
from napari_mtssl.tasks import task_class
from napari_mtssl.training.config import ExperimentConfig
from napari_mtssl.training.data.preprocess import VolumeCache, content_hash
from napari_mtssl.training.data.slices import no_labelled_data_message
from napari_mtssl.training.errors import UnitsFailed
from napari_mtssl.training.loop import checkpoints, stages
from napari_mtssl.training.loop.pace import watch_load
from napari_mtssl.training.planning.fingerprint import fingerprint
from napari_mtssl.training.planning.lanes import lanes_for, start_width
from napari_mtssl.training.planning.machine import usable_cpus
from napari_mtssl.training.planning.plan import Plan, PlanError
from napari_mtssl.training.planning.planner import allocate, make_plan
from napari_mtssl.training.planning.timing import time_ahead, unit_step_s
from napari_mtssl.training.prediction.inference import resolve_device
from napari_mtssl.training.running.budget import StepBudget
from napari_mtssl.training.running.executors import Executor, connect, make_executor
from napari_mtssl.training.running.halving import Stage1Decisions
from napari_mtssl.training.running.jobs import relay_status
from napari_mtssl.training.running.record import RunRecord, plan_for
from napari_mtssl.training.running.units import Unit, UnitContext, open_study, read_plan

__all__ = [
    "WHATS",
    "run_training",
    "run_training_job",
    "find_model",
    "plan_job",
    "PlanError",
    "UnitsFailed",
]

WHATS = tuple(w.value for w in What)
# Units aim to end within the budget; a unit that would still be training at budget x
# DEADLINE_SLACK, less its final validation (as last timed) and SAVE_S, ends where it is.
# The last unit of a budgeted run re-times itself while it trains (training/loop/pace.py) and may
# take up to this many times its steps when the machine runs faster than planned (a plan
# timed beside a job that then ended: 4.3x measured, benchmarks/busy).
UNIT_GROWTH = 5.0
DEADLINE_SLACK = 1.06
SAVE_S = 3.0  # saving a model and writing its scores, after its final validation


def find_model(ws: Any, name: str):
    """The newest run holding a finished model ``name`` (or None); a stopped or interrupted
    run counts for the models it finished."""
    for run in reversed(ws.runs()):
        if name in run.finished_models():
            return run
    return None


def _teachers_run(ws: Any):
    """The newest run a student can learn from: one with finished teachers, or one whose plan
    left the teachers out (``plan.teachers_skipped``: a budget too short for them), where the
    run's finished baseline was the student's ensemble."""
    for run in reversed(ws.runs()):
        done = run.finished_models()
        if teachers(done) or ("baseline" in done and _skipped_teachers(run)):
            return run
    return None


def _skipped_teachers(run: Any) -> bool:
    try:
        d = _read_json(run.path / "plan.json", None)
    except ValueError:  # a damaged plan: not a run to learn from
        return False
    return isinstance(d, dict) and bool(d.get("teachers_skipped"))


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None


def _fixed_plan(ws: Any, what: What | str) -> Plan | None:
    """Stage 2 and retraining keep the teachers' data shape (same patches, same network)."""
    if not What.parse(what).keeps_shape:
        return None
    run = _teachers_run(ws)
    if run is None:
        raise ValueError(f"{what} needs the teachers of a finished stage 1; run stage 1 first")
    d = _read_json(run.path / "plan.json", None)
    if not isinstance(d, dict):
        raise ValueError(
            f"the teachers of run {run.id} were trained by an older version without a plan; "
            "train stage 1 again"
        )
    return Plan.from_dict(d)


def import_engine() -> None:
    """What the viewer's spare worker process does while it waits for a job: importing this
    module has imported the engine and torch, the seconds a new process would spend on them.
    The first optimiser of a process also imports ``torch._dynamo`` (3 s measured on a busy
    core, during the plan's timing of a step): one is made here, so the job does not wait.
    It also keeps a history of the machine's load, which the job's plan reads instead of
    measuring it anew (1.3 s of the click's wait), and, in a thread, times the steps the job's
    plan will most likely ask for once the load settles with a core free
    (:func:`~napari_mtssl.training.planning.timing.time_ahead`; a job that arrives during such a
    timing waits for it to end and uses it)."""
    watch_load()
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    threading.Thread(target=time_ahead, name="time-ahead", daemon=True).start()


def plan_job(
    workspace: str,
    config: dict,
    what: What | str = What.ALL,
    stop: Callable[[], bool] | None = None,
) -> ev.Events[dict]:
    """JSON-able entry point for a job that only plans (the training dock's estimate)."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.workspace import Workspace

    what = What.parse(what)
    ws = Workspace.open(workspace)
    cfg = ExperimentConfig.from_dict(config)
    yield ev.Note("timing a few training steps on this machine")
    fp = fingerprint(ws)
    plan = make_plan(fp, cfg, what, interactive=True, fixed=_fixed_plan(ws, what))
    return plan.to_dict()


class _Stopped(Exception):
    """A unit stopped at the user's request; its checkpoint and the run's state are saved."""


def run_bytes(plan: Plan, cfg: ExperimentConfig, fp: Any, num_classes: int, what: What) -> int:
    """About what a run will write: every model's weights, the checkpoints of the units in
    training at once (weights, optimiser moments, moving average), and the teachers' stored
    maps (one byte per class and voxel of the scans it stores), with a margin of 25 %."""
    net = stages.new_net(cfg, num_classes)
    params = sum(p.numel() for p in net.parameters())
    models = len(plan_for(what, cfg)) or 1
    lanes = max(1, int(plan.lanes or 1))
    weights = 4 * params * (models + 4 * lanes)
    soft = 0
    if "student" in plan_for(what, cfg):
        scans = int(plan.steps.get("soft_scans") or 0)
        h, w = fp.size
        soft = scans * int(fp.slices[1]) * h * w * max(2, int(num_classes))
    return int(1.25 * (weights + soft))


def check_free_space(root: Any, need: int) -> None:
    """Refuse to start a run that the disk of ``root`` cannot hold."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return
    if free < need:
        raise ValueError(
            f"{root}: its disk has {free / 2**20:.0f} MB free and this run will write about "
            f"{need / 2**20:.0f} MB (models, checkpoints and the teachers' stored maps); free "
            "some space or choose another workspace folder"
        )


class _Run:
    """One run while it trains (one instance per ``run_training`` call): the plan of units and
    their scheduling on an executor, with the run's record (:mod:`.record`), the steps of its
    units (:mod:`.budget`) and stage 1's decisions (:mod:`.halving`) as parts of their own."""

    def __init__(self, ws, run, cfg, plan, study, device, stop, state, what: What):
        self.ws, self.run, self.cfg, self.plan = ws, run, cfg, plan
        self.study, self.device, self.stop, self.what = study, device, stop, what
        self.record = rec = RunRecord(run, cfg, state)
        self.arch = stages.arch_meta(cfg, study)
        budget = float(cfg.budget_s)
        # The hard end: every unit's final validation and saving are done by then. A unit
        # aims at the budget itself (``aim_s`` before the hard end) and re-times its steps
        # to end there with the validation it measured (training/loop/pace.py).
        self.deadline = (
            rec.t0 + max(0.0, budget * DEADLINE_SLACK - rec.elapsed0 - SAVE_S)
            if budget > 0
            else None
        )
        self.aim_s = -budget * (DEADLINE_SLACK - 1.0)
        self.teacher_run = self.student_run = None
        self.ctx = UnitContext(ws, run, cfg, plan, study, device)  # what inline units train with
        self.budget = StepBudget(rec, plan, what)
        self.stage1 = Stage1Decisions(rec, plan, what, self.budget, self.ctx.load, self.arch)

    # -- the plan of units -------------------------------------------------------------------
    def plan_units(self) -> list[Unit]:
        """What is left to train, in the order one lane trains it, with the dependencies that
        let several lanes train the rest side by side."""
        names = plan_for(self.what, self.cfg)
        units: list[Unit] = []
        if "baseline" in names and "baseline" not in self.record.models:
            units.append(
                Unit("baseline", "baseline", "baseline", 0, probe_at=self.stage1.probe_at())
            )
        if self.what.trains_teachers:
            for task in self.cfg.stage1.tasks:
                units += self._task_units(task)
            if "all_joint" in names and "all_joint" not in self.record.models:
                units.append(Unit("all_joint", "all_joint", "all_joint", 0))
        if "student" in names and "student" not in self.record.models:
            s2 = self.cfg.stage2
            member = s2.method == "semi" and s2.with_baseline  # the baseline joins the ensemble
            deps = [u.id for u in units if u.kind == "mode" or (member and u.kind == "baseline")]
            stage = Stage.RETRAIN if self.what.is_retrain else Stage.STAGE2
            units.append(Unit("student", "student", "student", 0, deps=deps, stage=stage))
        return units

    def _task_units(self, task: str) -> list[Unit]:
        modes, at = self.stage1.modes(), self.stage1.halving_at(task)
        rung = self.record.state.setdefault("halving", {}).get(task, {}).get("rung", {})
        names = {m: str(trained(task, m)) for m in modes}
        out = [
            Unit(f"{names[m]}@rung", names[m], "mode", 0, task, m, pause_at=at)
            for m in modes
            if at and names[m] not in self.record.models and m not in rung
        ]
        deps = [f"{names[m]}@rung" for m in modes] if at else []
        if at and self.stage1.against_baseline() and "baseline" not in self.record.models:
            deps.append("baseline")  # its Dice at the rung is the bar
        out += [
            Unit(names[m], names[m], "mode", 0, task, m, deps=deps)
            for m in modes
            if names[m] not in self.record.models
        ]
        return out

    def _prepare(self, unit: Unit) -> ev.Events[None]:
        """Fill in what a unit needs to know at its start: its steps, its pre-training cache,
        the student's teachers and starting point."""
        unit.steps = self.budget.steps(unit)
        self.record.state.setdefault("unit_steps", {}).setdefault(unit.model, int(unit.steps))
        if unit.kind == "mode" and unit.mode == "pretrain":
            file = self._pretext_file(unit.task)
            unit.pretext_file = None if file is None else str(file)
            unit.reuse = unit.task in self.record.state.get(
                "pretext_reuse", []
            ) + self.record.state.get("pretext_done", [])
        if unit.kind != "student":
            return
        if self.what == What.ALL:
            trun, tnames = self.run, [str(teacher(t)) for t in self.cfg.stage1.tasks]
        else:
            trun = self.teacher_run
            tnames = teachers(trun.models())
        members, why = self._members(trun, tnames)
        unit.teachers = [[trun.id, n] for n in members]
        init = self.cfg.stage2.resolved_init()
        scores = {n: self._score(trun, n) for n in members}
        if self.what == What.RETRAIN_QUICK:
            unit.init = [self.student_run.id, "student"]
        elif init == "best" and members:
            unit.init = [trun.id, max(members, key=lambda n: scores[n])]
        elif init == "best_teacher" and tnames:
            best = max(tnames, key=lambda n: self._score(trun, n))
            unit.init = [trun.id, best]
        self.record.state["teachers"] = {"run": trun.id, "models": members, "dropped": why}
        start = f"; the student starts from {unit.init[1]}" if unit.init else ""
        dropped = "".join(f"; {n} left out ({w})" for n, w in why.items())
        yield self.record.log(ev.Note(f"ensemble: {', '.join(members)}{dropped}{start}"))

    @staticmethod
    def _score(run: Any, name: str) -> float:
        try:
            meta = checkpoints.read_model_meta(run.model_path(name))
        except (OSError, ValueError):
            return 0.0
        return float(meta.get("metrics", {}).get("mean_dice") or 0.0)

    def _members(self, trun: Any, tnames: list[str]) -> tuple[list[str], dict[str, str]]:
        """The ensemble the student learns from: the selected teachers and (semi) the
        baseline of the teachers' run, less members whose validation Dice trails the best by
        more than ``stage2.member_margin`` (a weak teacher only blurs the ensemble). The
        paper's method keeps its teachers as they are."""
        s2 = self.cfg.stage2
        names = list(tnames)
        if s2.method == "paper":
            return names, {}
        if s2.with_baseline and "baseline" in trun.models() and "baseline" not in names:
            names.append("baseline")
        scores = {n: self._score(trun, n) for n in names}
        best = max(scores.values(), default=0.0)
        keep = [n for n in names if scores[n] >= best - s2.member_margin]
        why = {
            n: f"validation Dice {scores[n]:.3f}, more than {s2.member_margin:g} below the best "
            f"{best:.3f}"
            for n in names
            if n not in keep
        }
        if trun is self.run:  # teachers stopped at their rung, behind the baseline
            for task, h in self.record.state.get("halving", {}).items():
                n = str(teacher(task))
                if n in keep and h.get("trails") and not h.get("continue"):
                    keep.remove(n)
                    why[n] = (
                        f"stopped at step {self.stage1.halving_at(task)}, not ahead of the baseline "
                        f"there ({h.get('bar', 0.0):.3f})"
                    )
        return keep or names, why

    def _pretext_file(self, task: str) -> Path | None:
        if not self.cfg.stage1.cache_pretext:
            return None
        return pretext_path(self.ws, self.cfg, self.plan, task)

    def _note_pretext(self, unit: Unit) -> None:
        """Once a task's pre-training exists, a resume (or a later unit) reuses it."""
        if unit.kind != "mode" or unit.mode != "pretrain" or not unit.pretext_file:
            return
        done = self.record.state.setdefault("pretext_done", [])
        if Path(unit.pretext_file).is_file() and unit.task not in done:
            done.append(unit.task)
            self.record.save_state()

    # -- scheduling ----------------------------------------------------------------------------
    def lanes(self, units: list[Unit]) -> tuple[int, str]:
        """Units at once for the plan ``units``, and why: one Ray task per unit on Ray (or the
        config's ``units_at_once``); a budgeted run as the planner priced it (``plan.lanes``:
        side by side where that gave more steps); else :func:`.lanes.lanes_for`. Never more
        than the units that can start together."""
        c = self.cfg
        if c.executor == "ray":
            return int(c.units_at_once or max(1, len(units))), "one Ray task per unit"
        width = sum(1 for u in units if not u.deps)
        if c.budget_s > 0:
            return min(int(self.plan.lanes or 1), max(1, width)), self.plan.lanes_why
        return lanes_for(self.plan, c, width)

    def executor(self, lanes: int) -> Executor:
        threads = max(1, int(self.plan.threads) // lanes)
        if self.device.type == "cuda":  # the GPU trains; a lane's threads feed it
            threads = max(1, min(int(self.plan.threads), (usable_cpus() - 1) // lanes))
        if self.cfg.executor == "ray":
            threads = max(1, int(self.cfg.num_threads or 1))
        return make_executor(
            self.cfg.executor,
            self.ctx,
            self.stop,
            lanes=lanes,
            threads=threads,
            address=self.cfg.ray_address,
        )

    def train(self, resumed: bool) -> ev.Events[None]:
        yield self.record.log(
            ev.Start(
                self.run.id,
                self.what.value,
                str(self.device),
                plan_for(self.what, self.cfg),
                resumed,
                self.study.describe(),
            )
        )
        yield self.record.log(ev.PlanMade(self.plan.to_dict(), self.plan.describe()))
        if self.plan.teachers_skipped and not resumed:
            yield self.record.log(ev.Note(self.plan.teachers_skipped["why"]))
        for note in self.study.notes:
            yield self.record.log(ev.Note(note))
        units = self.plan_units()
        lanes, why = self.lanes(units)
        executor = self.executor(lanes)
        if lanes > 1:
            yield self.record.log(
                ev.Note(
                    f"{lanes} units at once ({executor.name} executor, "
                    f"{executor.threads} thread(s) each): {why}"
                )
            )
        try:
            yield from self.schedule(executor, units)
        finally:
            executor.close()

    def schedule(self, executor: Executor, units: list[Unit]) -> ev.Events[None]:
        """Train the plan's units on ``executor``, as many at once as it has lanes, each when
        the units it depends on are done. A failed unit does not stop the others (only those
        that depend on it); a stop request stops them all, each saving its checkpoint."""
        pending = list(units)
        running: dict[str, Unit] = {}
        failed: dict[str, Any] = {}
        stopped: list[dict] = []
        asked = False
        while pending or running:
            halt = bool(stopped) or self.stop()
            if halt and running and not asked:
                executor.stop()
                asked = True
            while not halt and executor.has_room(len(running)):
                unit = self._ready(pending, running, failed, executor.lanes)
                if unit is None:
                    break
                pending.remove(unit)
                started = yield from self._start(executor, unit, running, last=not pending)
                if started is not None:
                    running[started.id] = started
            if not running:
                break
            for _uid, event in executor.poll(0.5):
                yield self.record.log(event)
            yield from self._collect(executor, running, failed, stopped)
        yield from self._end_schedule(failed, stopped, pending)

    def _start(
        self, executor: Executor, unit: Unit, running: dict[str, Unit], last: bool
    ) -> ev.Events[Unit | None]:
        """Start ``unit`` beside ``running`` and return it as started (with its aims), or None
        for a mode the halving stopped (recorded so). The last unit (``last`` with nothing
        running: the student) gets every thread and takes what the machine's pace allows."""
        if unit.deps and unit.kind == "mode" and unit.pause_at is None:
            yield from self.stage1.decide(unit.task)  # (made already, unless interrupted)
            if unit.mode not in self.record.state["halving"][unit.task]["continue"]:
                yield from self.stage1.halted(unit.task, unit.mode)
                yield from self.stage1.maybe_select(unit.task)
                return None
        busy = {u.model for u in running.values()}
        yield from self.budget.rebudget(
            [u for u in self.plan.models if u not in self.record.models and u not in busy]
        )
        yield from self._prepare(unit)
        wall = None if self.deadline is None else time.time() + self.deadline - time.monotonic()
        alone = last and not running
        if wall is not None:
            unit = dataclasses.replace(unit, aim_s=self.aim_s)
        if alone and wall is not None:
            unit = dataclasses.replace(
                unit, grow=UNIT_GROWTH, threads_max=int(self.plan.threads_max)
            )
        executor.start(unit, wall, int(self.plan.threads) if alone else None)
        return unit

    def _collect(
        self,
        executor: Executor,
        running: dict[str, Unit],
        failed: dict[str, Any],
        stopped: list[dict],
    ) -> ev.Events[None]:
        """Take the units that ended off ``running``: each failed, stopped or completed."""
        for uid, result, error in executor.ended():
            unit = running.pop(uid)
            self._note_pretext(unit)
            if error is not None:
                failed[uid] = error
                yield self.record.log(ev.Note(f"{unit.model} failed: {error}"))
            elif result.get("stopped"):
                stopped.append(result)
            else:
                yield from self.complete(unit, result)

    def _end_schedule(
        self, failed: dict[str, Any], stopped: list[dict], pending: list[Unit]
    ) -> ev.Events[None]:
        """After the schedule: raise a unit's failure (its own error when it is the only one),
        or the stop (the stopped unit's result, or the next unit's name between two units)."""
        if failed:
            self.record.save_state()
            errors = list(failed.values())
            if len(errors) == 1 and isinstance(errors[0], BaseException):
                raise errors[0]  # inline: the unit's own error, as it was raised
            raise UnitsFailed({u: str(e) for u, e in failed.items()}, self.ws.root)
        if stopped or pending:  # pending without a failure: stopped between two units
            yield self.record.log(
                self.record.stopped(stopped[0] if stopped else {"name": pending[0].model})
            )
            raise _Stopped()

    def _ready(self, pending: list[Unit], running: dict, failed: dict, lanes: int) -> Unit | None:
        """The next unit to start: in plan order on one lane; on several, the ready unit with
        the longest chain of work behind it first (a task's pre-training mode, then the
        continuation that waits for it), so the lanes do not end with one long unit alone."""
        waiting = {u.id for u in pending} | set(running) | set(failed)
        ready = [u for u in pending if not waiting.intersection(u.deps)]
        if len(ready) < 2 or lanes == 1:
            return ready[0] if ready else None
        return max(ready, key=lambda u: self._chain_s(u, pending))

    def _cost_s(self, unit: Unit) -> float:
        """Seconds a unit trains, from the plan's timed steps (an estimate for ordering)."""
        t = {"seg": 1.0, "student": 2.0, **self.plan.timings}  # runs given in steps: untimed
        n = self.budget.steps(unit)
        if unit.pause_at is not None:
            n = unit.pause_at
        elif unit.deps and unit.kind == "mode":
            n = max(0, n - self.stage1.halving_at(unit.task))
        seg, _ = unit_step_s(unit.model, t, self.cfg)
        if unit.kind == "mode" and unit.mode == "pretrain" and not unit.deps:
            task = float(t.get(f"task:{unit.task}", t["seg"]))
            return n * seg + self.cfg.stage1.pretrain_steps * task
        return n * seg

    def _chain_s(self, unit: Unit, pending: list[Unit]) -> float:
        after = [self._cost_s(u) for u in pending if unit.id in u.deps and u.kind != "student"]
        return self._cost_s(unit) + max(after, default=0.0)

    # -- what the units' results mean ----------------------------------------------------------
    def complete(self, unit: Unit, result: dict) -> ev.Events[None]:
        rec = self.record
        entry = dict(result["entry"])
        if "ensemble" in entry:
            rec.state["ensemble"] = entry.pop("ensemble")
        if unit.kind == "mode" and unit.mode == "pretrain":
            entry["pretext_cached"] = unit.task in rec.state.get("pretext_reuse", [])
        rec.models[unit.model] = entry
        rec.save_state()
        yield rec.log(ev.ModelDone(model=unit.model, **entry))
        if result.get("probe") and unit.kind == "baseline":
            rec.state["baseline_probe"] = result["probe"]
            rec.save_state()
        if unit.pause_at is not None:  # a halving rung: kept as it stands until decided
            yield from self.stage1.at_rung(unit, result)
        elif unit.kind == "mode":
            yield from self.stage1.maybe_select(unit.task)

    def report(self) -> ev.Events[dict]:
        """The run's report (``metrics.json``) and its round in the workspace history."""
        report = {
            "run": self.run.id,
            "what": self.what.value,
            "device": str(self.device),
            "models": self.record.models,
            "selected": self.record.selected,
            "teachers": self.record.state.get("teachers"),
            "ensemble": self.record.state.get("ensemble"),
            "comparison": comparison(self.record.models, self.record.state.get("ensemble")),
            "config": self.cfg.to_dict(),
            "plan": self.plan.to_dict(),
            "budget": {
                "budget_s": self.cfg.budget_s,
                "spent_s": round(self.record.spent(), 1),
                "estimate_s": self.plan.estimate_s.get("total"),
            },
            "savings": dict(self.record.savings),
            "data": self.study.describe(),
            "seconds": round(self.record.spent(), 2),
        }
        self.run.write_metrics(report)
        rnd = self.ws.add_round(
            {
                "run": self.run.id,
                "what": self.what.value,
                "labelled_slices": self.study.summary().n_labelled_slices,
                # the corrections this round trained on, and the effort behind them
                "corrections": self.ws.corrections_in_round(self.ws.current_round),
                "metrics": {
                    k: {"mean_dice": v["mean_dice"], "hd95": v["hd95"]}
                    for k, v in self.record.models.items()
                },
            }
        )
        report["round"] = rnd
        self.run.write_metrics(report)
        self.record.save_state()
        self.run.set_status("done")
        yield self.record.log(ev.Done(self.run.id, rnd))
        return report


def comparison(
    models: dict[str, dict], ensemble: dict | None = None, alone: dict | None = None
) -> dict | None:
    """How the student compared with the baseline of the same run, in one line (the report,
    the CLI and the training dock show it), with the best teacher and the ensemble beside it,
    and, where a benchmark measured it, ``alone``: the baseline trained alone for the same
    budget (``{"mean_dice": d, "budget": "20 min"}``). None when the run trained no student or
    no baseline."""
    st, base = models.get("student"), models.get("baseline")
    if not st or not base or st.get("mean_dice") is None or base.get("mean_dice") is None:
        return None
    s, b = float(st["mean_dice"]), float(base["mean_dice"])
    teachers = {
        k: float(v["mean_dice"])
        for k, v in models.items()
        if k.startswith("teacher:") and v.get("mean_dice") is not None
    }
    out: dict[str, Any] = {"student": s, "baseline": b, "delta": round(s - b, 4)}
    kept = st.get("kept_start")
    verdict = "better than" if s > b + 0.005 else "worse than" if s < b - 0.005 else "level with"
    line = f"student {s:.3f} mean Dice, {verdict} the baseline of this run ({b:.3f}, {s - b:+.3f})"
    if teachers:
        best = max(teachers, key=teachers.__getitem__)
        out["best_teacher"] = {"model": best, "mean_dice": teachers[best]}
        line += f"; best teacher {best.removeprefix('teacher:')} {teachers[best]:.3f}"
    if ensemble and ensemble.get("mean_dice") is not None:
        out["ensemble"] = float(ensemble["mean_dice"])
        line += f"; ensemble {float(ensemble['mean_dice']):.3f}"
    if alone and alone.get("mean_dice") is not None:
        a = float(alone["mean_dice"])
        out["alone"] = {**alone, "mean_dice": a, "delta": round(s - a, 4)}
        line += (
            f"; the baseline trained alone for the same {alone.get('budget') or 'budget'}: "
            f"{a:.3f} ({s - a:+.3f})"
        )
    if kept:
        out["kept_start"] = kept
        line += (
            f" (stage 2 ended at {float(kept['student_dice']):.3f}, below its start "
            f"{kept['model']}: that model is kept as the student)"
        )
    out["line"] = line
    return out


def pretext_key(ws: Any, cfg: ExperimentConfig, plan: Plan, task: str) -> str:
    """What a task's pre-training depends on: the data it sees (the training scans, and their
    labels for tasks that use labels), the task and its settings, the seed, the shape of the
    data and the network, and the optimiser settings. Not the number of steps: an entry records
    its own, and a run reuses it only when it has at least half the steps the run would train
    (:func:`reusable_pretext`)."""
    sids = ws.scan_ids("train")
    scans = sorted(ws.record(s).sha256 for s in sids)
    labels = None
    if task_class(task).needs_labels:
        labels = []
        for s in sids:
            zs = ws.labelled_slices(s)
            if zs:
                labels.append(content_hash(ws.labels(s)[zs], np.asarray(zs, np.int64)))
    return VolumeCache.key(
        "pretext",
        task,
        cfg.stage1.task_overrides.get(task, {}),
        cfg.seed,
        plan.preprocessing().to_dict(),
        cfg.data.patch_size or plan.patch,
        cfg.model.width or plan.width,
        cfg.model.depth or plan.depth,
        cfg.model.norm,
        cfg.model.dropout,
        cfg.model.binary_sigmoid,
        int(ws.num_classes),
        cfg.data.task_batch_size or cfg.data.batch_size or plan.batch_size,
        cfg.data.use_unlabelled,
        cfg.optim.lr,
        cfg.optim.weight_decay,
        plan.precision,
        scans,
        labels,
    )[:24]


def pretext_path(ws: Any, cfg: ExperimentConfig, plan: Plan, task: str) -> Path:
    return ws.root / "cache" / "pretext" / f"{task}-{pretext_key(ws, cfg, plan, task)}.safetensors"


def reusable_pretext(ws: Any, cfg: ExperimentConfig, plan: Plan, task: str, want: int) -> int:
    """Steps of the cached pre-training of ``task`` if a run wanting ``want`` steps should
    reuse it (it has at least half of them), else 0."""
    if not cfg.stage1.cache_pretext:
        return 0
    path = pretext_path(ws, cfg, plan, task)
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return 0
    got = int(meta.get("pretext_steps", 0)) if isinstance(meta, dict) else 0
    return got if path.is_file() and got >= 0.5 * want else 0


def _open_resumed(ws: Any, resume: str, what: What, status: StatusFn):
    """(run, config, plan, study, state) of a stopped or interrupted run, as it was planned."""
    run = ws.run(resume)
    if run.kind != what:
        raise ValueError(f"run {resume} trained {run.kind!r}, not {what.value!r}")
    if run.status == "done":
        raise ValueError(f"run {resume} has finished; there is nothing to resume")
    if run.status == "running":
        owner = run.status_info()
        raise ValueError(
            f"run {resume} is still running (process {owner.get('pid')} on "
            f"{owner.get('host')}); stop it first"
        )
    state = _run_state(run)
    the_plan = read_plan(run)
    cfg = ExperimentConfig.from_dict(run.config)
    device = resolve_device(cfg.device)
    study = open_study(
        ws,
        the_plan,
        cfg,
        device,
        cfg.num_threads or the_plan.threads,
        lambda i, n: status(f"resuming: reading scan {i + 1} of {n}", i, n),
        what=what,  # the run's kind
    )
    run.set_status("running")
    return run, cfg, the_plan, study, state


def _damaged(run: Any, part: str, path: Path, why: str) -> ValueError:
    return ValueError(
        f"run {run.id}: {part} {path} is damaged ({why}); the run cannot go on from where it "
        f"stopped. Start a new run with the same settings and budget (napari-mtssl train "
        f"... --what {run.kind}); the models this run had saved stay in {run.path / 'models'}"
    )


def _run_state(run: Any) -> dict:
    """A stopped run's ``pipeline.json`` (its finished models, time spent, halving state)."""
    path = run.path / "pipeline.json"
    try:
        state = _read_json(path, {})
    except ValueError as exc:
        why = str(exc).split("cannot read (", 1)[-1]
        why = why[:-1] if why.endswith(")") else why
        raise _damaged(run, "its state file", path, why) from None
    if not isinstance(state, dict) or not isinstance(state.get("models", {}), dict):
        raise _damaged(run, "its state file", path, "not the state of a run")
    return state


StatusFn = Callable[[str, int, int], None]


def _with_status(fn: Callable[..., Any], *args: Any) -> ev.Events[Any]:
    """Run ``fn(*args, status)`` in a thread and yield the status events it reports as they
    come (``status(message, done, total)``); return its result or raise its error. A run's
    preparation (reading the scans, timing steps) takes seconds to minutes: the viewer and
    the terminal show where it stands meanwhile, not one still line."""
    threads: list[int] = []

    def work(status: StatusFn) -> Any:
        result = fn(*args, status)
        threads.append(torch.get_num_threads())
        return result

    result = yield from relay_status(work)
    # torch's CPU threads are a setting of the thread that sets them (OpenMP): the plan's
    # threads, set while the data were prepared, must hold where the run trains too
    torch.set_num_threads(threads[0])
    return result


def _start_new(
    ws: Any,
    config: ExperimentConfig,
    what: What,
    plan: Plan | dict | None,
    interactive: bool,
    t_start: float,
    status: StatusFn,
):
    """Plan a new run (fingerprint, shape, data preparation, steps in the budget), create its
    folder and save its plan; returns (run, config, plan, study, state). ``status(message,
    done, total)`` says where it stands: the records, the timing, each scan, the budget."""
    total = len(ws.scan_ids("train")) + 3  # validation scans: at the first validation pass
    status("planning: reading the study's records", 0, total)
    cfg = ExperimentConfig.from_dict(config.to_dict())  # validated private copy
    device = resolve_device(cfg.device)
    if what.trains_teachers:  # from the records alone, before any scan is read
        if not cfg.stage1.tasks:
            raise ValueError("stage 1 needs at least one auxiliary task (stage1.tasks is empty)")

        summary = workspace_summary(ws)
        if summary.n_labelled_slices == 0:  # the first thing to fix, whatever the tasks
            raise ValueError(no_labelled_data_message())
        stages.require_tasks(summary, cfg.stage1.tasks, cfg)
    fp = fingerprint(ws)
    if fp.labelled_slices == 0:
        raise ValueError(no_labelled_data_message())
    fixed = _fixed_plan(ws, what)
    if fixed is not None:  # the student starts from a stored model: the network's shape is its
        cfg = ExperimentConfig.from_dict(cfg.to_dict())
        cfg.data.patch_size, cfg.model.width = fixed.patch, fixed.width
        cfg.model.depth = fixed.depth
    if plan is not None and fixed is None:
        fixed = plan if isinstance(plan, Plan) else Plan.from_dict(plan)
    status("planning: timing a few training steps on this machine", 1, total)
    the_plan = make_plan(
        fp,
        cfg,
        what,
        device=device,
        interactive=interactive,
        fixed=fixed,
        probe=True,
        allocate_steps=False,
        quick_start=True,  # a short CPU baseline starts untimed (.planning.shape.shape_plan)
    )
    shaped = the_plan.apply(cfg)
    counted = {"total": total}  # the scans read: fewer for a baseline (labelled ones only)

    def prepared(i: int, n: int) -> None:
        counted["total"] = n + 3
        status(f"planning: reading and preparing scan {i + 1} of {n}", 2 + i, n + 3)

    study = open_study(ws, the_plan, shaped, device, shaped.num_threads, prepared, what=what)
    total = counted["total"]
    status("planning: dividing the budget between the models", total - 1, total)
    if not study.labelled_slices():
        raise ValueError(no_labelled_data_message())
    if what.trains_teachers:
        stages.require_tasks(study.summary(), cfg.stage1.tasks, shaped)
    state = {}
    spent = time.monotonic() - t_start
    lanes = lanes_for(the_plan, shaped, start_width(what, shaped))[0] if cfg.budget_s > 0 else 1
    if cfg.budget_s > 0:
        allocate(the_plan, shaped, what, fp, spent_s=spent, lanes=lanes)
    reuse = {}
    if what.trains_teachers and cfg.stage1.modes != "joint":
        want = the_plan.apply(cfg).stage1.pretrain_steps
        for t in cfg.stage1.tasks:
            got = reusable_pretext(ws, shaped, the_plan, t, want)
            if got:
                reuse[t] = got
    if reuse and cfg.budget_s > 0:  # cached pre-training is free: the others get its time
        allocate(the_plan, shaped, what, fp, spent_s=spent, cached_pretext=list(reuse), lanes=lanes)
    state["pretext_reuse"] = sorted(reuse)
    cfg = the_plan.apply(cfg)
    check_free_space(ws.root, run_bytes(the_plan, cfg, fp, study.num_classes, what))
    run = ws.new_run(what.value, cfg.to_dict())
    atomic_write_json(run.path / "plan.json", the_plan.to_dict())
    return run, cfg, the_plan, study, state


def _previous_runs(ws: Any, what: What, cfg: ExperimentConfig) -> tuple[Any, Any]:
    """(teachers' run, student's run) a run of ``what`` builds on; a clear error if missing."""
    teacher_run = student_run = None
    if what.keeps_shape:
        teacher_run = _teachers_run(ws)
        if teacher_run is None:
            raise ValueError(f"{what} needs the teachers of a finished stage 1; run stage 1 first")
        s2 = cfg.stage2
        if not teachers(teacher_run.models()) and (s2.method == "paper" or not s2.with_baseline):
            raise ValueError(
                f"run {teacher_run.id} trained no teacher (its budget was too short for them) "
                "and its student learnt from its baseline; "
                + (
                    "the paper's stage 2 distils teachers only"
                    if s2.method == "paper"
                    else "stage2.with_baseline is off, so that baseline cannot be the ensemble"
                )
                + ": train stage 1 (or everything with a longer budget) first"
            )
        if what == What.RETRAIN_QUICK:
            student_run = find_model(ws, "student")
            if student_run is None:
                raise ValueError("retrain-quick needs a trained student; run stage 2 first")
    return teacher_run, student_run


def run_training(
    workspace: Any,
    config: ExperimentConfig,
    what: What | str = What.ALL,
    *,
    stop: Callable[[], bool] | None = None,
    resume: str | None = None,
    plan: Plan | dict | None = None,
    interactive: bool = False,
) -> ev.Events[dict]:
    """Train ``what`` on the workspace's current labels; yields events, returns the report.

    ``plan``: a plan made beforehand (the dock's estimate) whose shape is kept; its steps are
    planned again once the data are prepared. ``interactive``: the job shares the machine with
    a viewer (thread policy). ``resume``: a stopped run's id; it goes on with its own plan and
    what is left of its budget.
    """
    what = What.parse(what)  # ValueError naming the choices
    t_start = time.monotonic()
    teacher_run, student_run = _previous_runs(workspace, what, config)
    if config.executor == "ray" and not resume:  # an unreachable cluster: say so before training
        connect(config.ray_address)
    # The first event comes at once (the docks and the CLI show activity while the data are
    # read, the plan is made and a few steps are timed: seconds, longer on a first run); a
    # transient status: the CLI shows it on a terminal only, the docks in their line.
    yield ev.Status(
        "resuming: reading the data"
        if resume
        else "planning: reading the data and timing a few steps on this machine"
    )
    if resume:
        opened = yield from _with_status(_open_resumed, workspace, resume, what)
    else:
        opened = yield from _with_status(
            _start_new, workspace, config, what, plan, interactive, t_start
        )
    run, cfg, the_plan, study, state = opened
    # The budget counts from the call: planning and preparing the data are part of the run.
    state["elapsed_s"] = float(state.get("elapsed_s", 0.0)) + time.monotonic() - t_start
    device = resolve_device(cfg.device)
    r = _Run(workspace, run, cfg, the_plan, study, device, stop or (lambda: False), state, what)
    r.teacher_run, r.student_run = teacher_run, student_run
    try:
        yield from r.train(resumed=bool(resume))
    except _Stopped:
        return {"stopped": True, "run": run.id}
    except BaseException as exc:
        # GeneratorExit: the consumer dropped us (a job was killed): leave a resumable state.
        status = "stopped" if isinstance(exc, GeneratorExit) else "failed"
        try:
            r.record.save_state()
            run.set_status(status, error=str(exc) or type(exc).__name__)
        finally:
            run.let_go()  # even where a full disk kept the status from being written
        raise
    return (yield from r.report())


def job_threads(cpus: int | None = None) -> int:
    """CPU threads for a training job that shares the machine with the viewer that started it.

    One core is left to napari, so the viewer stays responsive. It matters for speed too:
    torch's OpenMP threads busy-wait for each other, so a job using every core next to other
    busy processes slows down many times over. Measured on the 2-core development machine with
    three other busy processes: a width-8 U-Net step took 0.07-0.12 s with one thread and
    0.7-2.9 s with two.
    """
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus - 1)


def run_training_job(
    workspace: str,
    config: dict,
    what: What | str = What.ALL,
    stop: Callable[[], bool] | None = None,
    resume: str | None = None,
    plan: dict | None = None,
) -> ev.Events[dict]:
    """JSON-able entry point for the job process (``JobHandle`` target): a job started from
    napari leaves one core to the viewer (its thread policy, ``interactive``).

    It runs at the viewer's own priority. Lowered (``nice`` +4, until 8 December), it got
    25-37 % of a core beside two busy processes: its first training step came 2.8-3.3 s after
    the click instead of 1.7-2.0 s, and it trained 92-97 steps in its first minute instead of
    172-173, while the viewer's stalls during training were the same (p99 4 ms, max 5-7 ms;
    docs/benchmarks.md). The core the job leaves free is what keeps napari smooth."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.workspace import Workspace

    # at once: opening a large study's workspace takes a moment on a busy machine
    yield ev.Status("starting: opening the workspace")
    ws = Workspace.open(workspace)
    cfg = ExperimentConfig.from_dict(config)
    report = yield from run_training(
        ws, cfg, what, stop=stop, resume=resume, plan=plan, interactive=True
    )
    return report
