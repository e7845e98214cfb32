"""How many steps each unit of a run trains, and the re-budgeting that keeps a run within its
time: the models still to train get fewer steps when the machine runs slower than timed, and
the student, last, takes the time the earlier models left."""

from __future__ import annotations

from napari_mtssl import events as ev
from napari_mtssl.ids import What
from napari_mtssl.training.planning.plan import MIN_STEPS_SHORTENED, Plan
from napari_mtssl.training.running.record import RunRecord
from napari_mtssl.training.running.units import Unit

__all__ = ["STUDENT_GROWTH", "StepBudget"]

# The most the student's steps grow when the earlier models ran faster than timed.
STUDENT_GROWTH = 2.0


class StepBudget:
    """The steps of a run's units: the config's, or what the run fixed for a unit once it
    started (its learning-rate schedule depends on it) or re-budgeted."""

    def __init__(self, record: RunRecord, plan: Plan, what: What) -> None:
        self.record, self.plan, self.what = record, plan, what

    def steps(self, unit: Unit) -> int:
        """The unit's step count: remembered once it started, re-budgeted if the machine ran
        slower than timed, else the config's."""
        n = self.record.state.get("unit_steps", {}).get(unit.model)
        if n is not None:
            return int(n)
        c = self.record.cfg
        if unit.kind == "baseline":
            return c.baseline_steps
        if unit.kind == "student":
            return c.stage2.retrain_steps if self.what == What.RETRAIN_QUICK else c.stage2.steps
        if unit.kind == "mode" and unit.mode == "pretrain":
            return c.stage1.finetune_steps
        return c.stage1.joint_steps

    def student_steps(self) -> int:
        return self.steps(Unit("student", "student", "student", 0))

    def rebudget(self, remaining: list[str]) -> ev.Events[None]:
        """If the machine runs slower than timed, give the models still to train fewer steps
        so the run ends within its budget (each keeps at least MIN_STEPS_SHORTENED); the student,
        last, takes the time the earlier models left (:meth:`_student_takes_the_rest`)."""
        rec = self.record
        if not rec.cfg.budget_s or not remaining or self.plan.steps.get("fixed"):
            return
        est = self.plan.estimate_s
        left = rec.cfg.budget_s - rec.spent()
        fixed_steps = rec.state.setdefault("unit_steps", {})
        if remaining == ["student"] and "student" not in fixed_steps:
            yield from self._student_takes_the_rest(left)
            if "student" in fixed_steps:
                return
        lanes = max(1, int(self.plan.lanes or 1))  # side by side: the work shares the lanes
        need = sum(est.get(u, 0.0) / (1 if u.startswith("student") else lanes) for u in remaining)
        if need <= 0 or need <= left * 1.02:
            return
        scale = max(0.0, left * 0.95) / need
        if scale >= 1:
            return
        changed = []
        for u in remaining:
            if u in fixed_steps:
                continue
            n = self.student_steps() if u == "student" else int(self.plan.steps["seg"])
            new = max(MIN_STEPS_SHORTENED, int(n * scale))
            if new < n:
                fixed_steps[u] = new
                est[u] = round(est.get(u, 0.0) * new / n, 1)
                changed.append(f"{u} {new} instead of {n}")
        if not changed:
            return
        rec.save_state()
        yield rec.log(
            ev.Note(
                "training is running slower than timed: to end within the budget, "
                + ", ".join(changed)
                + " steps"
            )
        )

    def _student_takes_the_rest(self, left: float) -> ev.Events[None]:
        """The student is the last unit, so the time the earlier models left is its own: at the
        pace they ran (their seconds against their estimates), it gets the steps that fill the
        time left (up to ``STUDENT_GROWTH`` x its planned steps; never fewer than planned
        unless the machine ran slower, which the deadline then handles)."""
        rec = self.record
        est = self.plan.estimate_s
        done = [
            u
            for u, m in rec.models.items()
            if u in est and u != "student" and not m.get("halted_by")  # stopped short: no pace
        ]
        planned = sum(float(est[u]) for u in done)
        actual = sum(float(rec.models[u].get("seconds") or 0.0) for u in done)
        step_s = float(self.plan.timings.get("student") or 0.0)
        n = self.student_steps()
        if planned <= 0 or actual <= 0 or step_s <= 0 or n <= 0 or "student" not in est:
            return
        pace = actual / planned
        fixed = max(0.0, float(est["student"]) - n * step_s) * pace  # maps, validations
        new = int((left * 0.95 - fixed) / (step_s * pace))
        new = min(new, int(STUDENT_GROWTH * n))
        if new <= n * 1.05:
            return
        rec.state.setdefault("unit_steps", {})["student"] = new
        est["student"] = round(fixed / pace + new * step_s, 1)
        rec.save_state()
        yield rec.log(
            ev.Note(
                f"the earlier models ran at {pace:.0%} of their timed pace: the student gets "
                f"{new} steps instead of {n}, to use the {left / 60:.0f} min left"
            )
        )
