"""The engine's answers for an interactive front end, from a worker process kept for a session.

The docks ask the engine for short things between two clicks: a comparison of the models on a
scan, the student's mask of a scan to correct, the slices worth correcting next, an exported
model. Computed in the viewer's own process (a thread of it), the first of them imported torch
and MONAI there: each import step holds the interpreter while a module initialises (holds of
50-194 ms beside two busy processes, measured in ``docs/benchmarks.md``), and napari's event loop
froze for as long. :class:`EngineService` runs them in one worker process instead, started ahead
and kept until the session ends, so the viewer's process never imports torch for them and what
the first call imported serves the next.

Only the calls named in :data:`CALLS` run there, with plain arguments (a workspace's folder, not
the object: the worker reads what is on disk, where every write lands at once). A call is
blocking: the docks make it from a thread of theirs. A long one reports progress
(:class:`~napari_mtssl.events.Status`) and can be cancelled between two of its items. A scan
compared again, with the same models and labels, is answered from the comparison kept.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_mtssl import api
from napari_mtssl import events as ev
from napari_mtssl.training.running.jobs import JobWorker, relay_status

__all__ = ["CALLS", "EngineError", "EngineService", "call"]

CALL_TARGET = "napari_mtssl.service:call"
WARM_TARGET = "napari_mtssl.service:warm"


class EngineError(RuntimeError):
    """A call failed in the worker; the message names the file and the problem as the engine's
    own errors do."""


# -- what runs in the worker -------------------------------------------------------------------
# Comparisons made, newest last, while their models and the scan's labels stay as they were:
# a scan compared again (back from another) is answered at once. At most _KEEP_BYTES of them.
_COMPARED: OrderedDict[tuple, api.Comparison] = OrderedDict()
_KEEP_BYTES = 1 << 30


def _compare(workspace: str, scan: str, models: list[str] | None = None) -> api.Comparison:
    ws = api.open_workspace(workspace)
    key = (str(ws.root), scan, tuple(models or ()), _models_now(ws), _labels_now(ws, scan))
    if key in _COMPARED:
        _COMPARED.move_to_end(key)
        return _COMPARED[key]
    comparison = api.compare(ws, scan, models)
    comparison.teacher_mean = None  # (C, z, y, x) floats no dock shows: not sent back
    _COMPARED[key] = comparison
    while len(_COMPARED) > 1 and sum(map(_nbytes, _COMPARED.values())) > _KEEP_BYTES:
        _COMPARED.popitem(last=False)
    return comparison


def _models_now(ws: Any) -> tuple:
    """The runs and when each last saved a model: a new model (a run, a retrain) changes it
    (every model file is written beside its run's others and renamed into place)."""
    out = []
    for run in ws.runs():
        folder = run.models_dir
        out.append((run.id, folder.stat().st_mtime_ns if folder.is_dir() else 0))
    return tuple(out)


def _labels_now(ws: Any, scan: str) -> tuple | None:
    """The scan's stored labels as they are now: a correction (which changes the Dice a
    comparison shows) replaces their file."""
    return ws.labels_signature(scan)


def _nbytes(c: api.Comparison) -> int:
    return sum(a.nbytes for a in c.labels.values()) + c.disagreement.nbytes


def _predict_labels(workspace: str, scan: str, model: str = "student") -> Any:
    return api.predict(workspace, scan, model=model).labels  # the class probabilities stay


def _propose(workspace: str, progress: Callable[[int, int, str], None], **kwargs: Any) -> list:
    return api.propose_slices(workspace, progress=progress, **kwargs)


def _export(workspace: str, model: str, fmt: str, out: str, **kwargs: Any) -> str:
    return str(api.export_model(workspace, model, fmt, out, **kwargs))


def warm(workspace: str | None = None) -> None:
    """Run once by a new worker before its first call: the imports every call needs, and, for
    a workspace with trained models, one prediction of its smallest scan (what a process does
    once: MONAI's sliding windows, the CPU's kernels, reading a model), so that the first
    Compare answers as fast as the next (3.5 s against 0.7 s before, measured)."""
    # imported here, when needed: it loads torch and MONAI (in the worker, not the viewer)
    import napari_mtssl.training.prediction.inference  # noqa: F401

    if workspace is None:
        return
    ws = api.open_workspace(workspace)
    models = api.list_models(ws)
    scans = ws.scan_ids()
    if models and scans:
        smallest = min(scans, key=lambda sid: int(np.prod(ws.record(sid).shape)))
        api.predict(ws, smallest, model=models[0])


#: name -> (function, whether it takes a ``progress(i, n, item)`` callback)
CALLS: dict[str, tuple[Callable[..., Any], bool]] = {
    "compare": (_compare, False),
    "predict_labels": (_predict_labels, False),
    "propose": (_propose, True),
    "export": (_export, False),
    "warm": (warm, False),  # what a new worker does first, again (new models)
}


def call(function: str, kwargs: dict, *, stop: Callable[[], bool]) -> ev.Events[dict]:
    """The job a worker runs for :meth:`EngineService.run`: ``CALLS[function](**kwargs)``;
    its progress as events; ``{"value": result}``, or ``{"stopped": True}`` once cancelled."""
    func, takes_progress = CALLS[function]
    if not takes_progress:
        return {"value": func(**kwargs)}

    def work(status: Callable[[str, int, int], None]) -> Any:
        return func(progress=lambda i, n, item: status(item, i, n), **kwargs)

    try:
        return {"value": (yield from relay_status(work, stop))}
    except ev.Cancelled:
        return {"stopped": True}


# -- the viewer's side ---------------------------------------------------------------------------
class EngineService:
    """One worker process for a session's engine calls, made on first need and kept.

    :meth:`run` is blocking and thread-safe: calls from two threads run one after the other.
    A worker the operating system ended (out of memory) is replaced at the next call.
    """

    def __init__(self) -> None:
        self._worker: JobWorker | None = None
        self._calls = threading.Lock()  # one call at a time in the worker
        self._making = threading.Lock()  # one worker made at a time
        self._closed = False

    # -- the worker ------------------------------------------------------------------------------
    def prepare(
        self,
        workspace: Any = None,
        when: Callable[[], bool] | None = None,
        refresh: bool = False,
    ) -> None:
        """Start the worker in the background now, if ``when()`` says a call is near (a
        workspace with trained models): it imports the engine and predicts one scan of
        ``workspace`` while it waits. ``refresh``: a worker already up predicts that scan
        again (a run has just made new models: their first prediction costs seconds)."""

        def make() -> None:
            try:
                if when is None or when():
                    before = self._worker
                    worker = self._ready(workspace)
                    if refresh and worker is before and workspace is not None:
                        self.run("warm", workspace=workspace)
            except Exception:  # noqa: BLE001, S110 - the next call makes one, or says why not
                pass

        threading.Thread(target=make, name="mtssl-engine-start", daemon=True).start()

    def _ready(self, workspace: Any = None) -> JobWorker:
        with self._making:
            if self._closed:
                raise EngineError("the session has ended")
            worker = self._worker
            # Replaced only when its process is gone: a busy one is serving a call (a prepare
            # from a job's end must never end the Compare it is computing).
            if worker is None or not worker.alive:
                if worker is not None:
                    worker.close(1)
                warm_with = {"workspace": _plain(workspace)} if workspace is not None else {}
                worker = self._worker = JobWorker((WARM_TARGET, warm_with), role="engine's worker")
            return worker

    @property
    def started(self) -> bool:
        """Whether a worker process is up."""
        worker = self._worker
        return worker is not None and worker.alive

    def close(self, timeout: float = 5.0) -> None:
        """End the worker (the session ends); a call after this raises EngineError."""
        with self._making:
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.close(timeout)

    # -- calls -----------------------------------------------------------------------------------
    def run(
        self,
        function: str,
        *,
        cancel: threading.Event | None = None,
        on_event: Callable[[ev.Event], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``CALLS[function](**kwargs)`` in the worker; its result, or None once ``cancel`` was
        set (checked while the call waits and between its items). A Workspace argument travels
        as its folder. Raises EngineError with the engine's message when the call fails."""
        if function not in CALLS:
            raise ValueError(f"no engine call named {function!r}; known: {', '.join(CALLS)}")
        kwargs = {k: _plain(v) for k, v in kwargs.items()}
        with self._calls:
            if cancel is not None and cancel.is_set():
                return None
            worker = self._ready()
            worker.submit(CALL_TARGET, {"function": function, "kwargs": kwargs})
            while worker.state == "running":
                if cancel is not None and cancel.is_set():
                    worker.stop()
                for event in worker.poll(0.1):
                    if on_event is not None:
                        on_event(event)
            if worker.state == "failed":
                error = worker.error or f"{function} failed"
                if not worker.alive:  # the process is gone: the next call makes another
                    error += "; the next try starts a new one"
                raise EngineError(error)
            if worker.state == "stopped":
                return None
            return (worker.result or {}).get("value")


def _plain(value: Any) -> Any:
    """What crosses to the worker: a workspace as its folder, paths as text."""
    root = getattr(value, "root", None)
    if isinstance(root, Path) and hasattr(value, "scan_ids"):
        return str(root)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
