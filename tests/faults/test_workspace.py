"""A tampered or damaged workspace: refused with a message naming the file, never a write
outside the workspace, never a traceback, never a lost label."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from napari_mtssl import api
from napari_mtssl.workspace import Workspace
from tests.faults.conftest import classify
from tests.workspace.conftest import SRC, dead_pid


@pytest.fixture
def ws(tmp_path):
    w = api.create_workspace(tmp_path / "ws", source="sample", labelled=1)
    return w


def _edit_json(ws, change):
    data = json.loads(ws.file.read_text())
    change(data)
    ws.file.write_text(json.dumps(data))


def test_stored_scan_pointing_outside_is_refused(ws, tmp_path, recorder):
    victim = tmp_path / "precious.nii.gz"
    victim.write_bytes(b"someone else's file")
    sid = ws.scan_ids()[0]

    def change(d):
        for s in d["scans"]:
            if s["id"] == sid:
                s["path"] = str(victim)

    _edit_json(ws, change)

    def act():
        w = Workspace.open(ws.root)
        w.remove_scan(sid)

    outcome, detail = classify(act, names=[ws.file], expect_error=True)
    if not victim.exists():
        outcome = "data lost"
    recorder.record("stored scan outside the workspace", outcome, detail)
    assert outcome == "clear message", detail
    assert victim.read_bytes() == b"someone else's file"


def test_symlinked_labels_folder_is_refused(ws, tmp_path, recorder):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    labels = ws.root / "labels"
    for f in labels.iterdir():
        if f.is_file():
            os.replace(f, outside / f.name)
    labels.rmdir() if not any(labels.iterdir()) else None
    if labels.exists():
        import shutil

        shutil.rmtree(labels)
    labels.symlink_to(outside, target_is_directory=True)
    outcome, detail = classify(lambda: Workspace.open(ws.root), names=["labels"], expect_error=True)
    recorder.record("labels/ is a symlink", outcome, detail)
    assert outcome == "clear message", detail


@pytest.mark.parametrize(
    "case,content",
    [("garbage workspace.json", "{not json"), ("empty workspace.json", ""), ("a list", "[]")],
)
def test_damaged_workspace_file(ws, case, content, recorder):
    ws.file.write_text(content)
    outcome, detail = classify(lambda: Workspace.open(ws.root), names=[ws.file], expect_error=True)
    recorder.record(case, outcome, detail)
    assert outcome == "clear message", detail


def test_damaged_label_file(ws, recorder):
    sid = next(s for s in ws.scan_ids() if ws.labelled_slices(s))
    (ws.root / "labels" / f"{sid}.npz").write_bytes(b"PK\x03\x04 torn")
    outcome, detail = classify(
        lambda: Workspace.open(ws.root).labels(sid), names=[f"{sid}.npz"], expect_error=True
    )
    recorder.record("torn label file", outcome, detail)
    assert outcome == "clear message", detail


def test_nan_in_an_in_memory_scan_trains(tmp_path, recorder):
    """NaN voxels of a scan given from memory: stored as given (the user's data), and the
    training normalisation treats them as the scan's minimum instead of failing."""
    from napari_mtssl.sample import make_sample_study

    study = make_sample_study(n_scans=3, n_labelled=3, shape=(4, 48, 48))
    w = Workspace.create(tmp_path / "w", label_names=dict(study.label_names))
    for i, (scan, lab) in enumerate(zip(study.scans, study.labels)):
        if i == 0:
            scan.array = scan.array.copy()
            scan.array[:, :5, :5] = np.nan
        sid = w.add_scan(scan, split="val" if i == 2 else "train")
        w.set_labels(sid, lab, slices=range(lab.shape[0]))
    cfg = api.make_config("tiny", device="cpu", tasks=["inpaint"])

    def act():
        return api.run(api.train(w, cfg, "baseline"))

    outcome, detail = classify(
        act,
        names=[],
        expect_error=False,
        check=lambda r: np.isfinite(r["models"]["baseline"]["mean_dice"]),
    )
    recorder.record("NaN voxels in an in-memory scan", outcome, detail)
    assert outcome == "read correctly", detail


@pytest.mark.parametrize("content", ["garbage", "[1, 2]", '{"models": 5}'])
def test_damaged_run_state_is_named_on_resume(ws, content, capsys, recorder):
    """A stopped run whose pipeline.json is damaged: resume names the file, says it is damaged
    and how to recover (not "finished", not a traceback); the run's models stay listed as not
    finished rather than breaking the model list."""
    from napari_mtssl.cli import main

    cfg = api.make_config("tiny", device="cpu")
    run = ws.new_run("baseline", cfg.to_dict())
    run.set_status("stopped")
    (run.path / "pipeline.json").write_text(content)
    rc = main(["resume", str(ws.root), run.id])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    ok = rc == 2 and "pipeline.json" in err and "damaged" in err and "new run" in err
    recorder.record(f"pipeline.json holds {content!r}", "clear message" if ok else "traceback", err)
    assert ok, (rc, err)
    assert run.finished_models() == []


@pytest.mark.slow
def test_racing_breakers_of_one_stale_lock_never_both_hold_it(tmp_path: Path, recorder) -> None:
    """Many trials: a stale lock file (its owner dead), and processes that find it at the same
    instant and each break it and take the lock. Inside the lock each creates a marker with
    O_EXCL: if two ever held the lock at once, one would find the other's marker."""
    code = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {SRC!r})
        from pathlib import Path
        from napari_mtssl.workspace._lock import FileLock
        folder, trials, me = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
        clashes = 0
        for t in range(trials):
            go = folder / f"go{{t}}"
            while not go.exists():
                time.sleep(0.0005)
            with FileLock(folder / f"lock{{t}}", timeout=20):
                try:
                    fd = os.open(folder / f"inside{{t}}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    clashes += 1
                else:
                    os.close(fd)
                    time.sleep(0.002)
                    os.unlink(folder / f"inside{{t}}")
        print(clashes, flush=True)
        """
    )
    trials = 150
    stale = {"pid": dead_pid(), "host": socket.gethostname(), "time": time.time()}
    for t in range(trials):
        (tmp_path / f"lock{t}").write_text(json.dumps(stale))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), str(trials), str(i)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    time.sleep(2.0)  # the interpreters start
    for t in range(trials):
        (tmp_path / f"go{t}").touch()  # all of them find the same stale lock at once
        time.sleep(0.01)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    ok = all(p.returncode == 0 for p in procs) and [o.strip() for o in outs] == ["0"] * 3
    outcome = "read correctly" if ok else "silently wrong"  # two holders: writes could clash
    recorder.record(f"three breakers of one stale lock, {trials} trials", outcome, repr(outs))
    assert ok, outs
    assert not any(tmp_path.glob("lock*"))  # every trial's lock was released
