"""A worker process waits, with the engine imported, for the next job of the viewer: a click on
Train or Estimate hands the job to it instead of starting a process then. After a finished job
it ends (its memory goes back) and a new one gets ready (after a Stop it is kept for the resume:
``test_loop.test_stop_keeps_a_checkpoint``); none outlives the viewer."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.spare_worker]

JOB_MS = 240_000


@pytest.mark.slow
def test_a_spare_worker_serves_the_next_job_and_ends_with_the_viewer(sample_docks, qtbot):
    from napari_mtssl.training.running.jobs import JobWorker

    jobs = sample_docks.session.jobs
    # opening the workspace made one, idle and alive
    qtbot.waitUntil(lambda: isinstance(jobs._spare, JobWorker), timeout=60_000)
    spare = jobs._spare
    assert spare.usable and spare.state == "idle"

    with qtbot.waitSignal(jobs.job_finished, timeout=JOB_MS):
        sample_docks.training.estimate()
    assert jobs.last_state == "done", jobs.last_error
    assert jobs.handle is spare  # the job ran in the waiting process
    assert jobs.last_result and jobs.last_result.get("models")  # the plan it made

    # served: its process ends, and another is ready for the job after
    qtbot.waitUntil(lambda: not spare._process.is_alive(), timeout=60_000)
    qtbot.waitUntil(
        lambda: isinstance(jobs._spare, JobWorker) and jobs._spare is not spare, timeout=60_000
    )
    following = jobs._spare
    jobs.release()  # what closing the viewer does
    assert jobs._spare is None
    qtbot.waitUntil(lambda: not following._process.is_alive(), timeout=60_000)
    jobs.prepare()  # after release, nothing new is started
    assert jobs._spare is None
