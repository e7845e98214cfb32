"""Run a long generator (training, inference) as a job: in its own worker process, or inline.

A job is a *generator function* named by a dotted path, ``"package.module:function"``, called
with JSON-able keyword arguments plus ``stop=<callable>``. It yields small event dicts and returns
a JSON-able result dict. :class:`JobHandle` starts it, relays the events, and asks it to stop.

Why a process and not a thread: the viewer keeps its GIL to itself (no frozen UI), the GPU
memory is returned to the system when the process ends, and a crash of the training code (or of
a CUDA driver) ends the worker, not napari. The same unit can later run on another GPU or host.

The ``inline`` mode runs the same generator in a thread of this process: for tests, debugging
and platforms where spawning is not wanted. Events and results are identical in both modes.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import multiprocessing as mp
import multiprocessing.util  # registers its exit hook before ours: ours runs first
import os
import queue as queue_mod
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from napari_mtssl import events as ev

__all__ = ["JobHandle", "JobWorker", "check_target", "resolve_target", "drive", "relay_status"]

# Terminal messages the worker sends after the generator's own events.
_DONE = "job-done"
_FAILED = "job-failed"
# Seconds a worker gets at exit to save its checkpoint before it is ended.
EXIT_GRACE_S = 30.0
_LIVE: weakref.WeakSet = weakref.WeakSet()


def _stop_live_jobs() -> None:
    """At the exit of the process that started them: ask running workers to save and stop,
    wait a little, then end them. Workers are not daemonic (a run's worker starts the
    processes of its units, which a daemonic process may not), so nothing else would."""
    jobs = [j for j in list(_LIVE) if j._process is not None and j._process.is_alive()]
    for job in jobs:
        job.shutdown()
    end = time.monotonic() + EXIT_GRACE_S
    for job in jobs:
        job._process.join(max(0.0, end - time.monotonic()))
        if job._process.is_alive():
            job._process.terminate()


atexit.register(_stop_live_jobs)


def resolve_target(target: str) -> Callable[..., ev.Events[dict]]:
    """Import ``"module:function"``; a clear ValueError for a malformed or unknown target."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"job target must look like 'package.module:function', got {target!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"job target {target!r}: {module_name} has no {attr!r}") from None


