"""Benchmark: from the Train click to the first training step, through the viewer's spare worker.

The training dock hands a job to a worker process started ahead (``api.spare_worker``), which
imported the engine while the user looked at the data. What the job does before its first
step: count the cores other programs keep busy, choose the precision and the network's shape
by timing a few steps, read the labelled scans, time the chosen network. Variants, each in a
fresh worker that waited ``wait_s`` seconds (a user looking at the data) before the job:
``now`` (the worker as the dock starts it: while it waits it keeps a history of the machine's
load, which the plan reads, and, with a core free, times the step-cost fit the plan will ask
for) and ``before``
(a worker that only imports the engine, as until 7 December: the plan sleeps through two
windows of its own to measure the load and times the fit at the click).
Beside ``load`` busy processes, repetitions alternating; a baseline with a 10-minute budget on
the ACDC workspace with 3 labelled patients. Nothing is asserted: the numbers go to
``benchmarks/results/speed.json`` (``start_load<n>``).
"""

from __future__ import annotations

import time
from typing import Any

VARIANTS = ("now", "before")


def warm_as_before() -> None:
    """The spare worker's warm-up as it was (the ``before`` variant): the engine imported and
    an optimiser made, no load history, no step timed."""
    import torch

    import napari_mtssl.training.running.pipeline  # noqa: F401 - the engine, as the warm-up

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def _first_step(variant: str, ws: Any, wait_s: float) -> dict[str, Any]:
    from napari_mtssl import api
    from napari_mtssl.training.running.jobs import JobWorker

    warm = (api.WARM_ENGINE, {}) if variant == "now" else ("speed.start:warm_as_before", {})
    worker = JobWorker(warm=warm)
    try:
        time.sleep(wait_s)
        cfg = api.make_config("quick", budget="10m")
        t0 = time.perf_counter()
        job = api.start_job(ws, cfg, "baseline", worker=worker)
        first_event = None
        phases: dict[str, float] = {}  # each planning message's first time (s after the click)
        while True:
            events = job.poll(0.05)
            now = time.perf_counter() - t0
            if events and first_event is None:
                first_event = now
            for e in events:
                message = str(getattr(e, "message", "")).split(" of ")[0]
                if message and message not in phases:
                    phases[message] = round(now, 2)
            if any(getattr(e, "step", 0) for e in events):
                out = {
                    "first_event_s": round(first_event, 2),
                    "first_step_s": round(now, 2),
                    "phases": phases,
                }
                break
            if job.finished:
                raise RuntimeError(f"the job ended before its first step: {job.error}")
            if now > 300:
                raise RuntimeError("no first step within 300 s")
        job.stop()
        job.join(60)
        return out
    finally:
        worker.close()


def bench(load: int = 2, reps: int = 3, wait_s: float = 10.0) -> dict[str, Any]:
    from .common import acdc_workspace, spread
    from .viewer import busy_processes

    ws = acdc_workspace(3)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    hogs = busy_processes(load)
    try:
        for r in range(reps):
            for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                runs[variant].append(_first_step(variant, ws, wait_s))
                print(variant, runs[variant][-1], flush=True)
    finally:
        for p in hogs:
            p.kill()
    return {
        "load": load,
        "wait_s": wait_s,
        "runs": runs,
        "first_step_s": {v: spread([x["first_step_s"] for x in runs[v]]) for v in VARIANTS},
        "first_event_s": {v: spread([x["first_event_s"] for x in runs[v]]) for v in VARIANTS},
    }
