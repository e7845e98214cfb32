"""A unit's pace (training/loop/pace.py): its step count re-timed against its deadline, its threads
fitted to the free cores. A fake clock and a fake core count: nothing here depends on how fast
this machine is."""

from __future__ import annotations

import pytest

from napari_mtssl.training.loop.pace import CoreWatch, Pace


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Watch:
    """Other programs' busy cores, as a test sets them."""

    def __init__(self) -> None:
        self.busy = 0.0

    def others(self) -> float:
        return self.busy


def run(pace: Pace, clock: Clock, seconds_per_step, until: int | None = None) -> list[str]:
    """Steps the way train_unit does; ``seconds_per_step(step)`` is the machine's pace."""
    notes, step = [], 0
    pace.start(step)
    while step < pace.total and (until is None or step < until):
        clock.t += seconds_per_step(step)
        step += 1
        note = pace.tick(step)
        if note:
            notes.append(note)
    return notes


def fixed_threads() -> dict:
    state = {"n": 2}
    return {
        "set_threads": lambda n: state.update(n=n),
        "get_threads": lambda: state["n"],
        "state": state,
    }


def test_a_machine_that_slows_down_gets_fewer_steps_and_ends_by_the_deadline():
    clock = Clock()
    # planned: 1000 steps at 0.5 s in a 520 s window; from step 100 on, each step takes 1.5 s
    pace = Pace(1000, clock() + 520, clock=clock, set_threads=lambda n: None, get_threads=lambda: 1)
    notes = run(pace, clock, lambda s: 0.5 if s < 100 else 1.5)
    assert pace.total < 1000 and any("slower" in n for n in notes)
    assert clock.t <= 1000 + 520  # the last step ends before the deadline
    # and it did not give up early: the time left at the end is at most the reserve and a window
    assert clock.t >= 1000 + 520 - pace.reserve_s(clock.t) - 2 * pace.every_s


def test_a_machine_that_frees_up_gets_more_steps_up_to_grow():
    clock = Clock()
    # planned on a busy machine: 300 steps at 2 s in 620 s; it then runs at 0.5 s a step
    pace = Pace(300, clock() + 620, grow=2.0, clock=clock, set_threads=lambda n: None,
                get_threads=lambda: 1)  # fmt: skip
    notes = run(pace, clock, lambda s: 0.5)
    assert pace.total == 600  # 2 x planned, the cap, though the time would allow more
    assert any("faster" in n for n in notes)
    assert clock.t <= 1000 + 620


def test_without_grow_a_faster_machine_keeps_the_planned_steps():
    clock = Clock()
    pace = Pace(300, clock() + 620, clock=clock, set_threads=lambda n: None, get_threads=lambda: 1)
    assert run(pace, clock, lambda s: 0.5) == []
    assert pace.total == 300


def test_no_deadline_and_no_threads_change_nothing():
    clock = Clock()
    pace = Pace(50, None, clock=clock, set_threads=lambda n: None, get_threads=lambda: 1)
    assert not pace.on
    assert run(pace, clock, lambda s: 10.0) == [] and pace.total == 50


def test_validation_time_is_reserved_before_the_deadline_and_not_counted_as_steps():
    clock = Clock()
    pace = Pace(1000, clock() + 600, clock=clock, set_threads=lambda n: None, get_threads=lambda: 1)
    pace.start(0)
    step = 0
    while step < pace.total:
        clock.t += 0.5
        step += 1
        if step == 400:  # a 40 s validation halfway
            clock.t += 40.0
            pace.validated(40.0)
        pace.tick(step)
    final = 1.3 * 40.0  # what the final validation (with HD95) is given
    assert clock.t + final <= 1000 + 600 + 1.0
    assert pace.reserve_s(clock.t) == pytest.approx(final + 2.0)


