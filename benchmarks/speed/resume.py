"""Benchmark: does a stopped and resumed run end within its budget, beside busy processes?

A baseline with a 10-minute budget on the ACDC workspace with 3 labelled patients, in a spare
worker as the training dock starts it, beside ``load`` busy
processes: stopped ``stop_after_s`` after the click, then resumed in a fresh worker and left to
finish. Reported: the run's time against its budget (``elapsed_s``, from the run's record, both
sessions), the model's steps and Dice, and how long its final validation took (from its last
training step to the model's end). Nothing is asserted: the numbers go to
``benchmarks/results/speed.json`` (``resume_load<n>``).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any


def _drain(job: Any, t0: float, log: list, stop_at: float | None = None) -> dict[str, Any]:
    """Events until the job ends (a stop asked at ``stop_at``); the times of the steps' events
    (the last step's comes after its validation)."""
    steps: list[float] = []
    done_at = None
    while not job.finished:
        for e in job.poll(0.1):
            now = round(time.perf_counter() - t0, 1)
            kind = type(e).__name__
            if kind == "Progress":
                steps.append(now)
            elif kind in ("Note", "ModelDone", "Resumed", "Stopped", "Done"):
                log.append((now, kind, str(vars(e))[:300]))
                if kind == "ModelDone":
                    done_at = now
        if stop_at is not None and time.perf_counter() > stop_at:
            job.stop()
            stop_at = None
    if job.error:
        raise RuntimeError(f"the job failed: {job.error}")
    return {"steps": steps, "done_at": done_at}


def bench(load: int = 2, budget: str = "10m", stop_after_s: float = 40.0) -> dict[str, Any]:
    from napari_mtssl import api

    from .common import acdc_workspace
    from .viewer import busy_processes

    ws = acdc_workspace(3)
    hogs = busy_processes(load)
    log: list = []
    try:
        cfg = api.make_config("quick", budget=budget)
        worker = api.spare_worker()
        time.sleep(10)  # a user looking at the data
        t0 = time.perf_counter()
        job = api.start_job(ws, cfg, "baseline", worker=worker)
        _drain(job, t0, log, stop_at=t0 + stop_after_s)
        worker.close()
        run = max(ws.root.joinpath("runs").iterdir(), key=lambda p: p.stat().st_mtime).name
        worker = api.spare_worker()
        time.sleep(10)
        t1 = time.perf_counter()
        job = api.start_job(ws, cfg, "baseline", resume=run, worker=worker)
        got = _drain(job, t1, log)
        worker.close()
    finally:
        for p in hogs:
            p.kill()
    for line in log:
        print(*line, flush=True)
    state = json.loads((ws.root / "runs" / run / "pipeline.json").read_text())
    model = state["models"]["baseline"]
    # the final validation: the last step's event less a step's usual time, then to the end
    t = got["steps"]
    final_s = None
    if got["done_at"] is not None and len(t) > 2:
        step_s = statistics.median(b - a for a, b in zip(t[:-2], t[1:-1]))
        final_s = round(got["done_at"] - t[-2] - step_s, 1)
    return {
        "load": load,
        "budget_s": cfg.budget_s,
        "stop_after_s": stop_after_s,
        "run": run,
        "elapsed_s": state.get("elapsed_s"),
        "share_of_budget": round(float(state.get("elapsed_s") or 0) / cfg.budget_s, 3),
        "resumed_for_s": round(time.perf_counter() - t1, 1),
        "steps": model.get("steps"),
        "mean_dice": model.get("mean_dice"),
        "final_validation_s": final_s,
        "log": log,
    }
