from __future__ import annotations

import json
import time

import pytest

from napari_mtssl.workspace import RUN_STATUSES, Run, Workspace, WorkspaceError


def test_new_run_layout_and_round_trip(ws: Workspace) -> None:
    run = ws.new_run("stage1", {"lr": 0.01, "tasks": ["sdm", "rotation"]})
    assert run.path.parent == ws.root / "runs" and run.path.name == run.id
    assert run.kind == "stage1" and run.round == 0 and run.status == "running"
    for name in ("run.json", "config.json", "status.json"):
        json.loads((run.path / name).read_text())
    assert run.config == {"lr": 0.01, "tasks": ["sdm", "rotation"]}
    again = Workspace.open(ws.root).run(run.id)
    assert again == run and again.kind == "stage1" and again.config == run.config


def test_status_and_metrics(ws: Workspace) -> None:
    run = ws.new_run("baseline", {}, round=3)
    assert run.round == 3
    run.set_status("done", seconds=12.5)
    assert run.status == "done"
    info = Run(run.path).status_info()
    assert info["seconds"] == 12.5 and "time" in info
    with pytest.raises(ValueError, match="run status must be one of"):
        run.set_status("finished")
    assert RUN_STATUSES == ("running", "done", "stopped", "failed", "interrupted")
    assert run.metrics() == {}
    run.write_metrics({"baseline": {"dice": 0.5}})
    run.write_metrics({"student": {"dice": 0.7}}, merge=True)
    assert run.metrics() == {"baseline": {"dice": 0.5}, "student": {"dice": 0.7}}
    run.write_metrics({"x": 1})
    assert Run(run.path).metrics() == {"x": 1}


def test_events_and_torn_last_line(ws: Workspace) -> None:
    run = ws.new_run("stage2", {})
    assert run.events() == []
    for i in range(3):
        run.append_event({"type": "step", "step": i, "loss": 1.0 / (i + 1)})
    assert [e["step"] for e in Run(run.path).events()] == [0, 1, 2]
    # a writer killed mid-line
    with open(run.events_path, "ab") as fh:
        fh.write(b'{"type": "step", "st')
    assert [e["step"] for e in run.events()] == [0, 1, 2]
    # a resumed writer starts on a fresh line, so its events are not glued to the torn one
    resumed = Run(run.path)
    resumed.append_event({"type": "step", "step": 3})
    assert [e["step"] for e in run.events()] == [0, 1, 2, 3]
    assert run.events_path.read_bytes().endswith(b"\n")


def test_model_paths(ws: Workspace) -> None:
    run = ws.new_run("stage1", {})
    assert run.models() == []
    p = run.model_path("teacher:sdm")
    assert p.parent == run.path / "models" and p.suffix == ".safetensors"
    assert ":" not in p.name and "/" not in p.name
    p.write_bytes(b"weights")
    run.model_meta_path("teacher:sdm").write_text("{}")
    run.model_path("student").write_bytes(b"w")
    run.model_path("a/b").write_bytes(b"w")
    (run.path / "models" / ".student.safetensors.123.tmp").write_bytes(b"")  # half-written
    run.model_meta_path("only-meta").write_text("{}")  # no weights: not listed
    assert run.models() == ["a/b", "student", "teacher:sdm"]
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError, match="invalid model name"):
            run.model_path(bad)
    ck = run.checkpoint_dir
    assert ck.is_dir() and ck.parent == run.path


def test_runs_order_and_latest(ws: Workspace) -> None:
    a = ws.new_run("stage1", {})
    b = ws.new_run("stage1", {})  # same second: still a distinct folder
    c = ws.new_run("baseline", {})
    assert len({a.id, b.id, c.id}) == 3
    assert [r.id for r in ws.runs()] == [a.id, b.id, c.id]
    assert ws.latest_run() is None  # none done yet
    a.set_status("done")
    b.set_status("failed")
    c.set_status("done")
    assert ws.latest_run("stage1") == a
    assert ws.latest_run() == c
    assert ws.latest_run("stage1", status=None) == b
    assert ws.latest_run("stage2") is None
    ws.add_round({"x": 1})
    assert ws.new_run("stage2", {}).round == 1


def test_the_one_resume_rule(ws: Workspace) -> None:
    """The CLI's resume and the Training dock's Resume go on with the same run: the newest
    unfinished run that planned, unless a run finished after it."""
    a, b, c = (ws.new_run("all", {}) for _ in range(3))
    for run in (a, b, c):
        (run.path / "plan.json").write_text("{}")
    a.set_status("stopped")
    b.set_status("interrupted")
    c.set_status("failed")
    assert ws.resumable_run() == c
    (c.path / "plan.json").unlink()  # stopped while planning: nothing to go on from
    assert ws.resumable_run() == b
    c.set_status("done")  # a run finished since: the unfinished ones are history
    assert ws.resumable_run() is None


def test_incomplete_and_missing_runs(ws: Workspace) -> None:
    (ws.root / "runs" / "half-created").mkdir(parents=True)  # killed before run.json
    assert ws.runs() == []
    with pytest.raises(WorkspaceError, match="no run"):
        ws.run("half-created")
    with pytest.raises(WorkspaceError, match="no run"):
        ws.run("../..")
    run = ws.new_run("stage1", {})
    (run.path / "config.json").write_text("{broken")
    with pytest.raises(WorkspaceError, match=r"config\.json.*not valid JSON"):
        _ = run.config
    data = json.loads((run.path / "run.json").read_text())
    data["version"] = 9
    (run.path / "run.json").write_text(json.dumps(data))
    with pytest.raises(WorkspaceError, match="newer napari-mtssl"):
        ws.run(run.id)


def test_run_ids_sort_by_time(ws: Workspace) -> None:
    first = ws.new_run("b-kind", {})
    time.sleep(0.01)
    second = ws.new_run("a-kind", {})
    assert [r.id for r in ws.runs()] == [first.id, second.id]


def test_a_run_whose_process_is_gone_is_recorded_interrupted(ws: Workspace) -> None:
    """A run marked running by a process of this machine that has ended: the first reader
    records it interrupted in status.json (what a script or another viewer reads), unless the
    status changed after it was read (a resume took the run over)."""
    import json
    import subprocess
    import sys

    from napari_mtssl.workspace.runs import _owner

    run = ws.new_run("baseline", {})
    run.set_status("running")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    info = {**run.status_info(), "pid": int(gone.stdout), "pid_created": None}
    (run.path / "status.json").write_text(json.dumps(info))
    assert run.status == "interrupted"
    on_disk = json.loads((run.path / "status.json").read_text())
    assert on_disk["status"] == "interrupted" and on_disk["owner_gone"]["pid"] == int(gone.stdout)
    assert run.status == "interrupted"  # and it stays so
    # a resume that took over between the read and the write is not overwritten
    stale = dict(info)
    run.set_status("running")
    run._mark_interrupted(stale)
    assert run.status_info()["status"] == "running"
    assert run.status_info()["pid"] == _owner()["pid"]