def test_threads_move_to_the_free_cores_after_two_windows_agree():
    clock, watch, th = Clock(), Watch(), fixed_threads()
    pace = Pace(10_000, None, threads_max=2, clock=clock, watch=watch, cpus=2,
                set_threads=th["set_threads"], get_threads=th["get_threads"])  # fmt: skip
    notes = run(pace, clock, lambda s: 0.5, until=100)
    assert notes == [] and th["state"]["n"] == 2  # a free machine: both cores
    watch.busy = 1.0  # another job starts beside it
    notes = run(pace, clock, lambda s: 0.5, until=100)
    assert th["state"]["n"] == 1 and any("1 thread from now" in n for n in notes)
    watch.busy = 0.0  # it ends
    notes = run(pace, clock, lambda s: 0.5, until=100)
    assert th["state"]["n"] == 2 and any("2 threads from now" in n for n in notes)


def test_a_single_busy_window_does_not_move_the_threads():
    clock, watch, th = Clock(), Watch(), fixed_threads()
    pace = Pace(10_000, None, threads_max=2, clock=clock, watch=watch, cpus=2,
                set_threads=th["set_threads"], get_threads=th["get_threads"])  # fmt: skip
    pace.start(0)
    clock.t += 20
    watch.busy = 1.0
    assert pace.tick(40) is None  # one window says busy
    clock.t += 20
    watch.busy = 0.0
    assert pace.tick(80) is None  # the next does not: nothing moves
    assert th["state"]["n"] == 2


def test_the_core_watch_reads_this_machine():
    watch = CoreWatch()
    sum(i * i for i in range(200_000))  # some of this process's own time, not counted
    got = watch.others()
    if got is None:
        pytest.skip("no CPU times on this system: the threads are then left as planned")
    assert 0.0 <= got


def test_a_program_that_gets_only_part_of_a_core_still_takes_one():
    """Beside a job whose threads fill both cores, a CPU-bound program gets 0.4-0.7 of a core
    (measured); that is a core it would use, so the job drops to one thread."""
    clock, watch, th = Clock(), Watch(), fixed_threads()
    pace = Pace(10_000, None, threads_max=2, clock=clock, watch=watch, cpus=2,
                set_threads=th["set_threads"], get_threads=th["get_threads"])  # fmt: skip
    watch.busy = 0.6
    run(pace, clock, lambda s: 0.5, until=100)
    assert th["state"]["n"] == 1
    watch.busy = 0.2  # background noise: not a core taken
    run(pace, clock, lambda s: 0.5, until=100)
    assert th["state"]["n"] == 2