def check_target(target: str) -> None:
    """Check that ``"module:function"`` names a module that exists, without importing it."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"job target must look like 'package.module:function', got {target!r}")
    try:
        found = importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ValueError(f"job target {target!r}: no module named {module_name!r}")


def drive(generator: ev.Events[Any], emit: Callable[[ev.Event], None]) -> Any:
    """Run ``generator`` to completion, handing each event to ``emit``; return its result."""
    while True:
        try:
            event = next(generator)
        except StopIteration as done:
            return done.value
        emit(event)


def relay_status(
    work: Callable[[Callable[[str, int, int], None]], Any],
    stop: Callable[[], bool] | None = None,
) -> ev.Events[Any]:
    """Run ``work(status)`` in a thread and yield a :class:`~napari_mtssl.events.Status` for
    each ``status(message, done, total)`` it calls, while it runs (a generator cannot yield
    from inside a callback); return its result, or raise its exception here. With ``stop``,
    ``status`` raises :class:`~napari_mtssl.events.Cancelled` once ``stop()`` is true."""
    events: queue_mod.SimpleQueue = queue_mod.SimpleQueue()
    out: dict[str, Any] = {}

    def status(message: str, done: int, total: int) -> None:  # in the thread below
        if stop is not None and stop():
            raise ev.Cancelled
        events.put(ev.Status(str(message), done=int(done), total=int(total)))

    def body() -> None:
        try:
            out["result"] = work(status)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            out["error"] = exc
        finally:
            events.put(None)

    thread = threading.Thread(target=body, name="mtssl-status", daemon=True)
    thread.start()
    while (item := events.get()) is not None:
        yield item
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["result"]


def _describe(exc: BaseException) -> str:
    # Our own errors (ScanReadError, LabelError, WorkspaceError, ValueError from config checks)
    # already name the file and the problem; others get their type for context.
    one_line = getattr(exc, "one_line", None)  # models of a run that failed (errors.UnitsFailed)
    if callable(one_line):
        return one_line()
    if isinstance(exc, ValueError | FileNotFoundError | PermissionError | RuntimeError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def _run(target: str, kwargs: dict, put: Callable[[dict], None], stop: Callable[[], bool]) -> None:
    """Body shared by the process and the thread: events, then one terminal message."""
    try:
        func = resolve_target(target)
        result = drive(func(**kwargs, stop=stop), lambda e: put(ev.wire(e)))
        put({"type": _DONE, "result": result})
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the viewer as a message
        put({"type": _FAILED, "error": _describe(exc), "traceback": traceback.format_exc()})


def _worker_main(target: str, kwargs: dict, events: Any, stop_event: Any, parent_pid: int) -> None:
    """Entry point of the worker process."""

    def stop() -> bool:
        # A worker whose parent has died (napari killed) stops too, saving its checkpoint.
        return stop_event.is_set() or os.getppid() != parent_pid

    _run(target, kwargs, events.put, stop)


def _serve_main(
    inbox: Any, events: Any, stop_event: Any, parent_pid: int, warm: tuple | None
) -> None:
    """Entry point of a :class:`JobWorker`: run the jobs that arrive, one after another, in
    this one process (what the first imported and opened serves the next), until ``None``
    arrives or the parent is gone. ``warm``: ``(target, kwargs)`` of a function called once
    before the first job (imports, opening data); its failure is left to the job to report."""

    def stop() -> bool:
        return stop_event.is_set() or os.getppid() != parent_pid

    if warm is not None:
        try:
            resolve_target(warm[0])(**warm[1])
        except Exception:  # noqa: BLE001, S110 - the job that needs it reports the problem
            pass
    while True:
        try:
            msg = inbox.get(timeout=1.0)
        except queue_mod.Empty:
            if os.getppid() != parent_pid:
                return
            continue
        if msg is None:
            return
        _run(msg[0], msg[1], events.put, stop)


class JobHandle:
    """A running job. Poll it for events; ``stop()`` asks it to save and end.

    ``state`` is "running", then "done", "stopped" (the generator returned ``{"stopped": True}``)
    or "failed" (``error`` holds the message, ``traceback`` the details).
    """

    role = "training"  # what a crash message calls the process

    def __init__(self, target: str, kwargs: dict | None = None, *, inline: bool = False):
        self.target = target
        self.kwargs = dict(kwargs or {})
        self.inline = inline
        self.result: dict | None = None
        self.error: str | None = None
        self.traceback: str | None = None
        self.state = "running"
        self.started = time.monotonic()
        if inline:
            self._events: Any = queue_mod.Queue()
            self._stop_event: Any = threading.Event()
            self._thread = threading.Thread(
                target=_run,
                args=(target, self.kwargs, self._events.put, self._stop_event.is_set),
                name=f"mtssl-job-{target}",
                daemon=True,
            )
            self._process = None
            self._thread.start()
        else:
            # Fail here, in the caller, for a module that does not exist, but do not import it:
            # importing the engine (torch) in the viewer's process would hold the GIL for
            # seconds and freeze napari; the worker imports it.
            check_target(target)
            ctx = mp.get_context("spawn")
            self._events = ctx.Queue()
            self._stop_event = ctx.Event()
            self._process = ctx.Process(
                target=_worker_main,
                args=(target, self.kwargs, self._events, self._stop_event, os.getpid()),
                name="mtssl-job",
                daemon=False,  # see _stop_live_jobs
            )
            self._thread = None
            self._process.start()
            _LIVE.add(self)

    # -- control -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the job to stop at its next step; it saves a resumable checkpoint first."""
        self._stop_event.set()

    def shutdown(self) -> None:
        """At exit: ask the job to stop (a worker also to end once it has)."""
        self.stop()

    def kill(self) -> None:
        """Last resort for a worker that does not answer ``stop()``; nothing is saved."""
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(5)

    def is_alive(self) -> bool:
        if self.state != "running":
            return False
        if self._process is not None:
            return self._process.is_alive() or not self._events.empty()
        return self._thread is not None and (self._thread.is_alive() or not self._events.empty())

    @property
    def finished(self) -> bool:
        return self.state != "running"

    # -- events ------------------------------------------------------------------------------
    def poll(self, timeout: float = 0.1) -> list[ev.Event]:
        """Events that arrived, waiting up to ``timeout`` seconds for the first one.

        Terminal messages are consumed here (they set ``state``, ``result`` and ``error``), so
        the caller only ever sees the generator's own events, as their types again.
        """
        out: list[ev.Event] = []
        if self.state != "running":
            return out
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            try:
                if out or remaining <= 0:
                    msg = self._events.get_nowait()
                else:
                    msg = self._events.get(timeout=remaining)
            except queue_mod.Empty:
                break
            if self._handle_terminal(msg):
                break
            out.append(ev.parse(msg))
        if self.state == "running" and not out:
            self._check_crash()
        return out

    def join(
        self, timeout: float | None = None, on_event: Callable[[ev.Event], None] | None = None
    ) -> bool:
        """Wait for the end (draining events, so the worker never blocks on a full queue)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state == "running":
            if deadline is not None and time.monotonic() > deadline:
                return False
            for event in self.poll(0.2):
                if on_event is not None:
                    on_event(event)
        self._joined()
        return True

    def _joined(self) -> None:
        """After the job's end: its process (or thread) ends too."""
        if self._process is not None:
            self._process.join(10)
        elif self._thread is not None:
            self._thread.join(10)

    def _handle_terminal(self, msg: dict) -> bool:
        kind = msg.get("type")
        if kind == _DONE:
            self.result = msg.get("result") or {}
            self.state = "stopped" if self.result.get("stopped") else "done"
            return True
        if kind == _FAILED:
            self.error = msg.get("error") or "the job failed"
            self.traceback = msg.get("traceback")
            self.state = "failed"
            return True
        return False

    def _check_crash(self) -> None:
        # A worker killed by the OS (out of memory, a driver crash) sends nothing: notice it.
        proc = self._process
        if proc is None or proc.is_alive():
            return
        try:  # a terminal message may still be in flight after the exit
            msg = self._events.get(timeout=0.5)
        except queue_mod.Empty:
            msg = None
        if msg is not None and self._handle_terminal(msg):
            return
        self.error = f"the {self.role} process ended unexpectedly (exit code {proc.exitcode})"
        self.state = "failed"


