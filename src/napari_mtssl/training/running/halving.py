"""Stage 1's decisions while a run trains: successive halving at each task's rung (of two
modes only the leader goes on, unless the two are close), the run's baseline as the bar a
teacher must lead there, and the choice of each task's teacher once its modes are done."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari_mtssl import events as ev
from napari_mtssl.ids import What, teacher, trained
from napari_mtssl.training.loop import checkpoints, stages
from napari_mtssl.training.planning.plan import Plan
from napari_mtssl.training.running.budget import StepBudget
from napari_mtssl.training.running.record import RunRecord, plan_for
from napari_mtssl.training.running.units import Unit

__all__ = ["Stage1Decisions"]


class Stage1Decisions:
    """Where each task's modes are validated and what follows from their scores.

    ``load(run_id, model)``: a trained model's weights (to save the selected teacher);
    ``arch``: the network's description saved beside it."""

    def __init__(
        self,
        record: RunRecord,
        plan: Plan,
        what: What,
        budget: StepBudget,
        load: Callable[[str, str], Any],
        arch: dict,
    ) -> None:
        self.record, self.plan, self.what, self.budget = record, plan, what, budget
        self.load, self.arch = load, arch
        self.cfg = record.cfg

    # -- where the rungs are -----------------------------------------------------------------
    def modes(self) -> list[str]:
        two = ["joint", "pretrain"]
        return {"joint": ["joint"], "pretrain": ["pretrain"], "both": two, "auto": two}[
            self.cfg.stage1.modes
        ]

    def against_baseline(self) -> bool:
        """Whether teachers are held against the run's baseline at their rung: a run that
        trains both, for a semi-supervised student (the paper's keeps its teachers as they are)."""
        c = self.cfg
        return (
            c.stage1.baseline_rung > 0
            and self.what == What.ALL
            and c.stage2.method == "semi"
            and "baseline" in plan_for(self.what, c)
        )

    def halving_at(self, task: str) -> int:
        """The rung of ``task``: the step where its modes are validated and decided on
        (successive halving between two modes, the run's baseline as the bar); 0: none, every
        mode trains fully."""
        full = self.budget.steps(Unit("", str(trained(task, "joint")), "mode", 0, task, "joint"))
        at = int(self.plan.steps.get("halving_at") or 0) if len(self.modes()) == 2 else 0
        if not at and self.against_baseline():
            at = int(round(self.cfg.stage1.baseline_rung * full))
        return at if at and at < full else 0

    def probe_at(self) -> int | None:
        """The step where the baseline is validated as the teachers' bar (their rung)."""
        tasks = self.cfg.stage1.tasks
        if not self.against_baseline() or not tasks:
            return None
        return self.halving_at(tasks[0]) or None  # every task's rung is the same step

    def bar(self, at: int) -> float | None:
        """The baseline's validation Dice at step ``at`` (None: not known)."""
        probe = self.record.state.get("baseline_probe") or {}
        if not self.against_baseline() or int(probe.get("step") or -1) != at:
            return None
        return probe.get("dice")

    # -- what the scores mean ----------------------------------------------------------------
    def at_rung(self, unit: Unit, result: dict) -> ev.Events[None]:
        """A mode paused at its rung: kept as it stands until decided; decided once every
        mode of its task (and the baseline, when it is the bar) has been validated there."""
        rec = self.record
        halving = rec.state["halving"].setdefault(unit.task, {})
        halving.setdefault("rung", {})[unit.mode] = {
            "dice": result.get("val_dice"),
            "steps": int(result["steps"]),
            "seconds": result["seconds"],
        }
        rec.models.pop(unit.model)
        halving.setdefault("provisional", {})[unit.mode] = True
        rec.save_state()
        waits = self.against_baseline() and "baseline" not in rec.models
        if len(halving["rung"]) == len(self.modes()) and not waits:
            yield from self.decide(unit.task)

    def decide(self, task: str) -> ev.Events[None]:
        """At the rung: of two modes only the leader goes on, unless the two are close; a
        mode whose Dice does not lead the run's baseline at the same step by at least
        ``stage1.baseline_lead`` stops there (its time goes to the student)."""
        rec = self.record
        halving, s1, modes = rec.state["halving"][task], self.cfg.stage1, self.modes()
        if "continue" in halving:
            return
        at = self.halving_at(task)
        d = {m: halving["rung"][m]["dice"] or 0.0 for m in modes}
        lead = max(modes, key=lambda m: (d[m], m == "joint"))
        why = []
        go = list(modes)
        if len(modes) == 2 and self.plan.steps.get("halving_at"):
            gap = abs(d["joint"] - d["pretrain"])
            close = gap <= s1.halving_margin
            go = list(modes) if close else [lead]
            why.append(
                f"within {s1.halving_margin:g} Dice: both go on"
                if close
                else f"{lead} leads by {gap:.3f}"
            )
        bar = self.bar(at)
        if bar is not None:
            trail = [m for m in go if d[m] < bar + s1.baseline_lead]
            go = [m for m in go if m not in trail]
            halving["bar"] = bar
            need = f"{bar:.3f} at step {at}, {s1.baseline_lead:+g} wanted"
            if trail:
                halving["trails"] = trail
                why.append(
                    f"{', '.join(trail)} not ahead of the baseline ({need}): stopped, the "
                    "student gets the time"
                )
            else:
                why.append(f"ahead of the baseline ({need})")
        halving["continue"] = go
        rec.save_state()
        yield rec.log(ev.Halving(task, at, d, go, "; ".join(why)))

    def halted(self, task: str, mode: str) -> ev.Events[None]:
        """The losing mode keeps the model and scores it had at the halving point."""
        rec = self.record
        name = str(trained(task, mode))
        meta = checkpoints.read_model_meta(rec.run.model_path(name))
        entry = dict(meta["metrics"])
        if mode in rec.state["halving"][task].get("trails", []):
            entry["halted_by"] = "not ahead of the baseline"
        rec.models[name] = entry
        checkpoints.remove_state(rec.run.checkpoint_dir, name)
        n = self.budget.steps(Unit("", name, "mode", 0, task, mode))
        key = "seg" if mode == "pretrain" else f"task:{task}"
        per = self.plan.timings.get("seg", 0.0) + (
            self.plan.timings.get(key, 0.0) if mode == "joint" else 0.0
        )
        saved = max(0, n - int(entry["steps"])) * per
        rec.savings["halving_s"] = round(rec.savings["halving_s"] + saved, 1)
        rec.save_state()
        yield rec.log(
            ev.Note(
                f"{name} stopped at step {entry['steps']} of {n} "
                f"({entry.get('halted_by') or 'successive halving'}), saving about {saved:.0f} s"
            )
        )

    def maybe_select(self, task: str) -> ev.Events[None]:
        """Once every mode of ``task`` is done: its teacher (:meth:`select`)."""
        modes = self.modes()
        done = all(str(trained(task, m)) in self.record.models for m in modes)
        if done and str(teacher(task)) not in self.record.models:
            yield from self.select(task, modes)

    def select(self, task: str, modes: list[str]) -> ev.Events[None]:
        """The task's teacher: its better mode by validation Dice, saved as ``teacher:<task>``."""
        rec = self.record
        models = rec.models
        scores = {m: models[str(trained(task, m))]["mean_dice"] for m in modes}
        mode = stages.select_mode(scores)
        src = str(trained(task, mode))
        checkpoints.save_model(
            self.load(rec.run.id, src),
            rec.run.model_path(str(teacher(task))),
            {
                **self.arch,
                "name": str(teacher(task)),
                "selected_from": src,
                "metrics": models[src],
                "postprocess": models[src].get("postprocess", "none"),
                "run": rec.run.id,
                "seed": self.cfg.seed,
            },
        )
        models[str(teacher(task))] = {**models[src], "mode": mode}
        rung = rec.state.get("halving", {}).get(task, {})
        rec.selected[task] = {
            "mode": mode,
            "joint": scores.get("joint"),
            "pretrain": scores.get("pretrain"),
            "steps": {m: models[str(trained(task, m))]["steps"] for m in modes},
        }
        if rung.get("rung"):
            rec.selected[task]["halving"] = {
                "at_steps": self.halving_at(task),
                "dice": {m: r["dice"] for m, r in rung["rung"].items()},
                "continued": rung.get("continue"),
                "baseline": rung.get("bar"),
            }
        pre = models.get(str(trained(task, "pretrain")), {})
        if pre.get("pretext_cached"):
            per = self.plan.timings.get(f"task:{task}", 0.0)
            rec.savings["pretext_cache_s"] = round(
                rec.savings["pretext_cache_s"] + per * int(pre.get("pretext_steps", 0)), 1
            )
        rec.save_state()
        yield rec.log(ev.Selected(task=task, **rec.selected[task]))
