"""The correction loop, simulated: which slices should a person correct, and what each buys.

A *simulated annotator* works on a labelled dataset. It starts, like a user, from ``L``
labelled training patients and the models trained on them (``initial/``: baseline, teachers,
student). Each round, a strategy (:mod:`napari_mtssl.training.prediction.ranking`) picks ``k`` slices
among the training slices nobody labelled; the annotator replaces the student's mask there by
the dataset's reference mask, through :func:`napari_mtssl.api.accept_correction`, as a person's
correction (status ``corrected``, provenance "simulated annotator, round r"); then the student
is retrained (the dock's quick retrain; a full stage 2 at the rounds asked for) and scored on
the validation patients. Each strategy works in its own copy of the initial workspace.

Layout of ``out``::

    simulate.json        the settings (a rerun with other settings is refused)
    initial/             the workspace with L labelled patients and its first models
    reference_L7/        baseline with 7 labelled patients and the initial baseline's steps
    <strategy>/          a copy of initial/ that the strategy corrects; state.json: its rounds
    results.json, report.md, dice_vs_corrected.png

A stopped simulation resumes at its last finished round: the slices of an unfinished round
are kept in ``state.json`` and only those still unlabelled are written again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_mtssl import active, api, events
from napari_mtssl._atomic import atomic_write_json, atomic_write_text
from napari_mtssl.events import Events
from napari_mtssl.ids import What
from napari_mtssl.training.prediction.ranking import STRATEGIES, check_strategy, describe, rank

__all__ = ["Settings", "simulate", "write_report", "annotator_name", "CHOICES", "CONTROL"]

STAGE2_WHEN = ("last", "every", "none")
# The control: the same retraining rounds with no correction. It tells how much of a strategy's
# gain is the extra training rather than the corrected slices.
CONTROL = "none"
CHOICES = (*STRATEGIES, CONTROL)


def annotator_name(strategy: str, rnd: int) -> str:
    return f"simulated annotator, round {rnd} ({strategy})"


@dataclass
class Settings:
    data: str
    out: str
    strategies: list[str] = field(default_factory=lambda: list(CHOICES))
    labelled: int = 3
    per_round: int = 10
    rounds: int = 5
    budget: str = "20m"  # the initial models (baseline, teachers, student)
    # The correction dock's shares of a 20-minute budget: quick retrain max(3 min, 1/6), a new
    # student 1/3 (widgets/correct.py RETRAIN_SHARE).
    retrain_budget: str = "3m"  # each quick retrain
    stage2: str = "last"  # a full stage 2 after: the last round, every round, never
    stage2_budget: str = "7m"
    tasks: str = "sdm,inpaint"
    seed: int = 0
    reference: int = 7  # the baseline with this many labelled patients; 0: none
    threads: int = 0  # torch CPU threads; 0: the plan's
    profile: str = "quick"  # "tiny" for tests: fixed small step counts, budgets ignored
    initial: str | None = None  # a workspace already trained ("all") on this start, copied

    def check(self) -> Settings:
        for s in self.strategies:
            if s != CONTROL:
                check_strategy(s)
        if not self.strategies:
            raise ValueError("give at least one strategy")
        if self.stage2 not in STAGE2_WHEN:
            raise ValueError(f"stage2 must be one of {', '.join(STAGE2_WHEN)}, got {self.stage2!r}")
        for name in ("labelled", "per_round"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if int(self.rounds) < 0:  # 0: the initial models and the reference only
            raise ValueError(f"rounds must be at least 0, got {self.rounds}")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"a strategy is named twice: {', '.join(self.strategies)}")
        return self

    # What makes two simulations comparable: a rerun may add strategies or rounds only.
    def key(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("out", "strategies", "rounds", "threads", "initial"):
            d.pop(k)
        return d


def _config(s: Settings, budget: str, **extra: Any):
    kw: dict[str, Any] = {"seed": s.seed, "tasks": s.tasks, **extra}
    if s.threads:
        kw["num_threads"] = s.threads
    if s.profile == "tiny":
        return api.make_config("tiny", **kw)
    return api.make_config(s.profile, budget=budget, **kw)


def _train(
    ws: Any,
    cfg: Any,
    what: What,
    stop: Callable[[], bool] | None,
    resume: str | None = None,
) -> Events[Any]:
    """Run training to its end, relaying its events; the run's report, or None when it was
    stopped."""
    report = yield from api.train(ws, cfg, what, stop=stop, resume=resume)
    if not report or report.get("stopped"):
        return None
    return report


def _finished_or_train(ws: Any, what: What, cfg: Any, sim: _Simulation) -> Events[Any]:
    """The report of the workspace's finished ``what`` run; else an unfinished one resumed;
    else a new one."""
    done = ws.latest_run(what)
    if done is not None:
        return done.metrics()
    unfinished = ws.latest_run(what, status=None)
    resume = unfinished.id if unfinished is not None else None
    return (yield from _train(ws, cfg, what, sim.stop, resume=resume))


def _score(report: dict, model: str = "student") -> dict[str, Any]:
    m = report["models"][model]
    return {
        "run": report["run"],
        "mean_dice": m["mean_dice"],
        "dice": m.get("dice"),
        "steps": m.get("steps"),
        "seconds": m.get("seconds"),
    }


def _copy_workspace(src: Path, dst: Path) -> None:
    """A copy of a workspace folder (scans referenced by path stay where they are), made
    under a temporary name and renamed, so a half copy is never taken for a workspace."""
    tmp = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.lock", ".*.lock.*"))
    tmp.rename(dst)


def _note(message: str, simulate: str | None = None) -> events.SimulateNote:
    """A line from the simulator itself (training's own notes are relayed as they are)."""
    return events.SimulateNote(message, simulate)


class _Simulation:
    def __init__(self, s: Settings, stop: Callable[[], bool] | None):
        self.s, self.stop = s, stop
        self.out = Path(s.out)
        self._truth: dict[str, np.ndarray] | None = None
        # The teachers do not change while the student is retrained: their disagreement is
        # computed once per process.
        self._teacher_scores: dict[str, np.ndarray] | None = None

    def stopped(self) -> bool:
        return bool(self.stop and self.stop())

    # -- the settings file -----------------------------------------------------------------
    def check_settings(self) -> None:
        file = self.out / "simulate.json"
        if file.is_file():
            old = json.loads(file.read_text())
            if old.get("key") != self.s.key():
                diff = sorted(k for k, v in self.s.key().items() if old.get("key", {}).get(k) != v)
                raise ValueError(
                    f"{self.out}: holds a simulation with other settings ({', '.join(diff)}); "
                    "choose another --out, or the same settings to go on with it"
                )
        elif self.out.exists() and any(self.out.iterdir()):
            raise ValueError(
                f"{self.out}: exists and is not a simulation folder; choose an empty or new --out"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(file, {"key": self.s.key(), "settings": asdict(self.s)})

    # -- the initial models and the reference ------------------------------------------------
    def initial(self) -> Events[Any]:
        folder = self.out / "initial"
        if self.s.initial and not (folder / "workspace.json").is_file():
            src = api.open_workspace(self.s.initial)
            if src.latest_run(What.ALL) is None:
                raise ValueError(f"{self.s.initial}: has no finished run of the whole method")
            _copy_workspace(src.root, folder)
        if not (folder / "workspace.json").is_file():
            yield _note(f"initial workspace: {self.s.labelled} labelled patients")
            api.create_workspace(folder, self.s.data, labelled=self.s.labelled)
        ws = api.open_workspace(folder)
        report = yield from _finished_or_train(ws, What.ALL, _config(self.s, self.s.budget), self)
        return report

    def reference(self, initial: dict) -> Events[Any]:
        """The baseline with ``reference`` labelled patients, trained exactly like the initial
        baseline (its steps, patch, batch and network): the two differ only by their labels."""
        steps = (initial["models"].get("baseline") or {}).get("steps")
        if not self.s.reference or not steps:
            return None
        folder = self.out / f"reference_L{self.s.reference}"
        if not (folder / "workspace.json").is_file():
            yield _note(f"reference workspace: {self.s.reference} labelled patients")
            api.create_workspace(folder, self.s.data, labelled=self.s.reference)
        ws = api.open_workspace(folder)
        plan = initial.get("plan") or {}
        shape = {
            "data__patch_size": plan.get("patch"),
            "data__batch_size": plan.get("batch_size"),
            "model__width": plan.get("width"),
            "model__depth": plan.get("depth"),
        }
        shape = {k: int(v) for k, v in shape.items() if v}
        cfg = _config(self.s, self.s.budget, budget_s=0, baseline__steps=int(steps), **shape)
        report = yield from _finished_or_train(ws, What.BASELINE, cfg, self)
        return report

    # -- the reference masks ----------------------------------------------------------------
    def truth(self, ws: Any) -> dict[str, np.ndarray]:
        """The dataset's mask of every training scan of the workspace, by scan id."""
        if self._truth is None:
            # imported here, when needed: it loads the scan readers
            from napari_mtssl.io import open_dataset

            ds = open_dataset(self.s.data)
            named = {c.name: c for c in ds.cases}
            out: dict[str, np.ndarray] = {}
            for sid in ws.scan_ids("train"):
                rec = ws.record(sid)
                case = named.get(rec.name)
                if case is None or case.label is None:
                    continue
                _, lab = ds.load(case)
                if lab is not None and tuple(lab.shape) == tuple(rec.shape):
                    out[sid] = lab.astype(np.uint8)
            self._truth = out
        return self._truth

    # -- one strategy -------------------------------------------------------------------------
    def strategy(self, strategy: str, initial: dict) -> Events[Any]:
        folder = self.out / strategy
        ws_dir = folder / "workspace"
        state_file = folder / "state.json"
        if not (ws_dir / "workspace.json").is_file():
            _copy_workspace(self.out / "initial", ws_dir)
        ws = api.open_workspace(ws_dir)
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        if not state:
            start = _score(initial)
            start.update(round=0, corrected=0, picked=[])
            state = {"strategy": strategy, "rounds": [start], "pending": None}
            if self.s.stage2 != "none":
                state["rounds"][0]["stage2"] = dict(_score(initial))
            atomic_write_json(state_file, state)
        truth = self.truth(ws)
        rng = np.random.default_rng([self.s.seed, CHOICES.index(strategy)])
        while len(state["rounds"]) <= self.s.rounds:
            if self.stopped():
                return state
            r = len(state["rounds"])
            pending = state.get("pending")
            if not pending or pending.get("round") != r:
                picked, note = self.pick(ws, strategy, truth, rng, r)
                if note:
                    yield _note(note, simulate=strategy)
                pending = {"round": r, "picked": [c.to_dict() for c in picked]}
                state["pending"] = pending
                atomic_write_json(state_file, state)
            written = self.correct(ws, strategy, r, pending["picked"], truth)
            yield _note(
                f"{strategy} round {r}: corrected {written} slice(s) "
                f"({len(pending['picked'])} picked)",
                simulate=strategy,
            )
            entry = yield from self.retrain(ws, strategy, r)
            if entry is None:
                return state
            # the picked slices the annotator corrected (now or before an interruption); a
            # slice a person labelled meanwhile is theirs, not counted
            mine = sum(
                ws.provenance(c["scan"], c["z"])[-1].get("by") == annotator_name(strategy, r)
                for c in pending["picked"]
            )
            prev = state["rounds"][-1]["corrected"]
            entry.update(round=r, corrected=prev + mine, picked=pending["picked"])
            state["rounds"].append(entry)
            state["pending"] = None
            atomic_write_json(state_file, state)
            yield events.SimulateRound(
                strategy,
                r,
                entry["corrected"],
                entry["mean_dice"],
                (entry.get("stage2") or {}).get("mean_dice"),
            )
        return state

    def pick(self, ws: Any, strategy: str, truth: dict, rng: Any, rnd: int):
        if strategy == CONTROL:
            return [], None
        cands = {
            sid: zs for sid, zs in active.candidates(ws).items() if sid in truth
        }  # only scans with a reference mask can be corrected by the simulator
        n = sum(len(v) for v in cands.values())
        t0 = time.monotonic()
        if strategy == "disagreement" and self._teacher_scores is not None:
            scores, fg = self._teacher_scores, {}
        else:
            scores, fg = active.slice_scores(ws, strategy, cands, truth=truth)
            if strategy == "disagreement":
                self._teacher_scores = scores
        picked = rank(strategy, cands, self.s.per_round, scores=scores, foreground=fg, rng=rng)
        note = None
        if len(picked) < self.s.per_round:
            note = (
                f"{strategy} round {rnd}: {self.s.per_round} slices asked for, only "
                f"{len(picked)} of the {n} unlabelled ones qualify; correcting those"
            )
        elif time.monotonic() - t0 > 30:
            note = f"{strategy} round {rnd}: ranked {n} slices in {time.monotonic() - t0:.0f}s"
        return picked, note

    def correct(self, ws: Any, strategy: str, rnd: int, picked: list[dict], truth: dict) -> int:
        """Write the reference mask on the picked slices that are still unlabelled; a slice a
        person annotated or corrected is never overwritten."""
        by_scan: dict[str, list[int]] = {}
        for c in picked:
            by_scan.setdefault(c["scan"], []).append(int(c["z"]))
        written = 0
        for sid, zs in by_scan.items():
            status = ws.slice_status(sid)
            free = [z for z in zs if status[z] == "unlabelled"]
            if free:
                api.accept_correction(ws, sid, truth[sid], free, by=annotator_name(strategy, rnd))
                written += len(free)
        return written

    def retrain(self, ws: Any, strategy: str, rnd: int) -> Events[Any]:
        cfg = _config(self.s, self.s.retrain_budget)
        report = yield from _train(ws, cfg, What.RETRAIN_QUICK, self.stop)
        if report is None:
            return None
        entry = _score(report)
        last = rnd == self.s.rounds
        if self.s.stage2 == "every" or (self.s.stage2 == "last" and last):
            cfg2 = _config(self.s, self.s.stage2_budget)
            rep2 = yield from _train(ws, cfg2, What.RETRAIN_STAGE2, self.stop)
            if rep2 is None:
                return None
            entry["stage2"] = _score(rep2)
        return entry

    # -- the whole -----------------------------------------------------------------------------
    def run(self) -> Events[Any]:
        self.check_settings()
        if self.s.threads:
            import torch  # imported here, when needed: the api imports this module without torch

            torch.set_num_threads(int(self.s.threads))
        initial = yield from self.initial()
        if initial is None:
            return None
        ref = yield from self.reference(initial)
        if ref is None and self.stopped():
            return None
        results: dict[str, Any] = {
            "settings": asdict(self.s),
            "initial": {k: _score(initial, k) for k in initial["models"]},
            "reference": None if ref is None else _score(ref, "baseline"),
            "strategies": {},
        }
        for strategy in self.s.strategies:
            yield from self.strategy(strategy, initial)
            if self.stopped():
                break
        results["finished"] = not self.stopped()
        # Every strategy of this folder, those other processes ran beside this one included.
        for name in CHOICES:
            file = self.out / name / "state.json"
            if file.is_file():
                results["strategies"][name] = json.loads(file.read_text())
        atomic_write_json(self.out / "results.json", results)
        write_report(self.out, results)
        yield events.Done(out=str(self.out))
        return results


def simulate(settings: Settings, stop: Callable[[], bool] | None = None) -> Events[Any]:
    """The simulation as a generator of events (training progress tagged ``simulate``, notes,
    ``simulate_round``); returns the results (also ``out/results.json``)."""
    settings.check()
    return _Simulation(settings, stop).run()


# -- the report ---------------------------------------------------------------------------------


def _describe(name: str) -> str:
    return (
        "no corrections: the same retraining only (control)" if name == CONTROL else describe(name)
    )


def _curve(
    state: dict, key: str | None, per_round: int | None = None
) -> tuple[list[int], list[float]]:
    """(corrected slices, student Dice) per finished round. ``per_round``: the control, which
    corrects nothing, is placed at ``round x per_round``, beside the strategies' rounds."""
    xs, ys = [], []
    for r in state["rounds"]:
        rec = r if key is None else r.get(key)
        if rec and rec.get("mean_dice") is not None:
            control = per_round and state.get("strategy") == CONTROL
            xs.append(int(r["round"]) * per_round if control else int(r["corrected"]))
            ys.append(float(rec["mean_dice"]))
    return xs, ys


def plot(results: dict, path: Path) -> Path:
    """Student Dice versus corrected slices, a line per strategy; the baselines as lines."""
    # imported here, when needed: matplotlib (about 0.3 s) draws the report's plot only
    import matplotlib

    matplotlib.use("Agg")  # no window: pyplot is imported after choosing the backend
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    k = int(results["settings"]["per_round"])
    for name, state in results["strategies"].items():
        xs, ys = _curve(state, None, k)
        label = f"{name} (quick retrain)"
        if name == CONTROL:
            label = f"{CONTROL}: retraining only, at round x {k}"
        (line,) = ax.plot(xs, ys, marker="o", label=label, ls=":" if name == CONTROL else "-")
        xs2, ys2 = _curve(state, "stage2", k)
        if len(xs2) > 1:
            ax.plot(xs2, ys2, marker="s", ls="--", color=line.get_color(), alpha=0.7)
            ax.annotate("stage 2", (xs2[-1], ys2[-1]), fontsize=7, color=line.get_color())
    s = results["settings"]
    base = (results.get("initial") or {}).get("baseline")
    if base:
        ax.axhline(base["mean_dice"], color="grey", ls=":", label=f"baseline L={s['labelled']}")
    ref = results.get("reference")
    if ref:
        ax.axhline(ref["mean_dice"], color="black", ls="--", label=f"baseline L={s['reference']}")
    ax.set_xlabel("corrected slices")
    ax.set_ylabel("student mean Dice (validation)")
    ax.set_title(f"Which slices to correct: {s['per_round']} a round, seed {s['seed']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def slices_to_reach(state: dict, target: float, key: str | None = None) -> int | None:
    """The fewest corrected slices at which the student reached ``target`` Dice, or None."""
    xs, ys = _curve(state, key)
    for x, y in zip(xs, ys):
        if y >= target:
            return x
    return None


def write_report(out: Path, results: dict) -> Path:
    out = Path(out)
    s = results["settings"]
    lines = [
        "# Which slices to correct: simulated annotator",
        "",
        f"Data `{s['data']}`, {s['labelled']} labelled patients, {s['per_round']} slices a "
        f"round, {s['rounds']} rounds, seed {s['seed']}; quick retrain {s['retrain_budget']}, "
        f"full stage 2 ({s['stage2_budget']}): {s['stage2']}.",
        "",
    ]
    ref = results.get("reference")
    base = (results.get("initial") or {}).get("baseline")
    if base:
        lines.append(f"- baseline with {s['labelled']} labelled patients: {base['mean_dice']:.3f}")
    if ref:
        lines.append(f"- baseline with {s['reference']} labelled patients: {ref['mean_dice']:.3f}")
    lines += [
        "",
        "| strategy | how it picks | Dice after each round (quick retrain) | stage 2 at the end "
        "| slices to reach the reference |",
        "|---|---|---|---|---|",
    ]
    for name, state in results["strategies"].items():
        _, ys = _curve(state, None)
        _, ys2 = _curve(state, "stage2")
        reach = slices_to_reach(state, ref["mean_dice"]) if ref else None
        lines.append(
            f"| {name} | {_describe(name)} | {' / '.join(f'{y:.3f}' for y in ys)} | "
            f"{f'{ys2[-1]:.3f}' if len(ys2) > 1 else '-'} | "
            f"{'-' if not ref else (reach if reach is not None else 'not reached')} |"
        )
    if results["strategies"]:
        plot(results, out / "dice_vs_corrected.png")
        lines += ["", "![Dice versus corrected slices](dice_vs_corrected.png)", ""]
    if not results.get("finished", True):
        lines += ["", "The simulation was stopped; rerun the same command to go on.", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