class JobWorker(JobHandle):
    """A worker process that runs jobs one after another (the local executor's lanes): torch,
    the engine and the opened data of one job serve the next, so a job starts in a fraction of
    a second instead of a new process's seconds. ``submit`` a job when the worker is idle
    (``state`` is not "running"), then ``poll`` it as a :class:`JobHandle`; ``close`` ends the
    process. A job that fails leaves the worker usable; a worker the OS killed is not
    (``usable``)."""

    def __init__(self, warm: tuple[str, dict] | None = None, role: str = "training"):
        self.role = role
        self.target, self.kwargs, self.inline = "", {}, False
        self.result: dict | None = None
        self.error: str | None = None
        self.traceback: str | None = None
        self.state = "idle"
        self.started = time.monotonic()
        ctx = mp.get_context("spawn")
        self._events = ctx.Queue()
        self._stop_event = ctx.Event()
        self._inbox = ctx.Queue()
        self._thread = None
        self._process = ctx.Process(
            target=_serve_main,
            args=(self._inbox, self._events, self._stop_event, os.getpid(), warm),
            name="mtssl-worker",
            daemon=False,  # see _stop_live_jobs
        )
        self._process.start()
        _LIVE.add(self)

    @property
    def alive(self) -> bool:
        """Whether its process is up (busy or not)."""
        return self._process.is_alive()

    @property
    def usable(self) -> bool:
        return self.state != "running" and self.alive

    def submit(self, target: str, kwargs: dict | None = None) -> None:
        if self.state == "running":
            raise RuntimeError("this worker is still running a job")
        check_target(target)
        self.target, self.kwargs = target, dict(kwargs or {})
        self.result = self.error = self.traceback = None
        self._stop_event.clear()
        self.state = "running"
        self.started = time.monotonic()
        self._inbox.put((target, self.kwargs))

    def _joined(self) -> None:
        """The worker goes on after its job (``join`` waits for the job only)."""

    def shutdown(self) -> None:
        self.stop()
        if self._process.is_alive():
            self._inbox.put(None)

    def close(self, timeout: float = 60.0) -> None:
        """Stop the running job (it saves its checkpoint) and end the process."""
        self.shutdown()
        end = time.monotonic() + timeout
        while self._process.is_alive() and time.monotonic() < end:
            self.poll(0.2)  # drain, so the worker never blocks on a full queue
            self._process.join(0.1)
        if self._process.is_alive():
            self.kill()
