"""An advisory lock file so two processes never rewrite ``workspace.json`` at the same time.

The napari viewer and a training worker process share one workspace. Writers take the lock for
their read-modify-write; readers never take it (every file is replaced atomically, so a reader
sees either the old or the new version). The lock file holds the owner's pid, host and time.
While it holds the lock, the owner also keeps an OS lock (``flock``) on that file, which the
operating system releases when the owner dies, however it dies: a lock file whose OS lock is
free was left by a dead process and is broken at once, even when its pid has since been reused
by another program. The file appears whole: written and OS-locked under a private name, then
hard-linked into place, so no moment exists where a lock file is empty or unlocked while its
owner lives (on a filesystem without hard links it is created with ``O_EXCL`` and an empty one
is given a few seconds' grace). A stale lock is broken while the breaker itself holds that OS
lock and after checking that the path still names the same file, so two processes that find
one stale lock at the same moment never both take it (one comparing the file's contents and
then unlinking it could delete the lock the other had just taken; measured by
``tests/workspace/test_lock.py``: 1-2 double holders in 150 races before). A lock of another host (a workspace on
a network share) cannot be checked that way and is respected until ``stale_after``.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os

try:
    import fcntl
except ImportError:  # not POSIX: the pid check alone
    fcntl = None  # type: ignore[assignment]
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil


def _pid_alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists (psutil: on Windows too, where
    ``os.kill(pid, 0)`` would send CTRL_C_EVENT)."""
    return bool(psutil.pid_exists(pid))


class _NoHardLinks(Exception):
    """The lock's folder is on a filesystem without hard links (FAT, some network shares)."""


_NO_LINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}


class LockTimeout(TimeoutError):
    def __init__(self, path: Path, owner: str):
        self.path = path
        super().__init__(
            f"{path}: the workspace is locked by {owner}; try again when it is done (if no "
            f"napari-mtssl program is using this workspace any more, delete {path.name})"
        )


