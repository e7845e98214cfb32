"""One training run on disk: ``runs/<id>/``.

Layout (all human-readable except the weights)::

    run.json         id, kind, round, created: what the run is
    config.json      the configuration it ran with
    status.json      {"status": "running" | "done" | "stopped" | "failed", "time": ..., **extra}
                     ("running" also records the owner process: host, pid, its start time;
                     a "running" run whose owner is gone reads as "interrupted")
    metrics.json     final metrics
    events.jsonl     progress events, one JSON object a line, appended as they happen
    models/<name>.safetensors (+ <name>.json)   weights and what they are
    checkpoint/      resumable state

A run directory has a single writer (the process running it), so it needs no lock; other
processes only read it. Every file except the event log is replaced atomically; the event log is
appended and flushed line by line, and a torn last line (the writer was killed) is skipped.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import psutil
from filelock import FileLock, Timeout

from napari_mtssl._atomic import _json_default, atomic_write_json

from ._errors import WorkspaceError

RUN_STATUSES = ("running", "done", "stopped", "failed", "interrupted")
RESUMABLE = ("stopped", "interrupted", "failed")
RUN_FORMAT_VERSION = 1


def _created(pid: int) -> float | None:
    """When a process started (seconds since the epoch), so a recycled pid is told apart."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_created": _created(os.getpid())}


# Runs this process trains now: it wrote their "running" status and has not let them go. A run
# recorded as running by this very process but not in here was left without a final status (a
# full disk refused it): this process's readers then see it as interrupted, as other
# processes' readers do once it ends.
_RUNNING_HERE: set[str] = set()


def _is_me(info: dict[str, Any]) -> bool:
    me = _owner()
    return (
        info.get("host") == me["host"]
        and info.get("pid") == me["pid"]
        and (info.get("pid_created") == me["pid_created"])
    )


def _owner_gone(info: dict[str, Any]) -> bool:
    """Whether the process that marked a run running has ended (only knowable on its host).
    Records of earlier versions (``pid_start``, clock ticks) are judged by the pid alone."""

    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    started = info.get("pid_created")
    if not isinstance(started, int | float):
        return False
    now = _created(pid)
    return now is not None and abs(now - started) > 0.5


def utc_now() -> str:
    """ISO 8601 UTC with microseconds, so that times sort in the order they happened."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        if default is not None:
            return default
        raise WorkspaceError(path, "file is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise WorkspaceError(path, f"not valid JSON ({exc})") from None


def safe_model_name(name: str) -> str:
    """A file name for a model name such as ``"teacher:sdm"`` (reversible by ``unquote``)."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise ValueError(f"invalid model name {name!r}")
    return quote(name, safe="-_.")


