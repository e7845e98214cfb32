"""Benchmark: from the Train click to the first training step, through the viewer's spare worker.

The training dock hands a job to a worker process started ahead (``api.spare_worker``), which
imported the engine and kept a history of the machine's load while the user looked at the data.
What the job does before its first step: choose the precision and the network's shape by timing
a few steps, read the labelled scans, time the chosen network. Variants, each in a fresh worker
that waited ``wait_s`` seconds (a user looking at the data) before the job:
``kept`` (a later session: the timings an earlier session made on this machine at this load are
kept, ``kept_timings``, and the plan takes them) and ``first`` (the machine's first session: no
timing kept, so the plan times at the click, as every session did before 7 December).
Each variant has a cache folder of its own: ``first`` an empty one at each repetition, ``kept``
one filled once, before the repetitions, by a job of the same kind at the same load. (Since a
short baseline plans untimed, that job keeps nothing, so both variants now plan alike; the
FLOPs, kept until 8 December, are counted in milliseconds.)
Beside ``load`` busy processes, repetitions alternating; a baseline with a 10-minute budget on
the ACDC workspace with 3 labelled patients. Nothing is asserted: the numbers go to
``benchmarks/results/speed.json`` (``start_load<n>``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = ("kept", "first")


def _first_step(cache: Path, ws: Any, wait_s: float) -> dict[str, Any]:
    """Click to first step in a fresh spare worker whose kept timings are in ``cache``."""
    from napari_mtssl import api
    from napari_mtssl.training import kept_timings
    from napari_mtssl.training.running.jobs import JobWorker

    os.environ[kept_timings.CACHE_ENV] = str(cache)  # the worker process inherits it
    worker = JobWorker(warm=(api.WARM_ENGINE, {}))
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
    saved = os.environ.get("MTSSL_CACHE_DIR")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            kept = Path(tmp) / "kept"
            earlier = _first_step(kept, ws, wait_s)  # the earlier session, which keeps them
            print("earlier session", earlier, flush=True)
            for r in range(reps):
                for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                    cache = kept if variant == "kept" else Path(tmp) / f"first{r}"
                    runs[variant].append(_first_step(cache, ws, wait_s))
                    print(variant, runs[variant][-1], flush=True)
    finally:
        for p in hogs:
            p.kill()
        if saved is None:
            os.environ.pop("MTSSL_CACHE_DIR", None)
        else:
            os.environ["MTSSL_CACHE_DIR"] = saved
    return {
        "load": load,
        "wait_s": wait_s,
        "earlier_session": earlier,
        "runs": runs,
        "first_step_s": {v: spread([x["first_step_s"] for x in runs[v]]) for v in VARIANTS},
        "first_event_s": {v: spread([x["first_event_s"] for x in runs[v]]) for v in VARIANTS},
    }