def _os_lock_free(path: Path) -> bool | None:
    """Whether nobody holds the OS lock of ``path`` (None: cannot tell here)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


class FileLock:
    """Re-entrant (per instance, per thread) exclusive lock on ``path``.

    ``stale_after`` seconds bounds how long a lock whose owner cannot be checked (another host,
    an unreadable lock file) is respected; a lock held by a dead process on this host is broken
    at once.
    """

    def __init__(
        self, path: str | os.PathLike, *, timeout: float = 30.0, stale_after: float = 120.0
    ):
        self.path = Path(path)
        self.timeout = timeout
        self.stale_after = stale_after
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._links = True  # hard links work here (else _create_exclusive)
        self._swept = False  # strays of killed owners removed (once per lock object)

    @property
    def held(self) -> bool:
        return self._depth > 0

    def acquire(self, timeout: float | None = None) -> None:
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=max(timeout, 0.0)):
            raise LockTimeout(self.path, "another thread of this process")
        if self._depth > 0:
            self._depth += 1
            return
        try:
            self._acquire_file(deadline)
        except BaseException:
            self._thread_lock.release()
            raise
        self._depth = 1

    def _acquire_file(self, deadline: float) -> None:
        payload = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        ).encode()
        delay = 0.005
        while True:
            fd = self._create(payload)
            if fd is not None:
                self._fd = fd
                self._sweep_private()
                return
            owner = self._break_if_stale()
            if owner is None:
                continue  # it was stale and is gone: try again at once
            if time.monotonic() >= deadline:
                raise LockTimeout(self.path, owner) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _create(self, payload: bytes) -> int | None:
        """Create the lock file, holding its OS lock; None when it exists already."""
        if fcntl is not None and self._links:
            try:
                return self._create_whole(payload)
            except _NoHardLinks:
                self._links = False
        return self._create_exclusive(payload)

    def _create_whole(self, payload: bytes) -> int | None:
        """Write the payload and take the OS lock on a private file, then link it into place.

        The lock file thus appears with its payload and its OS lock at once: a lock file whose
        OS lock is free always belongs to a dead owner, however it was killed, and is broken
        without waiting (``_create_exclusive`` leaves a moment where an empty file may be an
        owner still starting).
        """
        private = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(private, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else knows this file yet: never waits
            os.write(fd, payload)
            os.link(private, self.path)
        except (FileExistsError, FileNotFoundError):
            # taken by another; or our private file was swept away before the link: retry
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _NO_LINK_ERRNOS:
                raise _NoHardLinks from exc
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from exc
        except BaseException:
            os.close(fd)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                private.unlink()
        return fd

    def _sweep_private(self) -> None:
        """Remove private files that owners killed while creating the lock left behind, at
        this lock object's first acquisition (a program's start: a killed owner leaves at most
        one, and a write need not list the folder each time).

        One whose OS lock is free belongs to a dead process or to one that has not taken it
        yet; the latter's link then fails and it simply tries again (``_create_whole``).
        """
        if fcntl is None or not self._links or self._swept:
            return
        self._swept = True
        for stray in self.path.parent.glob(f".{glob.escape(self.path.name)}.*"):
            if _os_lock_free(stray):
                with contextlib.suppress(FileNotFoundError):
                    stray.unlink()

    def _create_exclusive(self, payload: bytes) -> int | None:
        """Create the lock file with ``O_EXCL`` (a filesystem without hard links, or no OS
        locks here), then take its OS lock and write the payload."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        try:
            if fcntl is not None:  # before the payload: a readable payload means held
                # blocking: a breaker may hold it for an instant to look (and leaves a
                # file without a payload alone while it is young, _break_locally)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, payload)
        except BaseException as exc:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            if isinstance(exc, OSError) and not exc.filename:  # a full disk: say where
                raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from exc
            raise
        return fd

    def _break_if_stale(self) -> str | None:
        """Remove the lock file if its owner is gone; return a description of a live owner."""
        if fcntl is not None:
            verdict = self._break_locally()
            if verdict != "other host":
                return verdict
        return self._break_by_age()

    def _break_locally(self) -> str | None:
        """Break a stale lock of this host under the OS lock its owner held.

        The owner took ``flock`` on the lock file before writing its payload and holds it until
        it releases or dies. A breaker takes the same ``flock``: if it gets it, the owner is
        gone; while holding it, it checks that the path still names that very file and only
        then unlinks it. A second breaker cannot take the ``flock`` meanwhile, and a new owner
        cannot create the path while it exists, so two breakers never remove each other's (or
        a new owner's) lock: the time-of-check race of comparing contents is gone.
        Returns None when the lock is gone (try again), a description of a live owner, or
        "other host" for a lock this host cannot check.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError:
            return "other host"
        try:
            raw = os.read(fd, 4096)
            try:
                info = json.loads(raw)
                int(info["pid"])
                host = str(info["host"])
            except (ValueError, KeyError, TypeError):
                info, host = None, socket.gethostname()
            if host != socket.gethostname():
                return "other host"
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._describe(info, fd)
            # Nobody holds it. Still the file the path names? (else someone broke it already)
            try:
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    return None
            except FileNotFoundError:
                return None
            os.lseek(fd, 0, os.SEEK_SET)
            raw = os.read(fd, 4096)
            if not raw.strip():
                # created, OS lock not yet taken or payload not yet written: a moment's grace
                if time.time() - os.fstat(fd).st_mtime <= min(self.stale_after, 5.0):
                    return "a process that is starting to write"
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return None
        finally:
            os.close(fd)  # releases the OS lock taken here, if any

    def _describe(self, info: dict | None, fd: int) -> str:
        if not info:
            return "a process that is starting to write"
        mtime = os.fstat(fd).st_mtime
        since = time.strftime("%H:%M:%S", time.localtime(float(info.get("time", mtime))))
        return f"process {info['pid']} on {info['host']} (since {since})"

    def _break_by_age(self) -> str | None:
        """Without OS locks here (or for another host's lock): the owner's pid where it can be
        checked, else the lock's age against ``stale_after``."""
        try:
            raw = self.path.read_bytes()
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
            pid, host = int(info["pid"]), str(info["host"])
        except (ValueError, KeyError, TypeError):
            # Crashed between create and write, or being written right now: give it a moment.
            if time.time() - mtime > min(self.stale_after, 5.0):
                self._remove_if_unchanged(raw)
                return None
            return "a process that is starting to write"
        here = host == socket.gethostname()
        free = _os_lock_free(self.path) if here else None
        alive = _pid_alive(pid) if here else None
        if free is True or alive is False:
            # The OS released its lock: the owner died (its pid may live on in another program).
            self._remove_if_unchanged(raw)
            return None
        if alive is None and free is None and time.time() - mtime > self.stale_after:
            self._remove_if_unchanged(raw)
            return None
        since = time.strftime("%H:%M:%S", time.localtime(float(info.get("time", mtime))))
        return f"process {pid} on {host} (since {since})"

    def _remove_if_unchanged(self, raw: bytes) -> None:
        # Another process may have broken the stale lock and taken a fresh one in between.
        with contextlib.suppress(FileNotFoundError):
            if self.path.read_bytes() == raw:
                self.path.unlink()

    def release(self) -> None:
        if self._depth <= 0:
            raise RuntimeError(f"{self.path}: release of a lock that is not held")
        self._depth -= 1
        if self._depth == 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            if self._fd is not None:
                os.close(self._fd)  # releases the OS lock
                self._fd = None
        self._thread_lock.release()

    @contextlib.contextmanager
    def __call__(self, timeout: float | None = None) -> Iterator[None]:
        self.acquire(timeout)
        try:
            yield
        finally:
            self.release()

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
