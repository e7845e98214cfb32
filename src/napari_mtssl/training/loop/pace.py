"""A unit's pace while it trains: its step count re-timed against its deadline, its threads
fitted to the cores other programs leave free.

The plan times a step once, when the run starts. Users start and stop other work beside a run
all the time: a run planned on a free machine crawls when a second job starts beside it (its
threads then fight the other job's for the same cores), and a run planned beside a job that then
ends keeps the few steps it planned. So, every ``every_s`` seconds, :class:`Pace`

* measures the seconds per step over the last window (validation time left out; the slower of
  that window and the smoothed pace counts, so one noisy window does not see-saw the count) and
  sets the unit's step count so that its last step and its final validation end by the deadline: fewer
  steps when the machine got slower, more (up to ``grow`` x the planned count) when it got
  faster. The learning-rate schedule follows the new count, so a shortened unit still anneals
  instead of stopping at a high learning rate;
* with ``threads_max`` > 0 (the plan chose the threads, the user did not), counts the cores
  other programs keep busy (the machine's CPU time less this process's own, from psutil; niced
  work does not count) and moves torch's threads to the free cores, up to ``threads_max``, after two windows
  in a row agree;
* the first time the machine reads quiet, redoes once what was decided on a busy machine
  (``recheck``: the trainer's bf16-or-fp32 choice, whose timing a busy machine distorts).

Only the unit that runs alone at the end of a budgeted run (the baseline of a baseline run,
the student) gets ``grow`` and ``threads_max``; the earlier units are re-budgeted between units
by the pipeline and only shrink here when they would pass the run's deadline.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable

import psutil

__all__ = [
    "CoreWatch",
    "LoadHistory",
    "Pace",
    "TooFewSteps",
    "keeps_history",
    "recent_busy_cores",
    "watch_load",
]


class TooFewSteps(RuntimeError):
    """A unit's first window found its budget too short for ``floor`` steps on this machine: it
    fits ``fits`` (``Pace(floor=...)``: an untimed plan checks its budget so)."""

    def __init__(self, fits: int, floor: int, seconds_per_step: float):
        self.fits, self.floor, self.seconds_per_step = int(fits), int(floor), seconds_per_step
        super().__init__(
            f"the budget fits about {self.fits} steps at {seconds_per_step:.2f} s a step; "
            f"at least {self.floor} are needed"
        )


class CoreWatch:
    """Cores kept busy by other processes between two calls of :meth:`others` (psutil's CPU
    times of the machine less this process's own; None where the platform gives none)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._me = psutil.Process()
        self._last = self._snap()
        self.own_cores = 0.0  # this process's own, over the last window of others()

    def _snap(self) -> tuple[float, float, float] | None:
        try:
            busy = machine_busy_s()
            mine = self._me.cpu_times()
        except (OSError, psutil.Error):
            return None
        own = mine.user + mine.system  # every thread's
        if _niceness() > 0:
            own = 0.0  # this process's own time is in the nice column, already left out
        return busy, own, self._clock()

    def others(self) -> float | None:
        """Cores the other processes kept busy since the last call (None where unknown)."""
        now = self._snap()
        last, self._last = self._last, now
        if now is None or last is None or now[2] <= last[2]:
            return None
        seconds = now[2] - last[2]
        self.own_cores = max(0.0, (now[1] - last[1]) / seconds)
        return max(0.0, ((now[0] - last[0]) - (now[1] - last[1])) / seconds)


# A window in which this process itself kept more than this many cores busy is not read: on a
# full machine its own work crowds the other programs out, and they would read less busy than
# they are (a worker timing steps ahead read one core where two programs ran).
OWN_QUIET = 0.25
# How far back the history is read for its last windows.
HISTORY_HORIZON_S = 6.0


class LoadHistory:
    """The cores other processes kept busy, sampled every ``every_s`` seconds by a daemon
    thread (one :class:`CoreWatch` reading per window, with this process's own; the last
    ``keep`` kept).

    A process that waits for a job (the viewer's spare worker) keeps one, so that the job's
    plan reads how busy the machine has been instead of sleeping through windows of its own
    to find out (1.3 s at every click)."""

    def __init__(self, every_s: float = 0.5, keep: int = 16, watch: CoreWatch | None = None):
        self.every_s = every_s
        self._watch = watch or CoreWatch()
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="load-history", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.every_s)
            cores = self._watch.others()
            own = float(getattr(self._watch, "own_cores", 0.0))
            if cores is not None:
                with self._lock:
                    self._samples.append((time.monotonic(), cores, own))

    def recent(self, within_s: float) -> list[float]:
        """The windows that ended in the last ``within_s`` seconds and in which this process
        kept under ``OWN_QUIET`` of a core busy, oldest first."""
        now = time.monotonic()
        with self._lock:
            return [c for t, c, own in self._samples if now - t <= within_s and own < OWN_QUIET]


