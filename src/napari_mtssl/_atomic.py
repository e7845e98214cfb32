"""Atomic file writes: a temporary file in the target's folder, fsync, then ``os.replace``.

A process killed at any point leaves either the old file or the new one, never a torn file:
``os.replace`` is atomic on POSIX and Windows when source and target share a file system, which
a sibling temporary file guarantees.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


def _read_umask() -> int:
    # Read once at import: os.umask can only be read by setting it, which would race with
    # threads that create files later.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def file_mode(target: Path) -> int:
    """The permissions a written file should get: those of the file it replaces, else what a
    plain ``open()`` would give (0666 less the umask). ``mkstemp`` creates its file 0600, which
    would make every output private to its writer (a shared workspace, a mask for a colleague)."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~UMASK


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``.

    On an exception the temporary file is removed and ``path`` is untouched. The new file keeps
    the permissions of the one it replaces (a new file: 0666 less the umask).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    with _replacing(target, tmp):
        os.fchmod(fd, file_mode(target))
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def _replacing(target: Path, tmp: str) -> Iterator[None]:
    """The block writes ``tmp``; then it replaces ``target`` (the folder synced). Where the
    block fails, ``tmp`` is removed, ``target`` is untouched and the error names it."""
    try:
        yield
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _name_the_file(exc, target)
        raise
    _fsync_dir(target.parent)


def _name_the_file(exc: BaseException, target: Path) -> None:
    """An OSError without a file name (a full disk says only "[Errno 28] No space left on
    device") is re-raised naming the file being written, so the message says where."""
    if isinstance(exc, OSError) and not exc.filename:
        raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, harmless to skip there.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(
        path, json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n"
    )


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Compressed npz written atomically (object arrays refused, so it loads without pickle)."""
    for key, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise TypeError(f"{key}: object arrays cannot be stored without pickle")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """For libraries that insist on writing to a path themselves (nibabel, tifffile).

    ``write`` receives a temporary path in the same folder with the same suffixes as ``path``
    (nibabel picks compression from the suffix); it is renamed over ``path`` on success.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    with _replacing(target, tmp):
        write(Path(tmp))
        os.chmod(tmp, file_mode(target))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
