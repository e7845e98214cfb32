"""What the machine leaves a run: the CPU cores it may use, the cores other programs keep
busy, and the thread policy that follows from them (with its reason for the plan).

torch's OpenMP threads busy-wait for each other, so a job with more threads than free cores
slows down many times over (docs/benchmarks.md, threads). The load level (:func:`load_level`)
also keys the step timings (:mod:`.timing`): a step's time depends on it as well as on the
threads.
"""

from __future__ import annotations

import os
import time
from typing import Any

from napari_mtssl.training.loop.pace import keeps_history, machine_busy_s, recent_busy_cores

__all__ = [
    "busy_cores",
    "usable_cpus",
    "thread_policy",
    "threads_max",
    "threads_reason",
    "load_level",
]


def busy_cores(window_s: float = 0.5) -> float:
    """Cores kept busy by other processes right now: in a process that keeps a load history
    (the viewer's spare worker, :func:`~napari_mtssl.training.loop.pace.watch_load`), its last
    windows; else the machine's CPU time over a short window while this process sleeps
    (:func:`~napari_mtssl.training.loop.pace.machine_busy_s`: work at lowered priority, which
    yields to this job, does not count); where the platform gives no CPU times, the one-minute
    load average. Measured anew at each call (once per plan: the plan's threads and its reason
    use the same figure)."""
    recent = recent_busy_cores()
    if recent is not None:
        return recent

    def window() -> float | None:
        try:
            a, ta = machine_busy_s(), time.monotonic()
            time.sleep(window_s)
            b, tb = machine_busy_s(), time.monotonic()
        except OSError:
            return None
        return (b - a) / (tb - ta) if tb > ta else 0.0

    # Two windows a little apart, and the quieter one: a burst (a program starting, a file
    # being written) is not the sustained load that would slow the run down.
    first = window()
    if first is None:
        try:
            busy = float(os.getloadavg()[0])
        except (AttributeError, OSError):
            busy = 0.0
    else:
        time.sleep(0.3)
        busy = min(first, window() or 0.0)
    return max(0.0, busy)


def usable_cpus() -> int:
    """The CPU cores this process may run on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return int(cpus or 1)


def thread_policy(dev: Any, interactive: bool, busy: float) -> int:
    """Every free core for a headless run; one left to the viewer for a job started from napari.

    torch's OpenMP threads busy-wait for each other, so a job with more threads than free cores
    slows down many times over (docs/benchmarks.md, threads): cores that other processes keep
    busy (measured over half a second) are not counted as free."""
    cpus = usable_cpus()
    if dev.type != "cpu":
        return max(1, min(4, cpus - 1))  # the GPU does the work; threads feed it
    want = max(1, cpus - 1) if interactive else cpus
    return int(max(1, min(want, round(cpus - busy + 0.25))))


def threads_max(dev: Any, interactive: bool) -> int:
    """The threads the policy would take on a free machine (0 on a GPU: they stay)."""
    if dev.type != "cpu":
        return 0
    cpus = usable_cpus()
    return max(1, cpus - 1) if interactive else cpus


def threads_reason(threads: int, interactive: bool, busy: float | None) -> str:
    """The plan's reason for its threads (the policy's, with the busy cores it saw; None: not
    measured, as it could not change them)."""
    cpus = os.cpu_count() or 1
    why = "one core left to the viewer" if interactive else "the cores other work leaves free"
    seen = "" if busy is None else f"; other processes kept {busy:.1f} core(s) busy"
    return f"{threads} of {cpus} CPU thread{'s' if cpus > 1 else ''} ({why}{seen})"


# How long the level last read stays the level while this process is itself too busy for its
# history to read the others (:data:`~napari_mtssl.training.loop.pace.OWN_QUIET`): a plan that
# timed its step-cost fit for 6 s at level 2 then looks up its chosen network at level 2, not
# at "unknown" (it timed the same network again: 3.3 s beside two busy processes).
LEVEL_HELD_S = 60.0
_last_level: tuple[float, int] | None = None


def load_level() -> int:
    """The whole cores other programs keep busy, by this process's load history (-1 where it
    keeps none): a step's time depends on them as well as on the threads, so timings are kept
    per level and a plan at another level times anew. While this process has been too busy
    itself to read the others, the level it last read, for ``LEVEL_HELD_S``."""
    global _last_level
    busy = recent_busy_cores()
    now = time.monotonic()
    if busy is not None:
        _last_level = (now, int(round(busy)))
        return _last_level[1]
    if keeps_history() and _last_level is not None and now - _last_level[0] <= LEVEL_HELD_S:
        return _last_level[1]
    return -1
