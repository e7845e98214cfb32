"""The docks' engine calls (Compare, Propose, the student's mask, Export) answered by a worker
process kept for the session: the same answers as the engine in process, progress and cancel
for the long one, the engine's own messages for failures, a new worker after a crash, and a
caller whose process never imports torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from napari_mtssl import api
from napari_mtssl import events as ev
from napari_mtssl.service import EngineError, EngineService, call
from napari_mtssl.training.running.jobs import drive


@pytest.fixture
def trained(trained_workspace):
    """The session's trained workspace (tests/conftest.py: the sample with a tiny baseline),
    which these tests only read; the one that adds a correction and a run takes a copy."""
    return trained_workspace


@pytest.fixture(scope="module")
def worker_threads():
    """The CPU threads torch takes in a new process, as the engine's worker does."""
    code = "import torch; print(torch.get_num_threads())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    return int(out.stdout.split()[-1])


@pytest.fixture
def as_a_worker(worker_threads, monkeypatch):
    """``answers(fn)``: ``fn()`` computed in this process as a worker may have computed it, at
    each precision it may have chosen: {"fp32": ..., "bf16": ...}.

    A process chooses bf16 on the CPU by timing it against fp32, once, so a busy machine can
    make the worker and this process choose differently; and a plan made here (a training, in
    this test session) leaves this process at the threads the machine's load allowed then. The
    few steps of the tiny profile leave classes within rounding of each other, so either
    difference changed masks when the machine was busy. The threads are the worker's here."""
    import torch

    from napari_mtssl.training.prediction import inference

    before = torch.get_num_threads()
    torch.set_num_threads(worker_threads)

    def answers(fn):
        out = {}
        for precision, speedup in (("fp32", 0.0), ("bf16", float("inf"))):
            monkeypatch.setattr(inference, "cpu_bf16_speedup", lambda s=speedup: s)
            try:
                out[precision] = fn()
            except RuntimeError:  # a build without bf16 kernels: its workers use fp32
                assert precision == "bf16"
        return out

    yield answers
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine():
    service = EngineService()
    yield service
    service.close()


def test_compare_and_predict_match_the_engine_in_process(trained, engine, as_a_worker):
    ws = trained
    sid = ws.scan_ids("val")[0]
    got = engine.run("compare", workspace=ws, scan=sid)
    wants = as_a_worker(lambda: api.compare(ws, sid))
    assert set(got.labels) == {"baseline"}
    # the worker's precision: the one at which this process gives the same masks
    same = [
        precision
        for precision, want in wants.items()
        if set(want.labels) == set(got.labels)
        and all(np.array_equal(got.labels[m], want.labels[m]) for m in want.labels)
    ]
    assert same, "the worker's masks are this process's at no precision"
    want = wants[same[0]]
    assert got.dice == pytest.approx(want.dice)
    assert got.teacher_mean is None  # not sent back: no dock shows it
    labels = engine.run("predict_labels", workspace=ws, scan=sid, model="baseline")
    predicted = as_a_worker(lambda: api.predict(ws, sid, model="baseline").labels)
    assert any(np.array_equal(labels, predicted[precision]) for precision in same)


def test_a_scan_compared_again_is_answered_from_what_was_kept(trained_workspace_copy):
    """Until a model or the scan's labels change: a correction changes the Dice shown."""
    from napari_mtssl import service

    ws = trained_workspace_copy
    sid = next(s for s in ws.scan_ids() if ws.labelled_slices(s))
    first = service._compare(str(ws.root), sid)
    assert service._compare(str(ws.root), sid) is first  # kept
    labels = np.array(ws.labels(sid))
    z = ws.labelled_slices(sid)[0]
    labels[z, :4, :4] = 1 - labels[z, :4, :4].clip(0, 1)
    api.accept_correction(ws, sid, labels, [z])
    again = service._compare(str(ws.root), sid)
    assert again is not first and np.array_equal(again.labels["baseline"], first.labels["baseline"])
    assert service._compare(str(ws.root), sid) is again
    # a new model (a retrain, another run) makes it compare again
    api.run(api.train(ws, api.make_config("tiny", device="cpu"), "baseline"))
    assert service._compare(str(ws.root), sid) is not again