_HISTORY: LoadHistory | None = None
_HISTORY_LOCK = threading.Lock()


def watch_load(every_s: float = 0.5) -> LoadHistory:
    """Start this process's :class:`LoadHistory` (once; later calls return it)."""
    global _HISTORY
    with _HISTORY_LOCK:
        if _HISTORY is None:
            _HISTORY = LoadHistory(every_s)
        return _HISTORY


def keeps_history() -> bool:
    """Whether this process keeps a :class:`LoadHistory` (:func:`watch_load`)."""
    return _HISTORY is not None


def recent_busy_cores(windows: int = 2) -> float | None:
    """The quieter of the last ``windows`` windows of this process's :class:`LoadHistory` in
    the last ``HISTORY_HORIZON_S`` (a burst, such as a program starting, is not the sustained
    load that slows a run down); None without a history, or when it has fewer such windows
    (it just started, or this process has been busy itself)."""
    history = _HISTORY
    if history is None:
        return None
    recent = history.recent(within_s=max(HISTORY_HORIZON_S, (windows + 0.5) * history.every_s))
    if len(recent) < windows:
        return None
    return max(0.0, min(recent[-windows:]))


def machine_busy_s() -> float:
    """CPU seconds the machine has spent busy since boot, every core summed: all but idle and
    I/O wait, and but niced work, which yields the CPU to a normal-priority job."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0) + getattr(t, "nice", 0.0)
    # guest time is already counted in user (and guest_nice in nice) on Linux
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - idle


def _niceness() -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return 0


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


QUIET_CORES = 0.3  # other programs' use below which the machine counts as quiet
# A forward batch is timed every this many windows (about a minute) while the unit has timed no
# validation pass: a fraction of a second each, 1-2 % of the steps' time beside busy processes.
FWD_EVERY = 4


class Pace:
    """The step count (``total``) of one unit, kept so that it ends by ``deadline``.

    ``planned``: the steps the plan gave; ``deadline``: ``time.monotonic()`` by which the unit's
    last step and final validation are done (None: no budget, the count stays); ``grow``: the
    most the count may rise to, as a multiple of ``planned`` (1: never more than planned);
    ``threads_max``: 0 leaves torch's threads alone. ``recheck``: called once, at the first
    window in which the machine reads quiet (with ``threads_max`` only), to redo a choice
    made on a busy machine; it returns a line for the user when it changed something.
    ``val_guess``: (seconds of one validation pass, seconds of one forward batch) as the plan
    timed them, the final validation's reserve until a pass is timed (:meth:`reserve_s`),
    scaled by ``time_fwd()`` (a forward batch timed now, in seconds).
    ``floor``: the fewest steps the unit's budget must fit, checked at its first window (an
    untimed plan: :class:`TooFewSteps` where the steps timed there fit fewer).
    ``clock``, ``watch`` and ``set_threads`` are replaceable for tests.
    """

    def __init__(
        self,
        planned: int,
        deadline: float | None,
        *,
        grow: float = 1.0,
        threads_max: int = 0,
        every_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        watch: CoreWatch | None = None,
        set_threads: Callable[[int], None] | None = None,
        get_threads: Callable[[], int] | None = None,
        cpus: int | None = None,
        recheck: Callable[[], str | None] | None = None,
        val_guess: tuple[float, float] | None = None,
        time_fwd: Callable[[], float] | None = None,
        floor: int = 0,
    ):
        self.planned = int(planned)
        self.floor = int(floor)  # checked once, at the first window (then 0)
        self.total = int(planned)
        self.deadline = deadline
        self.grow = max(1.0, float(grow))
        self.cap = max(self.planned, int(self.planned * self.grow))
        self.threads_max = int(threads_max)
        self.every_s = float(every_s)
        self._clock = clock
        self._watch = watch if watch is not None or not self.threads_max else CoreWatch(clock)
        self._cpus = cpus or _cpus()
        if set_threads is None or get_threads is None:
            # imported here, when needed: the planner's load readings import this module
            import torch

            set_threads, get_threads = torch.set_num_threads, torch.get_num_threads
        self._set_threads, self._get_threads = set_threads, get_threads
        # called once, the first time the machine reads quiet (``threads_max`` > 0 only: the
        # watch is what reads it); a line for the user when it changed something
        self._recheck = recheck if self._watch is not None else None
        self._others: float | None = None  # other programs' busy cores, as last read
        self._want: int | None = None
        self._rate: float | None = None  # seconds per step, smoothed over the windows
        self._val_s: float | None = None
        # (seconds of a validation pass, seconds of a forward batch) as the plan timed them, and
        # how many times slower a forward batch runs now (timed every FWD_EVERY windows)
        self._guess = val_guess if val_guess and min(val_guess) > 0 else None
        self._time_fwd = time_fwd if self._guess is not None else None
        self._fwd_slower: float | None = None
        self._windows = 0
        self._window: tuple[float, int] | None = None  # (start time, step) of this window
        self._paused = 0.0  # validation seconds inside the window

    @property
    def on(self) -> bool:
        return self.deadline is not None or self.threads_max > 0

    def start(self, step: int) -> None:
        self._window = (self._clock(), step)
        self._paused = 0.0

    def validated(self, seconds: float) -> None:
        """A validation pass took ``seconds``: left out of the step time, and the final one
        is reserved before the deadline."""
        self._val_s = float(seconds)
        self._paused += float(seconds)

    def reserve_s(self, now: float) -> float:
        """Seconds kept before the deadline for the final validation and saving (with HD95, a
        little longer than a halfway validation). Before a pass was timed: the plan's timing
        of one (``val_guess``), scaled by how much slower a forward batch of the network runs
        now than the plan timed it (``time_fwd``; a pass is forward batches; a training step
        slows differently: 6.7 x against a pass's 4.8 x beside a viewer and two busy
        processes); without a guess, a twenty-fifth of the time left (2 s without a deadline)."""
        if self._val_s is not None:
            return 1.3 * self._val_s + 2.0
        if self._guess is not None:
            return 1.3 * self._guess[0] * (self._fwd_slower or 1.0) + 2.0
        return max(2.0, (self.deadline - now) / 25) if self.deadline is not None else 2.0

    def _time_forward(self) -> None:
        """Every FWD_EVERY windows, while no pass is timed: a forward batch, timed against the
        plan's (its seconds are left out of the steps' window)."""
        if self._time_fwd is None or self._val_s is not None or self.deadline is None:
            return
        self._windows += 1
        if self._fwd_slower is not None and self._windows % FWD_EVERY:
            return
        seconds = float(self._time_fwd())
        self._paused += seconds
        now = seconds / self._guess[1]
        old = self._fwd_slower
        # the slower of the smoothed and the last: a slowdown counts at once
        self._fwd_slower = now if old is None else max(now, 0.7 * old + 0.3 * now)

    def tick(self, step: int) -> str | None:
        """After ``step`` steps: at most every ``every_s`` seconds, re-time and re-count (and
        move the threads); returns a line for the user when something changed."""
        if not self.on or self._window is None:
            return None
        now = self._clock()
        t0, s0 = self._window
        if now - t0 < self.every_s or step - s0 < 3:
            return None
        window = max(1e-6, (now - t0 - self._paused) / (step - s0))
        self.start(step)
        self._time_forward()
        self._rate = window if self._rate is None else 0.7 * self._rate + 0.3 * window
        notes = []
        if self.threads_max > 0:
            note = self._fit_threads() or self._recheck_when_quiet()
            if note:
                self._rate = None  # a new pace: time the next window afresh
                notes.append(note)
                return "; ".join(notes)
        if self.deadline is not None:
            # the slower of the smoothed pace and the last window: a slowdown is answered at
            # once, a speed-up only once it lasts (no count see-sawing on one noisy window)
            note = self._recount(step, now, max(self._rate, window))
            if note:
                notes.append(note)
        return "; ".join(notes) or None

    def _recount(self, step: int, now: float, per_step: float) -> str | None:
        left = self.deadline - now - self.reserve_s(now)
        fits = step + max(0, int(left / per_step))
        floor, self.floor = self.floor, 0
        if fits < floor:
            raise TooFewSteps(fits, floor, per_step)
        want = min(self.cap, max(step, fits))  # cap: the planned count unless it may grow
        if abs(want - self.total) < max(2, 0.03 * self.total):
            return None
        before, self.total = self.total, want
        way = "slower" if want < before else "faster"
        return (
            f"the machine runs {way} than planned ({per_step:.2f} s a step): {want} steps "
            f"instead of {before}, to end within the budget"
        )

    def _recheck_when_quiet(self) -> str | None:
        """The once-only ``recheck``, when other programs use under a third of a core (what
        was decided on a busy machine, a precision, may be decided otherwise now)."""
        if self._recheck is None or self._others is None or self._others >= QUIET_CORES:
            return None
        recheck, self._recheck = self._recheck, None
        return recheck()

    def _fit_threads(self) -> str | None:
        others = self._watch.others() if self._watch is not None else None
        self._others = others
        if others is None:
            return None
        # A CPU-bound program beside a job whose threads fill every core gets only part of a
        # core (measured: 0.4-0.7 beside 2 threads on 2 cores) while the job's threads wait on
        # each other; so any sustained use above 0.3 of a core counts as a core taken.
        taken = math.ceil(max(0.0, others - 0.3))
        want = int(max(1, min(self.threads_max, self._cpus - taken)))
        have = int(self._get_threads())
        if want == have:
            self._want = None
            return None
        if self._want != want:  # the next window must agree before the threads move
            self._want = want
            return None
        self._want = None
        self._set_threads(want)
        return (
            f"other programs keep {others:.1f} of {self._cpus} cores busy: {want} thread"
            f"{'s' if want != 1 else ''} from now (was {have})"
        )
