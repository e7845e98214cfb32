"""Benchmark: what a run's progress display costs the viewer's process (run under ``xvfb-run -a``).

A napari viewer at 1366 x 768 with an ACDC-sized image, its CPU time (``time.process_time``:
every thread of the process) per second of wall time, over ``window_s`` seconds each:
``idle``; ``napari_progress``: a ``napari.utils.progress`` open, as a job's and an import's
were until this benchmark (napari animates an indicator in its status bar); ``after_close``:
the same, closed again; ``dock_bar``: the dock's own progress panel (``JobProgressPanel``) fed a
training step's event twice a second, as a job's events reach it. Nothing is asserted: the
numbers go to ``benchmarks/results/speed.json`` (``activity``).
"""

from __future__ import annotations

import time
from typing import Any


def _cpu_share(seconds: float, each: Any = None, every_s: float = 0.5) -> float:
    """The process's CPU seconds per wall second while the event loop runs ``seconds``
    (``each()`` called every ``every_s`` seconds)."""
    from .viewer import spin

    t0, c0 = time.monotonic(), time.process_time()
    end, n = t0 + seconds, 0
    while time.monotonic() < end:
        if each is not None:
            n += 1
            each(n)
        spin(every_s)
    return round((time.process_time() - c0) / (time.monotonic() - t0), 3)


def bench(window_s: float = 8.0) -> dict[str, Any]:
    import napari
    import numpy as np
    from napari.utils import progress

    from napari_mtssl import events as ev
    from napari_mtssl.widgets._jobs import JobController, JobProgressPanel

    from .viewer import spin

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    viewer.add_image(np.random.default_rng(0).random((10, 256, 216), dtype=np.float32))
    spin(2.0)
    out: dict[str, Any] = {"window_s": window_s, "idle": _cpu_share(window_s)}
    bar = progress(total=0, desc="MTSSL baseline")
    spin(1.0)
    out["napari_progress"] = _cpu_share(window_s)
    bar.close()
    spin(1.0)
    out["after_close"] = _cpu_share(window_s)
    jobs = JobController(viewer)
    panel = JobProgressPanel(jobs)
    viewer.window.add_dock_widget(panel, name="progress")
    spin(1.0)

    def step(n: int) -> None:
        e = ev.Progress(model="baseline", step=n, total=500, losses={"seg": 1.0 / n})
        jobs.job_event.emit(e)

    out["dock_bar"] = _cpu_share(window_s, step)
    viewer.close()
    return out