def test_propose_reports_progress_and_cancels(trained, engine):
    ws = trained
    seen: list[ev.Event] = []
    found = engine.run(
        "propose", on_event=seen.append, workspace=ws, k=3, strategy="entropy", max_scans=3
    )
    assert 1 <= len(found) <= 3 and all(ws.record(c.scan) for c in found)
    counted = [e for e in seen if isinstance(e, ev.Status)]
    assert counted and 1 <= counted[-1].total <= 3  # scan by scan, at most the 3 asked for
    assert [e.done for e in counted] == list(range(counted[-1].total + 1))
    assert {e.message for e in counted[:-1]} <= set(ws.scan_ids("train"))

    # cancelled after the first scan: the worker's stop flag, read before each scan
    asked = iter([False])  # False once, then True (StopIteration's default)
    job = call(
        "propose",
        {"workspace": str(ws.root), "k": 3, "strategy": "entropy"},
        stop=lambda: next(asked, True),
    )
    seen = []
    assert drive(job, seen.append) == {"stopped": True}
    assert [type(e) for e in seen] == [ev.Status]
    cancel_before = threading.Event()
    cancel_before.set()  # cancelled while it waited for its turn: never runs
    assert engine.run("propose", cancel=cancel_before, workspace=ws, k=3) is None


def test_failures_name_the_problem_and_a_killed_worker_is_replaced(trained, engine):
    ws = trained
    with pytest.raises(EngineError, match="no_such_scan"):
        engine.run("compare", workspace=ws, scan="no_such_scan")
    with pytest.raises(EngineError, match="teacher:moco"):
        engine.run("predict_labels", workspace=ws, scan=ws.scan_ids("val")[0], model="teacher:moco")
    with pytest.raises(ValueError, match="no engine call named"):
        engine.run("train", workspace=ws)
    # the operating system ends the worker (out of memory, say): the next call gets a new one
    old = engine._worker
    assert old is not None and old.usable
    os.kill(old._process.pid, signal.SIGKILL)
    old._process.join(10)
    labels = engine.run(
        "predict_labels", workspace=ws, scan=ws.scan_ids("val")[0], model="baseline"
    )
    assert labels.dtype == np.uint8 and engine._worker is not old


def test_export_writes_where_asked_and_refuses_to_replace(trained, engine, tmp_path):
    out = tmp_path / "baseline.onnx"
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package (the export extra)")
    written = engine.run("export", workspace=trained, model="baseline", fmt="onnx", out=out)
    assert written == str(out) and out.stat().st_size > 1000
    with pytest.raises(EngineError, match="baseline.onnx"):
        engine.run("export", workspace=trained, model="baseline", fmt="onnx", out=out)


def test_a_service_prepared_for_a_workspace_answers(trained, as_a_worker):
    """Prepared when a workspace with models opens: the worker predicts one scan while it
    waits, then answers as one made at the call does."""
    service = EngineService()
    try:
        service.prepare(trained, when=lambda: bool(api.list_models(trained)))
        deadline = time.monotonic() + 600  # a hang guard: a busy machine's imports take minutes
        while not service.started and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.started
        sid = trained.scan_ids("val")[0]
        labels = service.run("predict_labels", workspace=trained, scan=sid, model="baseline")
        predicted = as_a_worker(lambda: api.predict(trained, sid, model="baseline").labels)
        assert any(np.array_equal(labels, answer) for answer in predicted.values())
        worker = service._worker
        service.prepare(trained, refresh=True)  # a run ended: the same worker, warmed again
        assert service.run("warm", workspace=trained) is None and service._worker is worker
    finally:
        service.close()


def test_a_worker_serving_a_call_is_never_replaced(trained, engine):
    """A run ends while Compare is computing: the session prepares the engine again, which
    must leave the busy worker alone (it once ended it, and the Compare with it)."""
    worker = engine._ready()
    worker.state = "running"  # as while a call runs
    try:
        assert engine._ready(trained) is worker and worker._process.is_alive()
    finally:
        worker.state = "idle"
    sid = trained.scan_ids("val")[0]
    assert engine.run("predict_labels", workspace=trained, scan=sid, model="baseline") is not None


def test_a_closed_service_refuses_calls(trained):
    service = EngineService()
    service.close()
    with pytest.raises(EngineError, match="ended"):
        service.run("compare", workspace=trained, scan=trained.scan_ids("val")[0])


def test_the_callers_process_never_imports_torch(trained):
    """What the viewer gains: the comparison arrives and torch stays out of its process."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from napari_mtssl.service import EngineService
        service = EngineService()
        comparison = service.run("compare", workspace={str(trained.root)!r},
                                 scan={trained.scan_ids("val")[0]!r})
        found = service.run("propose", workspace={str(trained.root)!r}, k=2, max_scans=2)
        service.close()
        print(json.dumps({{"models": sorted(comparison.labels), "found": len(found),
                          "torch": "torch" in sys.modules, "monai": "monai" in sys.modules}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"models": ["baseline"], "found": 2, "torch": False, "monai": False}
