"""What a run has recorded while it trains: its state in ``pipeline.json`` (the finished
models, the steps each unit keeps, the halving, the time spent) and its events in
``events.jsonl``. The run's budget, its stage-1 decisions and its scheduler all read and write
the run through one :class:`RunRecord`."""

from __future__ import annotations

import time
from typing import Any

from napari_mtssl import events as ev
from napari_mtssl._atomic import atomic_write_json
from napari_mtssl.ids import ModelId, What, teacher
from napari_mtssl.training.config import ExperimentConfig
from napari_mtssl.training.planning.plan import model_units

__all__ = ["RunRecord", "plan_for"]


def plan_for(what: What, cfg: ExperimentConfig) -> list[str]:
    """The model names a run of ``what`` produces, in training order: the models the budget is
    shared by (:func:`.plan.model_units`), with each task's selected teacher after its modes."""
    names: list[str] = []
    for unit in model_units(what, cfg):
        names.append(unit)
        last_mode = "pretrain" if cfg.stage1.modes in ("pretrain", "both", "auto") else "joint"
        mid = ModelId.parse(unit)
        if mid.mode == last_mode:
            names.append(str(teacher(mid.task)))
    return names


def _log_step(event: ev.Progress) -> bool:
    total, step = max(1, event.total), event.step
    return step == total or step % max(1, total // 20) == 0


class RunRecord:
    """A run's state (``state``, saved as ``pipeline.json``), its clock and its event log.

    ``models``: the finished models' scores; ``selected``: each task's chosen mode;
    ``savings``: the seconds halving and the pre-training cache saved."""

    def __init__(self, run: Any, cfg: ExperimentConfig, state: dict) -> None:
        self.run, self.cfg, self.state = run, cfg, state
        self.models: dict[str, dict] = state.setdefault("models", {})
        self.selected: dict[str, dict] = state.setdefault("selected", {})
        self.savings: dict[str, float] = state.setdefault(
            "savings", {"halving_s": 0.0, "pretext_cache_s": 0.0}
        )
        self.t0 = time.monotonic()
        self.elapsed0 = float(state.get("elapsed_s", 0.0))

    def spent(self) -> float:
        """Seconds of the budget spent, earlier sessions of a resumed run included."""
        return self.elapsed0 + time.monotonic() - self.t0

    def save_state(self) -> None:
        self.state["elapsed_s"] = round(self.spent(), 2)
        atomic_write_json(self.run.path / "pipeline.json", self.state)

    def log(self, event: ev.Event) -> ev.Event:
        """The event, its JSON form kept in the run's events.jsonl (progress: every 5 %, with
        the run's time)."""
        if isinstance(event, ev.Progress):
            event.run_elapsed_s = round(self.spent(), 1)
            event.run_budget_s = self.cfg.budget_s or None
            if not _log_step(event):
                return event
        self.run.append_event(ev.wire(event))
        return event

    def stopped(self, res: dict) -> ev.Stopped:
        self.save_state()
        self.run.set_status("stopped", step=res.get("step"), unit=res.get("name"))
        return ev.Stopped(self.run.id, res.get("name"), res.get("step"))
