"""The job runner, with small generator targets defined in this file (importable by a spawned
worker because tests/ is on sys.path through pytest's rootdir insertion)."""

from __future__ import annotations

import os
import time

import pytest

from napari_mtssl import events as ev
from napari_mtssl.training.running.jobs import JobHandle, JobWorker, resolve_target


def counting(n: int, delay: float = 0.0, stop=None):
    for i in range(n):
        if stop is not None and stop():
            return {"stopped": True, "reached": i}
        yield ev.Progress(model=str(os.getpid()), step=i + 1, total=n)  # model: the pid
        time.sleep(delay)
    return {"stopped": False, "reached": n}


def failing(stop=None):
    yield ev.Progress(step=1)
    raise ValueError("/data/scan.nii.gz: the file is truncated")


WARMED: list[int] = []


def warm(value: int) -> None:
    WARMED.append(value)


def remembers(stop=None):
    """What the worker's warm-up left in this process."""
    yield ev.Progress(model=str(os.getpid()), step=1)  # model: the pid
    return {"stopped": False, "warmed": list(WARMED)}


def dying(stop=None):
    yield ev.Progress(step=1)
    os._exit(3)


TARGET = f"{__name__}:counting"


@pytest.mark.parametrize("inline", [True, False])
def test_job_relays_every_event_and_the_result(inline):
    job = JobHandle(TARGET, {"n": 5}, inline=inline)
    events: list[dict] = []
    assert job.join(timeout=60, on_event=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    assert job.state == "done" and job.result == {"stopped": False, "reached": 5}
    worker_pids = {int(e.model) for e in events}
    assert (worker_pids == {os.getpid()}) == inline  # a process job runs elsewhere


@pytest.mark.parametrize("inline", [True, False])
def test_stop_ends_the_job_through_the_generator(inline):
    job = JobHandle(TARGET, {"n": 10_000, "delay": 0.01}, inline=inline)
    seen = []
    while len(seen) < 3:
        seen += job.poll(1.0)
    job.stop()
    assert job.join(timeout=60)
    assert job.state == "stopped"
    assert 3 <= job.result["reached"] < 10_000


@pytest.mark.parametrize("inline", [True, False])
def test_an_exception_becomes_a_message(inline):
    job = JobHandle(f"{__name__}:failing", inline=inline)
    job.join(timeout=60)
    assert job.state == "failed"
    assert job.error == "/data/scan.nii.gz: the file is truncated"
    assert "ValueError" in job.traceback


def test_a_worker_that_dies_is_reported():
    job = JobHandle(f"{__name__}:dying")
    job.join(timeout=60)
    assert job.state == "failed"
    assert "exit code 3" in job.error


def test_a_worker_runs_jobs_one_after_another_in_one_process():
    worker = JobWorker((f"{__name__}:warm", {"value": 7}))
    try:
        assert worker.state == "idle" and worker.usable
        pids = set()
        for n in (3, 2):
            worker.submit(TARGET, {"n": n})
            with pytest.raises(RuntimeError, match="still running"):
                worker.submit(TARGET, {"n": 1})
            events: list[dict] = []
            assert worker.join(timeout=60, on_event=events.append)
            assert [e.step for e in events] == list(range(1, n + 1))
            assert worker.result == {"stopped": False, "reached": n}
            pids |= {int(e.model) for e in events}
        # a failed job leaves the worker usable; the warm-up ran once, before the first job
        worker.submit(f"{__name__}:failing")
        worker.join(timeout=60)
        assert worker.state == "failed" and "truncated" in worker.error and worker.usable
        worker.submit(f"{__name__}:remembers")
        events = []
        worker.join(timeout=60, on_event=events.append)
        assert worker.result["warmed"] == [7]
        pids |= {int(e.model) for e in events}
        assert len(pids) == 1 and os.getpid() not in pids
        # a stop ends the running job only; the worker takes the next
        worker.submit(TARGET, {"n": 10_000, "delay": 0.01})
        while not worker.poll(1.0):
            pass
        worker.stop()
        assert worker.join(timeout=60) and worker.state == "stopped"
        worker.submit(TARGET, {"n": 1})
        assert worker.join(timeout=60) and worker.state == "done"
    finally:
        worker.close(30)
    assert not worker._process.is_alive() and not worker.usable


def test_a_worker_killed_under_its_job_is_reported_and_not_reused():
    worker = JobWorker()
    try:
        worker.submit(f"{__name__}:dying")
        worker.join(timeout=60)
        assert worker.state == "failed" and "exit code 3" in worker.error
        assert not worker.usable
    finally:
        worker.close(5)


def test_bad_targets_are_refused_with_the_name():
    with pytest.raises(ValueError, match="module:function"):
        resolve_target("no_colon_here")
    with pytest.raises(ValueError, match="no module named 'napari_mtssl.nowhere'"):
        JobHandle("napari_mtssl.nowhere:run")
    # A missing function is found by the worker, which imports the module, and reported.
    job = JobHandle("napari_mtssl.training.running.jobs:nope")
    job.join(timeout=60)
    assert job.state == "failed" and "has no 'nope'" in job.error


def test_starting_a_job_does_not_import_the_engine_here():
    """Importing torch in the viewer's process holds the GIL for seconds: the worker does it."""
    code = (
        "import sys\n"
        "from napari_mtssl.training.running.jobs import JobHandle\n"
        "job = JobHandle('napari_mtssl.training.running.pipeline:run_training_job', {'workspace': '/nonexistent'})\n"
        "job.join()\n"  # however slow a busy machine makes the worker's imports
        "assert job.state == 'failed', job.state\n"
        "print('torch' in sys.modules, 'napari_mtssl.training.running.pipeline' in sys.modules)\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_a_job_leaves_a_core_to_the_viewer():
    from napari_mtssl.training.running.pipeline import job_threads

    assert job_threads(1) == 1
    assert job_threads(2) == 1
    assert job_threads(16) == 15


def test_relay_status_yields_a_callbacks_progress_and_its_end():
    """A function that reports through a callback, run as a generator: its Status events in
    order, then its result; its error raised in the caller; a stop ends it with Cancelled."""
    from napari_mtssl import events as ev
    from napari_mtssl.training.running.jobs import drive, relay_status

    def work(status):
        for i in range(3):
            status(f"item {i}", i, 3)
        return "done"

    seen = []
    assert drive(relay_status(work), seen.append) == "done"
    assert [(e.message, e.done, e.total) for e in seen] == [(f"item {i}", i, 3) for i in range(3)]

    def broken(status):
        status("first", 0, 1)
        raise ValueError("scan_07.nii.gz: not a NIfTI file")

    with pytest.raises(ValueError, match="scan_07"):
        drive(relay_status(broken), lambda e: None)
    asked = iter([False])  # go on once, then stop
    with pytest.raises(ev.Cancelled):
        drive(relay_status(work, stop=lambda: next(asked, True)), lambda e: None)
