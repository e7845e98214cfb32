"""kill -9 at any moment: what was reported saved is still there; a crashed run resumes from
its last periodic checkpoint, from the CLI; a full disk is a message, and nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from napari_mtssl import api
from napari_mtssl.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]


def _spawn(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _kill_after_lines(proc: subprocess.Popen, n: int) -> list[str]:
    lines = []
    for _ in range(n):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return lines


@pytest.mark.parametrize("trial", range(6))
def test_kill_during_label_saves_loses_nothing_reported(tmp_path, trial, recorder):
    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=0)
    sid = ws.scan_ids("train")[0]
    proc = _spawn(
        f"""
        import numpy as np
        from napari_mtssl.workspace import Workspace
        ws = Workspace.open({str(ws.root)!r})
        shape = ws.record({sid!r}).shape
        for k in range(1, 1000):
            lab = np.zeros(shape, np.uint8)
            lab[k % shape[0], :k % 40 + 1, :5] = 1
            ws.set_labels({sid!r}, lab, slices=[k % shape[0]], by=f"save {{k}}")
            print(k, flush=True)
        """
    )
    lines = _kill_after_lines(proc, 3 + trial * 4)
    last = int(lines[-1]) if lines else 0
    w = Workspace.open(ws.root)
    z = last % w.record(sid).shape[0]
    ok = last == 0 or (w.labels(sid)[z, : last % 40 + 1, :5] == 1).all()
    outcome = "read correctly" if ok else "data lost"
    recorder.record(f"kill -9 during label saves #{trial}", outcome, f"after save {last}")
    assert ok, f"save {last} was reported but is gone"


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_kill_during_checkpoint_and_report_writes(tmp_path, trial, recorder):
    proc = _spawn(
        f"""
        import torch
        from napari_mtssl._atomic import atomic_write_json
        from napari_mtssl.models import build_unet
        from napari_mtssl.training.loop import checkpoints
        net = build_unet(1, 3, 8)
        opt = torch.optim.AdamW(net.parameters())
        for k in range(1, 10000):
            checkpoints.save_state({str(tmp_path)!r}, "unit", modules={{"net": net}},
                                   optimizer=opt, scaler=None, step=k)
            atomic_write_json({str(tmp_path / "report.json")!r}, {{"step": k, "x": [0.5] * 2000}})
            print(k, flush=True)
        """
    )
    lines = _kill_after_lines(proc, 2 + trial * 3)
    last = int(lines[-1]) if lines else 0
    import torch

    from napari_mtssl.models import build_unet
    from napari_mtssl.training.loop import checkpoints

    net = build_unet(1, 3, 8)
    opt = torch.optim.AdamW(net.parameters())
    info = checkpoints.load_state(
        tmp_path, "unit", modules={"net": net}, optimizer=opt, scaler=None
    )
    report = json.loads((tmp_path / "report.json").read_text())
    ok = info["step"] >= last and report["step"] >= last
    recorder.record(
        f"kill -9 during checkpoint + report writes #{trial}",
        "read correctly" if ok else "data lost",
        f"after {last}",
    )
    assert ok


@pytest.mark.slow
def test_killed_run_is_interrupted_and_resumes_from_the_cli(tmp_path, recorder):
    """A run killed by SIGKILL mid-training: its status says interrupted (not running
    forever), and `napari-mtssl resume` goes on from the last periodic checkpoint."""
    from napari_mtssl.cli import main

    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    proc = _spawn(
        f"""
        from napari_mtssl import api
        cfg = api.make_config("tiny", device="cpu", baseline__steps=400,
                              checkpoint_every_s=0.3, num_threads=1)
        for ev in api.train({str(ws.root)!r}, cfg, "baseline"):
            if ev.type == "progress" and ev.step % 10 == 0:
                print(ev.step, flush=True)
        """
    )
    lines = _kill_after_lines(proc, 6)
    assert lines, proc.stderr.read()
    killed_at = int(lines[-1])
    w = Workspace.open(ws.root)
    (run,) = w.runs()
    assert run.status == "interrupted"
    # recorded on disk, for scripts and other viewers that read the run's status file
    assert json.loads((run.path / "status.json").read_text())["status"] == "interrupted"
    events_before = len(run.events())
    rc = main(["resume", str(ws.root), "--quiet"])
    resumed = [e for e in run.events()[events_before:] if e["type"] == "resumed"]
    ok = rc == 0 and run.status == "done" and resumed and resumed[0]["step"] > 0
    lost = killed_at - resumed[0]["step"] if resumed else None
    recorder.record(
        "kill -9 mid-training, resume from the CLI",
        "read correctly" if ok else "data lost",
        f"killed near step {killed_at}, resumed at {resumed[0]['step'] if resumed else '-'}",
    )
    assert ok, (rc, run.status, resumed)
    assert lost is not None and lost < killed_at  # lost at most the last checkpoint interval


def _tiny_fs(tmp_path: Path, size: str) -> Path:
    mnt = tmp_path / "full"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode:
        pytest.skip(f"cannot mount a small file system here to fill it ({res.stderr.strip()})")
    return mnt


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system is full (unbuffered: no late flush)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_full_disk_is_a_message_and_loses_nothing(tmp_path, recorder):
    mnt = _tiny_fs(tmp_path, "2m")
    try:
        ws = api.create_workspace(mnt / "ws", source="sample", labelled=0)  # ~1.5 MB stored
        sid = ws.scan_ids("train")[0]
        shape = ws.record(sid).shape
        first = np.zeros(shape, np.uint8)
        first[0, :10, :10] = 1
        ws.set_labels(sid, first, slices=[0])
        _fill(mnt / "filler")
        big = np.random.default_rng(0).integers(0, 3, shape).astype(np.uint8)
        try:
            api.accept_correction(ws, sid, big, list(range(shape[0])))
            outcome, detail = "silently wrong", "a write on a full disk succeeded?"
        except OSError as exc:
            named = str(ws.root) in f"{exc.filename} {exc}"
            outcome = "clear message" if named else "traceback"
            detail = str(exc)
        kept = (Workspace.open(ws.root).labels(sid)[0, :10, :10] == 1).all()
        if not kept:
            outcome = "data lost"
        recorder.record("full disk during a correction", outcome, detail)
        assert outcome == "clear message", detail
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_in_the_cli_is_one_line(tmp_path, capsys, recorder):
    from napari_mtssl.cli import main

    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    api.run(api.train(ws, api.make_config("tiny", device="cpu"), "baseline"))
    mnt = _tiny_fs(tmp_path, "64k")
    try:
        _fill(mnt / "filler")
        sid = ws.scan_ids("val")[0]
        out = mnt / "mask.nii.gz"
        rc = main(
            [
                "predict",
                str(ws.root),
                sid,
                "--model",
                "baseline",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        err = capsys.readouterr().err.strip()
        ok = rc == 2 and len(err.splitlines()) == 1 and "mask.nii.gz" in err
        outcome = "clear message" if ok else "traceback"
        recorder.record("full disk in predict --out", outcome, err)
        assert ok, err
        assert not out.exists()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_run_the_disk_cannot_hold_is_refused_before_it_starts(tmp_path, capsys, recorder):
    """`train` on a disk with too little room: one line naming the folder, the space free and
    what the run would write; exit 2; no run folder left behind."""
    from napari_mtssl.cli import main

    mnt = _tiny_fs(tmp_path, "3m")
    try:
        ws = api.create_workspace(mnt / "ws", source="sample", labelled=2)
        rc = main(["train", str(ws.root), "--profile", "tiny", "--what", "all", "--device", "cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        ok = rc == 2 and len(err) == 1 and "MB free" in err[0] and str(ws.root) in err[0]
        recorder.record("train on a nearly full disk", "clear message" if ok else "traceback",
                        err[-1] if err else "")  # fmt: skip
        assert ok, err
        assert not any((ws.root / "runs").glob("*")) if (ws.root / "runs").exists() else True
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_disk_that_fills_during_training_is_one_line_and_resumable(tmp_path, capsys,
                                                                      monkeypatch, recorder):  # fmt: skip
    """Models that could not be saved (the disk filled while the run trained): one line that
    names the disk, says the finished models are kept and how to go on; exit 2."""
    from napari_mtssl.cli import main
    from napari_mtssl.training.errors import UnitsFailed

    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    msg = f"[Errno 28] No space left on device: '{ws.root}/runs/r/models/baseline.safetensors'"

    def full(*a, **k):
        raise UnitsFailed({"baseline": msg, "teacher:sdm": msg}, ws.root)
        yield  # a generator, as api.train is

    monkeypatch.setattr(api, "train", full)
    rc = main(["train", str(ws.root), "--profile", "tiny", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    ok = (rc == 2 and len(err) == 1 and "no space left on the disk of" in err[0]
          and "baseline, teacher:sdm" in err[0] and "resume" in err[0])  # fmt: skip
    recorder.record("disk full while training", "clear message" if ok else "traceback",
                    err[-1] if err else "")  # fmt: skip
    assert ok, err