class Readings:
    """Other programs' busy cores, one reading per window, as a test sets them."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def others(self) -> float | None:
        return self.values.pop(0) if self.values else None


def test_a_plan_in_a_waiting_worker_reads_the_load_history_instead_of_sleeping(monkeypatch):
    """The viewer's spare worker samples the load while it waits; the job's plan takes the
    quieter of the last two windows (a burst is not sustained load) and sleeps through no
    window of its own."""
    import time

    from napari_mtssl.training.loop import pace as pace_mod
    from napari_mtssl.training.planning import machine

    history = pace_mod.LoadHistory(every_s=0.01, watch=Readings([1.9, 1.8, 0.9, 1.7]))
    deadline = time.monotonic() + 30
    while len(history.recent(within_s=60)) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert history.recent(within_s=60) == [1.9, 1.8, 0.9, 1.7]

    monkeypatch.setattr(pace_mod, "_HISTORY", history)
    history.every_s = 60.0  # the windows above count as recent
    measured = []  # the plan's own windows read the machine's CPU time at each end

    def machine_busy_s() -> float:
        measured.append(time.monotonic())
        return 0.0

    monkeypatch.setattr(machine, "machine_busy_s", machine_busy_s)
    assert machine.busy_cores() == 0.9  # the quieter of 0.9 and 1.7
    assert measured == []

    monkeypatch.setattr(pace_mod, "_HISTORY", None)  # no history (the CLI): measured anew
    assert machine.busy_cores(window_s=0.01) == 0.0
    assert len(measured) == 4  # two windows of its own


def test_a_history_that_just_started_is_not_used():
    from napari_mtssl.training.loop import pace as pace_mod

    history = pace_mod.LoadHistory(every_s=3600.0, watch=Readings([]))
    old, pace_mod._HISTORY = pace_mod._HISTORY, history
    try:
        assert pace_mod.recent_busy_cores() is None  # no window yet: the plan measures
    finally:
        pace_mod._HISTORY = old


class ReadingsWithOwn:
    """Windows of (other programs' busy cores, this process's own)."""

    def __init__(self, values: list[tuple[float, float]]) -> None:
        self.values = list(values)
        self.own_cores = 0.0

    def others(self) -> float | None:
        if not self.values:
            return None
        others, self.own_cores = self.values.pop(0)
        return others


def test_windows_in_which_this_process_was_busy_are_not_read():
    """On a full machine a worker's own work (timing steps ahead) crowds the other programs
    out: they read less busy than they are. Those windows are skipped; the plan reads the
    ones before."""
    import time

    from napari_mtssl.training.loop import pace as pace_mod

    windows = [(2.0, 0.0), (1.9, 0.02), (1.1, 0.9), (1.0, 1.0)]
    history = pace_mod.LoadHistory(every_s=0.01, watch=ReadingsWithOwn(windows))
    deadline = time.monotonic() + 30
    while history._watch.values and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    old, pace_mod._HISTORY = pace_mod._HISTORY, history
    try:
        assert history.recent(within_s=60) == [2.0, 1.9]
        assert pace_mod.recent_busy_cores() == 1.9
    finally:
        pace_mod._HISTORY = old


def _ends_with_its_validation(val_guess, fwd_s: float = 0.2) -> tuple[float, float, Pace]:
    """A unit validating only at its end, whose forward batch runs at ``fwd_s`` (the plan timed
    0.1 s and a pass at 60 s: this pass takes 60 x fwd_s / 0.1 s), its steps at 1 s. Returns
    (when its final validation ends, the deadline, its pace)."""
    clock = Clock()
    deadline = clock() + 600

    def time_fwd() -> float:
        clock.t += fwd_s
        return fwd_s

    pace = Pace(1000, deadline, grow=2.0, clock=clock, set_threads=lambda n: None,
                get_threads=lambda: 1, val_guess=val_guess, time_fwd=time_fwd)  # fmt: skip
    pace.start(0)
    step = 0
    while step < pace.total and clock.t + 1.0 <= deadline - pace.reserve_s(clock.t):
        clock.t += 1.0
        step += 1
        pace.tick(step)
    return clock.t + 60.0 * fwd_s / 0.1, deadline, pace


def test_the_plans_validation_timing_is_kept_for_the_final_pass_before_one_is_timed():
    # the unit times no validation of its own (it validates at its end only): the plan's
    # timing, scaled by how much slower a forward batch runs now, is what it keeps
    for fwd_s in (0.2, 0.05):  # a busier machine than planned, and a quieter one
        end, deadline, _ = _ends_with_its_validation((60.0, 0.1), fwd_s)
        assert end <= deadline, fwd_s
        # and it kept no more than the margin for HD95 (0.3 of the pass), a step and 2 s
        assert end >= deadline - (0.3 * 600 * fwd_s + 1.0 + 2.0) - 1e-6, fwd_s
    # without the plan's timing, a twenty-fifth of the time left (which shrinks to seconds
    # near the end) is kept: the final pass runs past the deadline
    end, deadline, _ = _ends_with_its_validation(None)
    assert end > deadline + 60


def test_a_forward_batch_is_timed_about_once_a_minute_and_left_out_of_the_steps():
    _, _, pace = _ends_with_its_validation((60.0, 0.1))
    # 1 s steps, a window every 15 s: one forward timing per 4 windows, the first at once
    assert pace._fwd_slower == pytest.approx(2.0)
    assert pace._rate == pytest.approx(1.0)  # the 0.2 s of each timing is not a step's


def test_a_timed_pass_replaces_the_plans_guess():
    clock = Clock()
    pace = Pace(1000, clock() + 600, clock=clock, set_threads=lambda n: None,
                get_threads=lambda: 1, val_guess=(60.0, 0.1), time_fwd=lambda: 0.3)  # fmt: skip
    assert pace.reserve_s(clock.t) == pytest.approx(1.3 * 60.0 + 2.0)  # nothing timed yet
    run(pace, clock, lambda s: 1.0, until=20)
    assert pace.reserve_s(clock.t) == pytest.approx(1.3 * 180.0 + 2.0)  # forward 3 x slower
    pace.validated(10.0)
    assert pace.reserve_s(clock.t) == pytest.approx(1.3 * 10.0 + 2.0)
