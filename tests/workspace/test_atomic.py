"""A process killed in the middle of a write leaves one of the saved states."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import napari_mtssl._atomic as atomic
from napari_mtssl.workspace import Workspace

from .conftest import make_scan

SRC = str(Path(__file__).resolve().parents[2] / "src")
SHAPE = (4, 6, 5)


class Crash(Exception):
    pass


def _crash_on_replace(monkeypatch: pytest.MonkeyPatch, n: int) -> list[str]:
    """Make the n-th os.replace of the atomic writer raise, as if killed just before it."""
    seen: list[str] = []
    real = os.replace

    def replace(src, dst):  # noqa: ANN001
        seen.append(str(dst))
        if len(seen) == n:
            raise Crash(f"killed before replacing {dst}")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    return seen


def _state(ws: Workspace) -> dict:
    """Everything a user can observe, read through a fresh handle."""
    fresh = Workspace.open(ws.root)
    out: dict = {
        "names": fresh.label_names,
        "ids": fresh.scan_ids(),
        "records": [fresh.record(s) for s in fresh.scan_ids()],
        "rounds": fresh.rounds(),
    }
    for sid in fresh.scan_ids():
        out[sid] = (
            fresh.labels(sid).tolist(),
            fresh.slice_status(sid),
            [fresh.provenance(sid, z) for z in range(fresh.record(sid).shape[0])],
        )
    return out


def _no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob(".*.tmp")] and not list(root.rglob(".*.nii.gz"))


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_set_labels_crash_at_each_write(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    sid = ws.add_scan(make_scan())
    first = np.zeros(SHAPE, np.uint8)
    first[1, 1:3, 1:3] = 1
    ws.set_labels(sid, first)
    before = _state(ws)
    seen = _crash_on_replace(monkeypatch, crash_at)
    second = np.zeros(SHAPE, np.uint8)
    second[1:3, 2:4, 2:4] = 2
    with pytest.raises(Crash):
        ws.set_labels(sid, second, status="corrected", model="student")
    monkeypatch.undo()
    assert len(seen) == crash_at  # history, provenance, mask: the crash hit each in turn
    assert _state(ws) == before
    assert _no_temp_files(ws.root)
    # and the store keeps working: the write goes through and undo returns to `before`
    ws.set_labels(sid, second, status="corrected")
    assert ws.slice_status(sid)[1:3] == ["corrected", "corrected"]
    assert len(ws.provenance(sid, 1)) == 2
    ws.undo_last(sid)
    assert _state(ws) == before


@pytest.mark.parametrize("crash_at", [1, 2])
def test_undo_crash(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    sid = ws.add_scan(make_scan())
    lab = np.zeros(SHAPE, np.uint8)
    lab[0, 0, 0] = 1
    ws.set_labels(sid, lab)
    lab[2, 0, 0] = 1
    ws.set_labels(sid, lab, slices=[0, 2], status="corrected")
    before = _state(ws)[sid]
    copy = tmp_path / "copy"
    shutil.copytree(ws.root, copy)
    Workspace.open(copy).undo_last(sid)
    after = _state(Workspace.open(copy))[sid]
    assert after != before
    _crash_on_replace(monkeypatch, crash_at)
    with pytest.raises(Crash):
        ws.undo_last(sid)
    monkeypatch.undo()
    # the mask file is the commit point: before it the undo did not happen, after it it did
    assert _state(ws)[sid] == (before if crash_at == 1 else after)
    assert _no_temp_files(ws.root)


def test_workspace_json_crash_keeps_old(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = ws.add_scan(make_scan())
    before = _state(ws)
    _crash_on_replace(monkeypatch, 1)
    with pytest.raises(Crash):
        ws.set_split(sid, "val")
    monkeypatch.undo()
    assert _state(ws) == before
    _crash_on_replace(monkeypatch, 2)  # stored copy written, workspace.json not
    with pytest.raises(Crash):
        ws.add_scan(make_scan(name="other"))
    monkeypatch.undo()
    assert _state(ws) == before
    assert _no_temp_files(ws.root)
    assert not (ws.root / "workspace.lock").exists()


def test_interrupted_mid_bytes_keeps_old_file(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after half the bytes of the new mask file: the old file is still whole."""
    sid = ws.add_scan(make_scan())
    ws.set_labels(sid, np.ones(SHAPE, np.uint8))
    before = _state(ws)

    def half_write(path, data):  # noqa: ANN001
        with atomic.atomic_open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
            raise Crash("killed mid-write")

    monkeypatch.setattr(atomic, "atomic_write_bytes", half_write)
    with pytest.raises(Crash):
        ws.set_labels(sid, np.full(SHAPE, 2, np.uint8), status="corrected")
    with pytest.raises(Crash):
        ws.add_round({"x": 1})
    monkeypatch.undo()
    assert _state(ws) == before
    assert _no_temp_files(ws.root)


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    import os, time
    import numpy as np
    import napari_mtssl._atomic as atomic
    from napari_mtssl.workspace import Workspace
    # A slow disk: widens the gaps between the files of one change, where a kill is most
    # likely to expose an inconsistent commit order.
    real_fsync = os.fsync
    def slow_fsync(fd):
        time.sleep(0.004)
        real_fsync(fd)
    atomic.os.fsync = slow_fsync
    ws = Workspace.open(sys.argv[1])
    base = np.load(sys.argv[3])
    i = len(ws.rounds())
    while True:
        status = "corrected" if i % 2 else "annotated"
        ws.set_labels("big", ((base + i) % 3).astype(np.uint8), slices=range(base.shape[0]),
                      status=status, by=f"w{i}")
        ws.add_round({"i": i})
        if i == 0:
            print("ready", flush=True)
        i += 1
    """
)


@pytest.mark.parametrize("delay", [0.15, 0.4, 0.75])
def test_sigkill_while_writing_large_labels(tmp_path: Path, delay: float) -> None:
    """Kill a writer process at an arbitrary moment; reopen: exactly one saved state."""
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL (POSIX)")
    ws = Workspace.create(tmp_path / "ws", label_names={0: "bg", 1: "a", 2: "b"})
    shape = (12, 128, 128)
    ws.add_scan(make_scan(shape=shape), scan_id="big")
    base = np.random.default_rng(0).integers(0, 3, size=shape).astype(np.uint8)
    np.save(tmp_path / "base.npy", base)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(ws.root), SRC, str(tmp_path / "base.npy")],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    fresh = Workspace.open(ws.root)
    mask = fresh.labels("big")
    matches = [k for k in range(3) if np.array_equal(mask, (base + k) % 3)]
    assert len(matches) == 1, "mask is not one of the saved volumes"
    status = fresh.slice_status("big")
    assert len(set(status)) == 1 and status[0] in ("annotated", "corrected")
    last = [fresh.provenance("big", z)[-1] for z in range(shape[0])]
    assert len({e["by"] for e in last}) == 1
    i = int(last[0]["by"][1:])
    assert i % 3 == matches[0]
    assert status[0] == ("corrected" if i % 2 else "annotated") == last[0]["status"]
    assert all(len(fresh.provenance("big", z)) == i + 1 for z in range(shape[0]))
    rounds = fresh.rounds()
    assert [r["i"] for r in rounds] == list(range(len(rounds)))
    assert len(rounds) in (i, i + 1)  # killed before or after this write's round entry
    # the stale lock of the killed process does not block the next writer; undo still works
    fresh.lock.timeout = 2.0
    fresh.add_round({"i": len(rounds)})
    if i > 0:
        fresh.undo_last("big")
        assert np.array_equal(fresh.labels("big"), (base + i - 1) % 3)


def test_written_files_get_normal_permissions(tmp_path):
    """A new file gets 0666 less the umask (not mkstemp's 0600); a replaced file keeps its own
    mode, so a workspace or a mask shared with a colleague stays readable."""
    from napari_mtssl._atomic import UMASK, atomic_write_text, atomic_write_with

    plain = 0o666 & ~UMASK  # what open() gives a new file under this process's umask
    new = tmp_path / "new.json"
    atomic_write_text(new, "{}")
    assert new.stat().st_mode & 0o777 == plain
    shared = tmp_path / "shared.json"
    shared.write_text("{}")
    shared.chmod(0o664)
    atomic_write_text(shared, '{"a": 1}')
    assert shared.stat().st_mode & 0o777 == 0o664
    lib = tmp_path / "lib.txt"
    atomic_write_with(lib, lambda p: p.write_text("x"))
    assert lib.stat().st_mode & 0o777 == plain
