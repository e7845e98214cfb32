"""Benchmark: a clinician's walk through the docks, click by click (run it under ``xvfb-run -a``).

napari at 1366 x 768 with the plugin's dock; ``load`` CPU-bound processes run beside it the whole
time (other work on the machine). The walk, with the dock's own methods (what its buttons call):

1. **import** the ACDC dataset folder with 3 labelled patients (the Study tab's import), then
   **open a scan** by a click in the Study table;
2. **train** the baseline with the Tasks tab's budget (default 10 min): the time the click holds
   the event loop, and from the click to the job's first event and first progress line;
3. **stop** it after ``stop_after_s`` of training: from the click to the job's end;
4. **resume** it and let it finish its budget: the first "resumed" event, the model's
   validation Dice;
5. **compare** on a validation scan: from the click to the layers in the viewer (clicked the
   moment the run ends, or ``look_s`` seconds later: a user reading the results first);
6. **propose** the next slices to correct (the default strategy) on the imported study; then a
   second Propose cancelled 0.5 s after its click: from Cancel to the dock's answer.

The machine's timings (``kept_timings``) are either kept by an earlier session (``--timings
kept``, the default: a job of the same kind planned in a spare worker beside the same load just
before the walk) or not (``--timings first``, the machine's first session: results key
``..._first``). A baseline with a short budget plans untimed, so its earlier session keeps
nothing and the two differ only in the hour they run. ``--to-stop`` ends the walk after the
Stop (results key ``..._to_stop``).

Each phase has its own event-loop stall probe (10 ms timer; a stall is a gap minus 10 ms).
Nothing is asserted: the numbers go to ``benchmarks/results/speed.json`` (``walk_load<n>``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .viewer import busy_processes, gap_probe, spin, stats


def bench(
    load: int = 2,
    budget: str = "10 min",
    stop_after_s: float = 60.0,
    look_s: float = 0.0,
    timings: str = "kept",
    to_stop: bool = False,
) -> dict[str, Any]:
    """``timings``: ``kept`` (a later session: an earlier one, a job of the same kind in a
    spare worker beside the same load just before the walk, kept its timings of this machine)
    or ``first`` (the machine's first session: nothing kept). Either way in a cache folder of
    the walk's own. ``to_stop``: the walk ends after the Stop (steps 1 to 3: about two
    minutes, for paired runs of the click's first step and the first minute's steps)."""
    from napari_mtssl.training import kept_timings

    hogs = busy_processes(load)
    saved = os.environ.get(kept_timings.CACHE_ENV)
    try:
        with tempfile.TemporaryDirectory() as cache:
            os.environ[kept_timings.CACHE_ENV] = cache  # the viewer's workers inherit it
            if timings == "kept":
                from .common import acdc_workspace
                from .start import _first_step

                print("earlier session", _first_step(Path(cache), acdc_workspace(3), 5.0))
            out = _walk(budget, stop_after_s, look_s, to_stop)
    finally:
        for p in hogs:
            p.kill()
        if saved is None:
            os.environ.pop(kept_timings.CACHE_ENV, None)
        else:
            os.environ[kept_timings.CACHE_ENV] = saved
    out["load_processes"] = load
    out["timings"] = timings
    return out


def _phase(
    name: str, click: Callable[[], Any], until: Callable[[], bool], limit_s: float
) -> dict[str, Any]:
    """Click, then run the event loop until ``until()`` (or ``limit_s``), probing stalls."""
    probe = gap_probe()
    probe.start()
    t0 = time.perf_counter()
    click()
    click_ms = (time.perf_counter() - t0) * 1000.0
    spin(limit_s, until=until)
    probe.stop()
    seconds = time.perf_counter() - t0
    out = {"phase": name, "click_holds_loop_ms": round(click_ms, 1), **stats(probe, seconds)}
    out["answered"] = bool(until())
    print(name, out, flush=True)
    return out


def _first_scan_shown(viewer: Any, ws: Any) -> bool:
    """The import's end: the workspace open and its first scan's layers (image, labels if any)
    in the viewer (they are added at the turns after the workspace opens)."""
    if ws is None:
        return False
    sid = ws.scan_ids()[0]
    if sid not in viewer.layers:
        return False
    labelled = any(s != "unlabelled" for s in ws.slice_status(sid))
    return not labelled or f"{sid}_labels" in viewer.layers


def import_and_open(viewer: Any, study: Any, tmp: str) -> list[dict[str, Any]]:
    """The walk's first two phases: import the ACDC folder (3 labelled patients) until its
    first scan's layers are in, then a click on another scan in the Study table."""
    from .common import ACDC

    phases = [
        _phase(
            "import",
            lambda: study.open_dataset_folder(str(ACDC), f"{tmp}/ws", labelled=3),
            lambda: _first_scan_shown(viewer, study.session.workspace),
            1800,
        )
    ]
    ws = study.session.workspace
    phases[-1]["scans"] = len(ws.scan_ids()) if ws is not None else 0
    other = ws.scan_ids("train")[-1]
    row = next(r for r in range(study.table.rowCount()) if study.table.item(r, 0).text() == other)
    phases.append(
        _phase(
            "open a scan from the table",
            lambda: study._show_scan_row(row, 0),
            lambda: (
                other in viewer.layers and viewer.layers.selection.active is viewer.layers[other]
            ),
            120,
        )
    )
    return phases


