"""Benchmark 4: napari's event loop while a training job runs (run it under ``xvfb-run -a``).

A napari viewer shows an ACDC scan; the widgets' ``JobController`` starts a training job with
``api.start_job`` (its own worker process) and relays its events through a napari thread worker,
exactly as the training dock does. A ``StallProbe`` (10 ms timer) records every gap between ticks;
a stall is a gap minus the 10 ms interval. Measured twice in one run: idle (no job) for a
reference, then for the whole job, from the click to the final event.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _percentile(gaps: list[float], q: float) -> float:
    return float(np.percentile(gaps, q)) if gaps else 0.0


def gap_probe() -> Any:
    """A started-later ``StallProbe`` that keeps every gap (ms), for percentiles."""
    from napari_mtssl.widgets._probe import StallProbe

    class GapProbe(StallProbe):
        def start(self) -> StallProbe:
            self.gaps: list[float] = []
            self.at: list[float] = []  # seconds since start() at the end of each gap
            self.t_start = time.perf_counter()
            return super().start()

        def _tick(self) -> None:
            now = time.perf_counter()
            if self._last is not None:
                self.gaps.append((now - self._last) * 1000.0)
                self.at.append(now - self.t_start)
            super()._tick()

    return GapProbe()


def stats(p: Any, seconds: float) -> dict[str, Any]:
    """Stall percentiles of a stopped :func:`gap_probe` over ``seconds``."""
    stalls = [max(0.0, g - p.interval_ms) for g in p.gaps]
    return {
        "seconds": round(seconds, 1),
        "ticks": len(p.gaps),
        "max_stall_ms": round(p.max_stall_ms, 1),
        "p99_stall_ms": round(_percentile(stalls, 99), 1),
        "p50_gap_ms": round(_percentile(p.gaps, 50), 1),
        "stalls_over_100ms": sum(s > 100 for s in stalls),
        "worst_stalls_at_s": [
            [round(p.at[i], 1), round(stalls[i])] for i in np.argsort(stalls)[::-1][:5]
        ],
    }


def spin(seconds: float, until: Any = None) -> None:
    """Run the Qt event loop for ``seconds`` or until ``until()`` holds (checked every 50 ms)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    timer = QTimer()
    timer.setInterval(50)
    deadline = time.monotonic() + seconds

    def check() -> None:
        if time.monotonic() > deadline or (until is not None and until()):
            loop.quit()

    timer.timeout.connect(check)
    timer.start()
    loop.exec()
    timer.stop()


def busy_processes(n: int) -> list:
    """``n`` processes that keep a core busy at normal priority (other work on the machine)."""
    import subprocess
    import sys

    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(int(n))]


def bench(idle_s: float = 5.0, steps: int = 300, load: int = 0) -> dict[str, Any]:
    """``load``: that many busy processes run beside the viewer for the whole measurement."""
    hogs = busy_processes(load)
    try:
        return _bench(idle_s, steps, load)
    finally:
        for p in hogs:
            p.kill()


def _bench(idle_s: float, steps: int, load: int) -> dict[str, Any]:
    import napari

    from napari_mtssl import api
    from napari_mtssl.widgets._jobs import JobController

    from .common import acdc_workspace

    ws = acdc_workspace(3)
    viewer = napari.Viewer(show=True)
    scan = ws.load_scan(ws.scan_ids("val")[0])
    viewer.add_image(scan.array, name=scan.name)

    spin(1.0)  # let the window settle
    idle = gap_probe()
    idle.start()
    t0 = time.perf_counter()
    spin(idle_s)
    idle.stop()
    idle_stats = stats(idle, time.perf_counter() - t0)

    cfg = api.make_config(
        "quick",
        budget_s=0,
        num_threads=1,
        baseline__steps=steps,
        stage1__eval_every=steps,  # one validation, at the end: the job is the training
    )
    ctl = JobController(viewer)
    events: list[dict] = []
    ctl.job_event.connect(events.append)
    done = {"state": None}
    ctl.job_finished.connect(lambda res: done.update(state=ctl.last_state or "ended"))
    busy = gap_probe()
    busy.start()
    t0 = time.perf_counter()
    ctl.start(ws, cfg, "baseline")
    first: dict[str, float] = {}
    ctl.job_event.connect(
        lambda ev: first.setdefault(ev.type or "?", round(time.perf_counter() - t0, 1))
    )
    spin(600.0, until=lambda: done["state"] is not None)
    busy.stop()
    busy_stats = stats(busy, time.perf_counter() - t0)
    if ctl.is_running:  # past the 600 s limit: stop it, or closing the viewer would ask
        ctl.stop_and_wait(120)
        done["state"] = "stopped at the 600 s limit"
    viewer.close()
    out = {
        "load_processes": load,
        "idle": idle_stats,
        "training": {
            **busy_stats,
            "job": f"quick baseline, {steps} steps, ACDC 3 labelled patients, 1 torch thread",
            "events_relayed": len(events),
            "first_event_at_s": first,
            "job_state": done["state"],
        },
        "napari": napari.__version__,
    }
    print(out, flush=True)
    return out
