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


LOOPER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from napari_mtssl.workspace._lock import FileLock
    lock = FileLock(sys.argv[1], timeout=60)
    print("ready", flush=True)
    while True:
        with lock:
            pass
    """
)


@pytest.mark.skipif(not hasattr(os, "link") or sys.platform == "win32", reason="POSIX only")
def test_an_owner_killed_at_any_moment_never_leaves_a_lock_that_makes_others_wait(
    tmp_path: Path,
) -> None:
    """A process taking and releasing the lock in a loop is killed (kill -9) at arbitrary
    moments. Whatever it was doing, the next writer gets the lock at once: the lock file
    appears with its payload and its OS lock together, so it is never an empty file that might
    belong to an owner still starting (which earlier versions waited for, up to 5 s)."""
    path = tmp_path / "workspace.lock"
    rng = np.random.default_rng(0)
    left = []
    for _ in range(25):
        proc = subprocess.Popen(
            [sys.executable, "-c", LOOPER, str(path), SRC], stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            time.sleep(float(rng.uniform(0.0, 0.02)))
        finally:
            proc.kill()
            proc.wait()
        left.append(path.exists())
        with FileLock(path, timeout=2.0):  # under the 5 s grace of an empty lock file
            pass
        # and a private file it was creating the lock under is swept away by the next owner
        assert list(tmp_path.iterdir()) == []
    assert any(left), "no kill landed while the lock was held: the test did not test"


def test_a_filesystem_without_hard_links_falls_back_to_exclusive_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAT and some network shares refuse hard links: the lock is then created with O_EXCL,
    stays exclusive, and leaves no private file behind."""
    import errno

    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted", str(src))

    monkeypatch.setattr(os, "link", no_links)
    a = FileLock(tmp_path / "l", timeout=0.05)
    b = FileLock(tmp_path / "l", timeout=0.05)
    with a:
        assert json.loads((tmp_path / "l").read_text())["pid"] == os.getpid()
        with pytest.raises(LockTimeout, match=f"process {os.getpid()}"):
            b.acquire()
    assert not a._links
    assert list(tmp_path.iterdir()) == []
    with b:
        pass