def _walk(
    budget: str, stop_after_s: float, look_s: float = 0.0, to_stop: bool = False
) -> dict[str, Any]:
    import napari

    from napari_mtssl.widgets import add_docks

    from .common import ACDC, WORK

    if not (ACDC / "dataset.json").is_file():
        raise SystemExit(f"ACDC not found at {ACDC} (set MTSSL_ACDC)")
    WORK.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="walk_", dir=WORK)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    docks = add_docks(viewer)
    study, training = docks["Study"], docks["Tasks and training"]
    compare, correct = docks["Compare models"], docks["Correct and retrain"]
    jobs = training.jobs
    spin(2.0)
    phases: list[dict[str, Any]] = []
    t_click = {"at": 0.0}
    seen: dict[str, float] = {}  # event type -> seconds after the last click, first time seen
    steps = {"last": 0}  # the last training step the job reported

    def on_event(ev: Any) -> None:  # an events.Event
        at = round(time.perf_counter() - t_click["at"], 2)
        seen.setdefault(ev.type or "?", at)
        if ev.type == "status" and ev.total:  # the preparation, counted
            seen.setdefault("status counted", at)
        message = str(getattr(ev, "message", "") or "").split(" of ")[0]
        if ev.type == "status" and message:  # where the job's time goes, step by step
            seen.setdefault(f"status: {message}", at)
        if ev.type == "progress":
            steps["last"] = int(getattr(ev, "step", 0) or 0)

    jobs.job_event.connect(on_event)

    def click_now(fn: Callable[[], Any]) -> Callable[[], Any]:
        def go() -> Any:
            seen.clear()
            t_click["at"] = time.perf_counter()
            return fn()

        return go

    try:
        phases += import_and_open(viewer, study, tmp)  # 1. import, 1b. open a scan
        ws = study.session.workspace
        # 2. train the baseline with the budget (a short budget's first useful model)
        training.budget.setCurrentText(budget)
        training.device.setCurrentText("cpu")
        phases.append(
            _phase(
                "train: click to first progress",
                click_now(lambda: training.train("baseline")),
                lambda: "progress" in seen or (not jobs.is_running and jobs.last_state is not None),
                600,
            )
        )
        phases[-1]["first_event_s"] = dict(seen)
        phases.append(_phase("training", lambda: None, lambda: not jobs.is_running, stop_after_s))
        # 3. stop
        phases[-1]["steps"] = steps["last"]  # in the first stop_after_s of training
        print("steps before the stop", steps["last"], flush=True)
        phases.append(_phase("stop", click_now(training.stop), lambda: not jobs.is_running, 600))
        phases[-1]["state"] = jobs.last_state
        if to_stop:
            return {"budget": budget, "stop_after_s": stop_after_s, "phases": phases}
        # 4. resume and let it finish
        training._update_resume()
        phases.append(
            _phase(
                "resume: click to resumed, then to the end of the budget",
                click_now(training.resume),
                lambda: not jobs.is_running and "resumed" in seen,
                3600,
            )
        )
        phases[-1]["first_event_s"] = dict(seen)
        phases[-1]["state"] = jobs.last_state
        result = jobs.last_result or {}
        base = (result.get("models") or {}).get("baseline") or {}
        phases[-1]["baseline_val_dice"] = base.get("mean_dice")
        phases[-1]["baseline_steps"] = base.get("steps")
        if result.get("run"):
            plan = json.loads((ws.run(result["run"]).path / "plan.json").read_text())
            phases[-1]["plan"] = {k: plan.get(k) for k in ("patch", "width", "depth", "threads")}
            phases[-1]["plan"]["costs_kept"] = any("earlier session" in r for r in plan["reasons"])
        # 5. compare on a validation scan (after ``look_s`` of reading the run's results)
        spin(look_s)
        got: dict[str, Any] = {}
        compare.comparison_ready.connect(lambda c: got.setdefault("comparison", c))
        val = ws.scan_ids("val")[0]
        phases.append(
            _phase("compare", lambda: compare.compare(val), lambda: "comparison" in got, 600)
        )
        # 6. propose, then a propose cancelled after 0.5 s
        correct.proposals_ready.connect(lambda found: got.setdefault("proposals", found))
        phases.append(_phase("propose", correct.propose, lambda: "proposals" in got, 600))
        phases[-1]["proposed"] = len(got.get("proposals") or [])
        got.pop("proposals", None)
        correct.propose()
        spin(0.5)
        ranking = correct.proposing
        phases.append(
            _phase(
                "propose cancelled",
                lambda: correct.propose() if ranking else None,
                lambda: "proposals" in got,
                600,
            )
        )
        phases[-1]["still ranking at the cancel"] = ranking
        phases[-1]["proposed"] = len(got.get("proposals") or [])
    finally:
        if jobs.is_running:
            jobs.stop_and_wait(120)
        viewer.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"budget": budget, "stop_after_s": stop_after_s, "look_s": look_s, "phases": phases}