class Run:
    """Handle on ``runs/<id>/``; cheap to create, reads its files when asked."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        info = _read_json(self.path / "run.json")
        if not isinstance(info, dict) or "kind" not in info:
            raise WorkspaceError(self.path / "run.json", "not a run description")
        if int(info.get("version", 1)) > RUN_FORMAT_VERSION:
            raise WorkspaceError(
                self.path / "run.json",
                f"written by a newer napari-mtssl (run format {info['version']}); "
                f"this version reads up to {RUN_FORMAT_VERSION}",
            )
        self.id: str = str(info.get("id", self.path.name))
        self.kind: str = str(info["kind"])
        self.round: int | None = info.get("round")
        self.created: str = str(info.get("created", ""))
        self._newline_checked = False

    @classmethod
    def create(cls, path: Path, *, kind: str, config: dict[str, Any], round: int | None) -> Run:
        """Make the folder (fails if it exists, so two processes never share a run)."""
        path.mkdir(parents=True, exist_ok=False)
        atomic_write_json(path / "config.json", config)
        atomic_write_json(
            path / "status.json", {"status": "running", "time": utc_now(), **_owner()}
        )
        _RUNNING_HERE.add(str(path.resolve()))
        # run.json last: a folder without it is an interrupted creation, ignored by runs().
        atomic_write_json(
            path / "run.json",
            {
                "version": RUN_FORMAT_VERSION,
                "id": path.name,
                "kind": kind,
                "round": round,
                "created": utc_now(),
            },
        )
        return cls(path)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, kind={self.kind!r}, round={self.round}, status={self.status!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.path.resolve() == self.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    # -- configuration, status, metrics ------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return _read_json(self.path / "config.json", default={})

    @property
    def status(self) -> str:
        """``running``, ``done``, ``stopped``, ``failed``, or ``interrupted``: recorded as
        running by a process of this machine that no longer exists (killed, power cut); the
        first reader that finds so writes it into ``status.json``."""
        info = self.status_info()
        status = str(info.get("status", "running"))
        if status == "running" and (_owner_gone(info) or self._left_here(info)):
            self._mark_interrupted(info)
            return "interrupted"
        return status

    def _left_here(self, info: dict[str, Any]) -> bool:
        """Marked running by this process, which no longer trains it (:meth:`let_go`)."""
        return _is_me(info) and str(self.path.resolve()) not in _RUNNING_HERE

    def let_go(self) -> None:
        """This process no longer trains the run, whatever ``status.json`` could record: a run
        that ended on a full disk (its final status unwritten) is then resumable from this
        process too, not "running" until the process ends."""
        _RUNNING_HERE.discard(str(self.path.resolve()))

    def _status_lock(self):
        """The operating-system lock every writer of ``status.json`` holds."""
        return FileLock(str(self.path / ".status.lock"), timeout=10)

    def _mark_interrupted(self, seen: dict[str, Any]) -> None:
        """Record on disk what a reader found: the process that marked the run running is gone.
        Done under the status lock and only if ``status.json`` is still what was read, so a
        resume that took the run over in between is never overwritten. A workspace that cannot
        be written keeps the derived status."""
        try:
            with self._status_lock():
                if self.status_info() != seen:
                    return
                owner = {k: seen.get(k) for k in ("pid", "host", "pid_created") if k in seen}
                rest = {k: v for k, v in seen.items() if k not in owner}
                atomic_write_json(
                    self.path / "status.json",
                    {**rest, "status": "interrupted", "time": utc_now(), "owner_gone": owner},
                )
        except (OSError, WorkspaceError, Timeout):
            pass

    def status_info(self) -> dict[str, Any]:
        """The whole of ``status.json``: status, time and whatever ``set_status`` was given."""
        return _read_json(self.path / "status.json", default={"status": "running"})

    def set_status(self, status: str, **extra: Any) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, got {status!r}")
        owner = _owner() if status == "running" else {}
        with self._status_lock():
            atomic_write_json(
                self.path / "status.json", {**extra, **owner, "status": status, "time": utc_now()}
            )
        if status == "running":
            _RUNNING_HERE.add(str(self.path.resolve()))
        else:
            self.let_go()

    def write_metrics(self, metrics: dict[str, Any], *, merge: bool = False) -> None:
        """Replace ``metrics.json`` (or, with ``merge``, update its top-level keys)."""
        data = {**self.metrics(), **metrics} if merge else dict(metrics)
        atomic_write_json(self.path / "metrics.json", data)

    def metrics(self) -> dict[str, Any]:
        return _read_json(self.path / "metrics.json", default={})

    # -- events ------------------------------------------------------------------------------
    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    def append_event(self, event: dict[str, Any]) -> None:
        """Append one event as a JSON line and flush it, so a reader sees it at once."""
        line = json.dumps(event, default=_json_default, separators=(",", ":"))
        with open(self.events_path, "ab") as fh:
            if not self._newline_checked:
                # A writer killed mid-line left a torn line: start ours on a fresh line.
                if fh.tell() > 0:
                    with open(self.events_path, "rb") as rd:
                        rd.seek(-1, os.SEEK_END)
                        if rd.read(1) != b"\n":
                            fh.write(b"\n")
                self._newline_checked = True
            fh.write(line.encode("utf-8") + b"\n")
            fh.flush()

    def events(self) -> list[dict[str, Any]]:
        """All events, oldest first. Lines that are not JSON objects (torn by a crash) are skipped."""
        try:
            raw = self.events_path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    # -- models and checkpoints --------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.path / "models"

    def model_path(self, name: str) -> Path:
        """Where the weights of model ``name`` go (the folder is created)."""
        self.models_dir.mkdir(exist_ok=True)
        return self.models_dir / f"{safe_model_name(name)}.safetensors"

    def model_meta_path(self, name: str) -> Path:
        self.models_dir.mkdir(exist_ok=True)
        return self.models_dir / f"{safe_model_name(name)}.json"

    def models(self) -> list[str]:
        """Names of the models whose weights file exists, sorted."""
        if not self.models_dir.is_dir():
            return []
        return sorted(
            unquote(p.name[: -len(".safetensors")])
            for p in self.models_dir.glob("*.safetensors")
            if not p.name.startswith(".")  # temporary files of atomic writes
        )

    def finished_models(self) -> list[str]:
        """Models a user can use: every model of a finished run; of a run that stopped or was
        interrupted, those it had finished (``pipeline.json``), not the one in training."""
        names = self.models()
        if self.status == "done":
            return names
        try:
            state = _read_json(self.path / "pipeline.json", default={})
        except WorkspaceError:  # damaged: nothing of it counts as finished (resume says why)
            return []
        done = state.get("models", {}) if isinstance(state, dict) else {}
        return [n for n in names if isinstance(done, dict) and n in done]

    @property
    def checkpoint_dir(self) -> Path:
        path = self.path / "checkpoint"
        path.mkdir(exist_ok=True)
        return path
