"""Units on executors: side by side in processes, on Ray, and a unit that fails alone."""

from __future__ import annotations

import hashlib

import pytest
from safetensors.torch import load_file

from napari_mtssl import api
from napari_mtssl.training.loop import stages
from napari_mtssl.training.running.pipeline import UnitsFailed, run_training


def _digest(run, model: str) -> str:
    w = load_file(str(run.model_path(model)))
    h = hashlib.sha256()
    for k in sorted(w):
        h.update(k.encode())
        h.update(w[k].float().numpy().tobytes())
    return h.hexdigest()


def _stage1(tmp_path, name, **kw):
    ws = api.create_workspace(tmp_path / name, source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu", num_threads=1, **kw)
    events: list[dict] = []
    report = api.run(run_training(ws, cfg, "stage1"), events.append)
    return ws, report, events


TEACHERS = ("teacher:sdm", "teacher:rubik")


@pytest.fixture(scope="module")
def inline(tmp_path_factory):
    return _stage1(tmp_path_factory.mktemp("inline"), "ws", executor="inline")


@pytest.mark.slow
def test_local_executor_trains_units_side_by_side_with_the_same_results(
    inline, tmp_path, monkeypatch
):
    from napari_mtssl.training.running import jobs

    workers: list[int] = []
    start = jobs.JobWorker.__init__

    def counted(self, *a, **kw):
        start(self, *a, **kw)
        workers.append(self._process.pid)

    monkeypatch.setattr(jobs.JobWorker, "__init__", counted)
    ws_a, rep_a, _ = inline
    ws_b, rep_b, events = _stage1(tmp_path, "ws", executor="local", units_at_once=2)
    # every unit ran in one of the two lanes' workers (started once, kept for the run)
    assert len(workers) == 2
    notes = [e.message for e in events if e.type == "note"]
    assert any("2 units at once (local executor" in n for n in notes), notes
    # every unit's progress reaches the one event stream
    models = {e.model for e in events if e.type == "progress"}
    assert models == {"sdm:joint", "sdm:pretrain", "rubik:joint", "rubik:pretrain"}
    assert rep_b["selected"] == rep_a["selected"]
    for m, entry in rep_a["models"].items():  # one thread per unit in both: the same numbers
        assert rep_b["models"][m]["mean_dice"] == pytest.approx(entry["mean_dice"], abs=1e-6), m
    run_a, run_b = ws_a.run(rep_a["run"]), ws_b.run(rep_b["run"])
    assert all(_digest(run_a, t) == _digest(run_b, t) for t in TEACHERS)


def test_a_failed_unit_leaves_the_others_and_resume_trains_only_it(tmp_path, monkeypatch):
    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu", num_threads=1, executor="inline")
    joint = stages.joint

    def broken(task, *a, **kw):
        if task == "rubik":
            raise RuntimeError("the GPU fell off")
        return joint(task, *a, **kw)

    monkeypatch.setattr(stages, "joint", broken)
    with pytest.raises(RuntimeError, match="GPU fell off"):
        api.run(run_training(ws, cfg, "stage1"))
    (run,) = ws.runs()
    assert run.status == "failed"
    finished = set(run.finished_models())
    assert {"sdm:joint", "sdm:pretrain", "teacher:sdm", "rubik:pretrain"} <= finished
    assert "rubik:joint" not in finished
    before = run.model_path("teacher:sdm").stat().st_mtime_ns
    monkeypatch.setattr(stages, "joint", joint)
    events: list[dict] = []
    report = api.run(run_training(ws, cfg, "stage1", resume=run.id), events.append)
    assert [e.model for e in events if e.type == "model_done"] == ["rubik:joint"]
    assert [e.task for e in events if e.type == "selected"] == ["rubik"]
    assert run.model_path("teacher:sdm").stat().st_mtime_ns == before
    assert set(report["selected"]) == {"sdm", "rubik"}


def test_units_failed_names_each_unit():
    err = UnitsFailed({"rubik:joint": "out of memory", "sdm:joint": "killed"})
    assert "rubik:joint: out of memory" in str(err) and "2 unit(s) failed" in str(err)
    assert "resuming the run trains only what is missing" in str(err)


def test_unreachable_ray_cluster_is_a_clear_error_before_training(tmp_path):
    pytest.importorskip("ray", reason="Ray is the optional extra napari-mtssl[ray]")
    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu", executor="ray", ray_address="ray://127.0.0.1:9")
    with pytest.raises(ValueError, match="cannot reach the Ray cluster at 'ray://127.0.0.1:9'"):
        api.run(run_training(ws, cfg, "stage1"))
    assert ws.runs() == []  # nothing was started


@pytest.mark.slow
def test_ray_executor_trains_the_same_teachers(inline, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is the optional extra napari-mtssl[ray]")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ws_b, rep_b, events = _stage1(tmp_path, "ws", executor="ray", units_at_once=2)
    finally:
        ray.shutdown()
    ws_a, rep_a, _ = inline
    assert rep_b["selected"] == rep_a["selected"]
    run_a, run_b = ws_a.run(rep_a["run"]), ws_b.run(rep_b["run"])
    assert all(_digest(run_a, t) == _digest(run_b, t) for t in TEACHERS)
    assert {e.model for e in events if e.type == "progress"} >= {"sdm:joint", "rubik:joint"}


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_unit_since_its_checkpoint(tmp_path):
    """kill -9 of one unit's process: the other units finish, the run fails naming the unit,
    and resume goes on from that unit's last checkpoint."""
    import os
    import signal

    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    cfg = api.make_config(
        "tiny",
        device="cpu",
        executor="local",
        units_at_once=2,
        stage1__tasks=["sdm", "rubik"],
        stage1__modes="joint",
        stage1__joint_steps=400,
        stage1__eval_every=400,
        checkpoint_every_s=0.2,
    )
    from napari_mtssl.training.running import jobs

    seen: dict[str, int] = {}
    killed: list[int] = []

    def on(e) -> None:
        if e.type == "progress":
            seen[e.model] = e.step
        if not killed and seen.get("sdm:joint", 0) >= 100:
            pids = [j._process.pid for j in list(jobs._LIVE) if j._process.is_alive()]
            for pid in pids:  # one of the two units' processes
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break

    with pytest.raises(UnitsFailed, match="ended unexpectedly"):
        api.run(run_training(ws, cfg, "stage1"), on)
    (run,) = ws.runs()
    assert run.status == "failed" and killed
    done = set(run.finished_models())
    lost = {"sdm:joint", "rubik:joint"} - done
    assert len(lost) == 1  # the other unit finished
    (unit,) = lost
    first: list[int] = []
    api.run(
        run_training(ws, cfg, "stage1", resume=run.id),
        lambda e: first.append(e.step) if e.type == "progress" and not first else None,
    )
    assert first[0] > 1  # went on from its checkpoint, not from the start
    assert set(ws.run(run.id).finished_models()) >= {"teacher:sdm", "teacher:rubik"}


def test_a_stop_between_two_units_stops_the_run(tmp_path):
    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu", executor="inline")
    done: list[str] = []

    def on(e) -> None:
        if e.type == "model_done":
            done.append(e.model)

    res = api.run(run_training(ws, cfg, "stage1", stop=lambda: bool(done)), on)
    assert res["stopped"] is True and done == ["sdm:joint"]
    (run,) = ws.runs()
    assert run.status == "stopped" and run.finished_models() == ["sdm:joint"]
    report = api.run(run_training(ws, cfg, "stage1", resume=run.id))
    assert set(report["selected"]) == {"sdm", "rubik"} and run.status == "done"
