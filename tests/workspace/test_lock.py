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

from napari_mtssl.workspace import Workspace, WorkspaceError
from napari_mtssl.workspace._lock import FileLock, LockTimeout

from .conftest import SRC, dead_pid, make_scan


def test_lock_is_exclusive_and_reentrant(tmp_path: Path) -> None:
    a = FileLock(tmp_path / "l", timeout=0.05)
    b = FileLock(tmp_path / "l", timeout=0.05)
    with a:
        with a:  # re-entrant for its holder
            assert a.held
        assert (tmp_path / "l").exists()
        with pytest.raises(LockTimeout, match=f"process {os.getpid()}"):
            b.acquire()
    assert not (tmp_path / "l").exists()
    with b:
        pass


def test_stale_lock_of_dead_process_is_broken(tmp_path: Path) -> None:
    path = tmp_path / "l"
    info = {"pid": dead_pid(), "host": socket.gethostname(), "time": time.time()}
    path.write_text(json.dumps(info))
    with FileLock(path, timeout=0.5):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_lock_from_other_host_respected_until_old(tmp_path: Path) -> None:
    path = tmp_path / "l"
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": time.time()}))
    with pytest.raises(LockTimeout, match="elsewhere"):
        FileLock(path, timeout=0.05, stale_after=60).acquire()
    old = time.time() - 3600
    os.utime(path, (old, old))
    with FileLock(path, timeout=0.5, stale_after=60):
        pass
    # an unreadable lock file (crash between create and write) is broken once it is old
    path.write_text("")
    with pytest.raises(LockTimeout):
        FileLock(path, timeout=0.05).acquire()
    os.utime(path, (old, old))
    with FileLock(path, timeout=0.5):
        pass


def test_writes_wait_for_lock_reads_do_not(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan())
    other = FileLock(ws.root / "workspace.lock")
    ws.lock.timeout = 0.1
    with other:
        assert ws.scan_ids() == [sid]  # reads never block
        assert ws.labels(sid).shape == (4, 6, 5)
        with pytest.raises(WorkspaceError, match=r"workspace\.lock.*locked by process"):
            ws.set_split(sid, "val")
        with pytest.raises(WorkspaceError, match="locked"):
            ws.set_labels(sid, np.ones((4, 6, 5), np.uint8))
    assert ws.record(sid).split == "train" and ws.labelled_slices(sid) == []
    ws.set_split(sid, "val")


def test_two_processes_writing_lose_nothing(ws: Workspace) -> None:
    """Concurrent read-modify-write of workspace.json from two processes keeps every change."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {SRC!r})
        from napari_mtssl.workspace import Workspace
        ws = Workspace.open(sys.argv[1])
        for i in range(15):
            ws.add_round({{"who": sys.argv[2], "i": i}})
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(ws.root), who]) for who in ("a", "b")
    ]
    for p in procs:
        assert p.wait(timeout=60) == 0
    rounds = ws.rounds()
    assert [r["round"] for r in rounds] == list(range(1, 31))
    for who in ("a", "b"):
        assert [r["i"] for r in rounds if r["who"] == who] == list(range(15))
    assert not (ws.root / "workspace.lock").exists()


def test_lock_of_a_dead_owner_whose_pid_was_reused_is_broken(tmp_path: Path) -> None:
    """The pid in the file belongs to a live process (here: this one), but nobody holds the
    file's OS lock: its owner died and the pid was reused. The lock is broken at once."""
    path = tmp_path / "l"
    info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time() - 5}
    path.write_text(json.dumps(info))
    with FileLock(path, timeout=0.5):
        pass


def test_a_held_lock_names_its_owner_and_how_to_recover(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "l"
    code = (
        "import sys, time; from napari_mtssl.workspace._lock import FileLock; "
        f"l = FileLock({str(path)!r}); l.acquire(); print('held', flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout) as err:
            FileLock(path, timeout=0.1).acquire()
        msg = str(err.value)
        assert f"process {proc.pid}" in msg and "delete l" in msg
        proc.kill()  # kill -9: the OS releases its lock, the file stays behind
        proc.wait()
        assert path.exists()
        with FileLock(path, timeout=1.0):
            pass
    finally:
        proc.kill()
