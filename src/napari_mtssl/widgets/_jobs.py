"""Run engine jobs from the GUI: a worker process does the work, a napari thread relays events.

``api.start_job`` starts training in its own process (no shared GIL, memory returned at the end,
a crash cannot take napari down). A napari ``thread_worker`` polls the job's event queue and
yields batches of events (their types, :mod:`napari_mtssl.events`); Qt delivers them to the GUI thread, where
:class:`JobController` re-emits each event for the docks, whose own bar and status line show it.
A job adds nothing to napari's activity panel: while any of its progress bars is open, napari
animates an indicator in the status bar, and where the window is drawn without a GPU (remote
desktops, virtual machines, Xvfb) each frame repaints the whole window in software: 40 % of a
core for the whole run, taken from the training (``benchmarks/speed/run.py activity``).
The training and correction docks share one controller per viewer (see ``_session``), so there is
one job at a time and one close-guard for the window.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import notifications
from qtpy.QtCore import QCoreApplication, QEvent, QEventLoop, QObject, Signal
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_mtssl import api
from napari_mtssl import events as ev
from napari_mtssl.ids import What

POLL_S = 0.1  # how long the relay thread waits for events before checking the job's state
# What the docks ask the controller to run when they want an estimate (``api.start_plan_job``)
# rather than a training run: not a What, which names what a run trains.
PLAN = "plan"


def widget_alive(widget: Any) -> bool:
    """False once Qt has deleted the C++ side of ``widget`` (a closed dock); queued signals from
    a background worker may still arrive after that."""
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True


def relay_events(handle: Any, poll_s: float = POLL_S) -> Generator[list[ev.Event], None, str]:
    """Yield batches of the job's events until it ends; return its final state.

    Runs in a napari thread worker: ``handle.poll`` blocks up to ``poll_s`` seconds off the GUI
    thread, and batching keeps the number of cross-thread signals low during fast steps.
    """
    while handle.state == "running":
        events = handle.poll(poll_s)
        if events:
            yield events
    return str(handle.state)


_STARTING = object()  # the spare worker's place while a thread starts its process


class JobController(QObject):
    """One engine job at a time for a viewer; relays its events to the GUI thread.

    Signals (all in the GUI thread): ``job_started(what)``, ``job_event(event)`` for each
    event, ``job_finished(result or None)`` once the job is over (done, stopped or failed),
    ``job_failed(message)`` when it crashed, ``running_changed(bool)``.
    """

    job_started = Signal(str)
    job_event = Signal(object)  # an events.Event
    job_finished = Signal(object)
    job_failed = Signal(str)
    running_changed = Signal(bool)
    released = Signal()  # the viewer is closing: workers kept for it end

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self._viewer_ref = weakref.ref(viewer)
        self.handle: Any | None = None
        self.worker: Any | None = None
        self.starter: Any | None = None
        self._stop_requested = False
        self.what: str | None = None
        self.last_state: str | None = None
        self.last_result: dict | None = None
        self.last_error: str | None = None
        self._running = False
        self._window_ref: Any = None
        self._pending: deque[dict] = deque()
        self._dispatching = False
        # A worker process started ahead of the next job (``prepare``), so that a click on
        # Train starts it in a fraction of a second instead of a new process's seconds.
        self._spare: Any | None = None
        self._spare_lock = threading.Lock()
        self._keep_spare = False
        self._closed = False
        self._install_close_guard(viewer)

    # -- a worker started ahead of the job ----------------------------------------------------
    def prepare(self) -> None:
        """Start a worker process now, to wait for the next job with the engine imported; once
        asked for, one is kept ready after every job until the viewer closes."""
        self._keep_spare = True
        if self._closed or self._running:
            return  # a running job's end prepares the next one
        with self._spare_lock:
            if self._spare is not None:
                return
            self._spare = _STARTING  # until the thread below has made it
        threading.Thread(target=self._make_spare, name="mtssl-spare", daemon=True).start()

    def _make_spare(self) -> None:
        try:
            worker = api.spare_worker()
        except Exception:  # noqa: BLE001 - no spare: the next job starts its own process
            worker = None
        with self._spare_lock:
            keep = not self._closed and self._spare is _STARTING
            if keep:  # None when it could not start: the next prepare() tries again
                self._spare = worker
        if worker is not None and not keep:
            worker.close(5)

    def _take_spare(self) -> Any | None:
        """The spare worker, if one is ready and alive (it is then the job's)."""
        with self._spare_lock:
            worker = self._spare
            if worker is _STARTING:
                return None  # still being made: left for the next job
            self._spare = None
        if worker is not None and not worker.usable:
            worker.close(1)
            return None
        return worker

    def _keep_as_spare(self, handle: Any) -> bool:
        """After a Stop, the job's worker waits for the next job (usually the resume): a fresh
        process would import the engine again, seconds on a laptop, while the user waits for the
        run they stopped. After a finished or failed job a fresh worker is made instead, so the
        memory of a whole run goes back and no state of a failed one is carried over."""
        if self.last_state != "stopped" or not self._keep_spare or self._closed:
            return False
        if not getattr(handle, "usable", False):  # a one-job process, or one that has ended
            return False
        with self._spare_lock:
            if self._spare is not None:
                return False
            self._spare = handle
        return True

    def release(self) -> None:
        """End the spare worker (the viewer is closing); no new one is made after this."""
        self._closed = True
        with self._spare_lock:
            worker, self._spare = self._spare, None
        if worker is not None and worker is not _STARTING:
            worker.shutdown()
        self.released.emit()

    # -- starting and stopping ----------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._running

    def start(
        self,
        workspace: Any,
        config: Any,
        what: What | str,
        preflight: Callable[[], None] | None = None,
        plan_for: What | str | None = None,
        resume: str | None = None,
    ) -> Any:
        """Start ``api.start_job(workspace, config, what)`` and relay its events.

        ``what=PLAN``: plan the run ``plan_for`` instead (``api.start_plan_job``); its result
        is the plan as a dict. ``resume``: the id of a stopped or interrupted run to go on with.

        The slow parts of starting (``preflight`` checks that read the data, spawning the worker
        process, importing the engine) run in a thread too, so the click never freezes the
        viewer. Returns that starter worker; ``job_finished`` fires in every outcome. Raises
        RuntimeError if a job is already running (one GPU, one job).
        """

        if self._running:
            raise RuntimeError("a job is already running; stop it or wait for it to finish")

        def launch() -> Any:
            if preflight is not None:
                preflight()
            spare = self._take_spare()
            if what == PLAN:
                return api.start_plan_job(
                    workspace, config, what=plan_for or What.ALL, worker=spare
                )
            return api.start_job(workspace, config, what=what, resume=resume, worker=spare)

        self.handle, self.what = None, what
        self.last_state = self.last_result = self.last_error = None
        self._stop_requested = False
        self._running = True
        self.running_changed.emit(True)
        self.job_started.emit(what)
        starter = create_worker(launch, _start_thread=False)
        starter.returned.connect(lambda handle: self.attach(handle, what))
        starter.errored.connect(self._on_start_error)
        self.starter = starter
        starter.start()
        return starter

    def _on_start_error(self, exc: BaseException) -> None:
        self.last_state = "failed"
        self._finish(None, str(exc) or type(exc).__name__)
        notifications.show_error(f"Could not start {self.what}: {exc}")

    def attach(self, handle: Any, what: str) -> None:
        """Relay an already started job handle (``start`` uses it; tests can too)."""

        already_announced = self._running and self.handle is None
        self.handle, self.what = handle, what
        self._running = True
        worker = create_worker(relay_events, handle, _start_thread=False)
        worker.yielded.connect(self._on_events)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_relay_error)
        self.worker = worker
        if not already_announced:
            self.last_state = self.last_result = self.last_error = None
            self.running_changed.emit(True)
            self.job_started.emit(what)
        if self._stop_requested:  # Stop was pressed while the process was starting
            handle.stop()
        worker.start()

    def stop(self) -> None:
        """Ask the job to stop at its next step; it saves its checkpoint and ends cleanly."""
        if not self._running:
            return
        self._stop_requested = True
        if self.handle is not None:
            self.handle.stop()

    def stop_and_wait(self, timeout: float = 60.0) -> bool:
        """Stop and keep the GUI alive until the job has ended; kill it after ``timeout`` s."""
        self.stop()
        deadline = time.monotonic() + timeout
        while self._running and time.monotonic() < deadline:
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.01)
        if self._running and self.handle is not None:
            self.handle.kill()
            return False
        return True

    # -- relay callbacks (GUI thread) -----------------------------------------------------------
    def _on_events(self, events: list[ev.Event]) -> None:
        # A listener that processes pending Qt events (a dock repainting, a dialog) may have the
        # next batch delivered while this one is half done. Queue it instead, so every listener sees the
        # events in the order the job produced them (out of order, curves jump backwards).
        self._pending.extend(events)
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._pending:
                event = self._pending.popleft()
                self.job_event.emit(event)
        finally:
            self._dispatching = False

    def _on_returned(self, state: str) -> None:
        handle = self.handle
        self.last_state = state
        result = getattr(handle, "result", None)
        if state == "failed":
            message = getattr(handle, "error", None) or "the job failed"
            self._finish(None, message)
            if self.what == PLAN:
                notifications.show_error(f"Cannot plan this run: {message}")
            else:
                notifications.show_error(
                    f"Training failed: {message}. Saved checkpoints and labels are kept."
                )
            return
        # A stop the user asked for is said in the dock's status line, which the next run
        # replaces; a toast would outlive it ("all stopped" beside a later run's results).
        self._finish(result, None)

    def _on_relay_error(self, exc: BaseException) -> None:
        # The relay itself failed (not the job): stop the job so nothing runs unseen.
        if self.handle is not None:
            self.handle.stop()
        self.last_state = "failed"
        self._finish(None, str(exc) or type(exc).__name__)
        notifications.show_error(f"Lost contact with the training job: {exc}")

    def _finish(self, result: dict | None, error: str | None) -> None:
        self.last_result, self.last_error = result, error
        if self.handle is not None and not self._keep_as_spare(self.handle):
            self.handle.shutdown()  # a finished job's worker ends (its memory goes back)
        self._running = False
        if self._keep_spare:
            self.prepare()
        self.running_changed.emit(False)
        if error is not None:
            self.job_failed.emit(error)
        self.job_finished.emit(result)

    # -- closing napari while a job runs ---------------------------------------------------------
    def _install_close_guard(self, viewer: Any) -> None:
        window = getattr(getattr(viewer, "window", None), "_qt_window", None)
        if window is not None:
            window.installEventFilter(self)
            self._window_ref = weakref.ref(window)  # no strong path from the session to the viewer

    @property
    def _guarded_window(self) -> Any | None:
        return self._window_ref() if self._window_ref is not None else None

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        if obj is self._guarded_window and event.type() == QEvent.Type.Close:
            if self._running and not self.confirm_close():
                event.ignore()
                return True
            self.release()
        return False

    def confirm_close(self) -> bool:
        """Ask whether to stop the running job and close; on yes, stop it cleanly first."""
        answer = QMessageBox.question(
            self._guarded_window,
            "Training is running",
            f"A {self.what} job is running. Stop it and close napari?\n"
            "The last checkpoint is kept; the job can be run again later.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return False
        self.stop_and_wait()
        return True


class JobProgressPanel(QWidget):
    """Progress bar, status line and Stop button for the viewer's job (shared by two docks)."""

    def __init__(self, controller: JobController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop at the next step; the last checkpoint is kept")
        self.stop_button.setEnabled(controller.is_running)
        self.stop_button.clicked.connect(controller.stop)
        row = QHBoxLayout()
        row.addWidget(self.bar, 1)
        row.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)
        controller.job_started.connect(self._on_started)
        controller.job_event.connect(self._on_event)
        controller.job_finished.connect(self._on_finished)
        controller.running_changed.connect(self.stop_button.setEnabled)

    def _on_started(self, what: str) -> None:
        self.bar.setRange(0, 0)  # busy until the first event says how many steps
        self.status.setText(f"{what}: starting the worker process…")

    def _on_event(self, e: ev.Event) -> None:
        if isinstance(e, ev.Progress) and e.total:
            self.bar.setRange(0, e.total)
            self.bar.setValue(min(e.step, e.total))
        elif isinstance(e, ev.Status) and e.total:  # the run's preparation, counted
            self.bar.setRange(0, e.total)
            self.bar.setValue(min(e.done or 0, e.total))
        self.status.setText(ev.describe(e))  # the CLI's wording too

    def _on_finished(self, result: object) -> None:
        c = self.controller
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if c.last_state == "done" else 0)
        if c.last_state == "failed":
            self.status.setText(f"{c.what} failed: {c.last_error}")
        elif c.last_state == "stopped":
            self.status.setText(f"{c.what} stopped; the last checkpoint is kept")
        else:
            self.status.setText(f"{c.what} finished")


def run_in_thread(
    func: Any,
    *args: Any,
    on_result: Any,
    action: str,
    on_yielded: Any = None,
    on_error: Any = None,
    **kwargs: Any,
) -> Any:
    """Run work off the GUI thread (reading files, an import, waiting for the engine's
    process to answer: ``Session.engine``); returns the started worker. One of the docks'
    three ways to keep the viewer free, with the :class:`JobController` (training in a worker
    process) and :func:`._turns.run_in_turns` (GUI-thread work split over turns of the event
    loop).

    ``on_result(value)`` runs in the GUI thread; ``on_yielded(item)`` too, for each item a
    generator ``func`` yields (its progress). A failure goes to ``on_error(exc)``, or else
    becomes one napari error message starting with ``action`` (engine errors already name the
    file and the problem).
    """

    worker = create_worker(func, *args, _start_thread=False, **kwargs)
    if on_yielded is not None:
        worker.yielded.connect(on_yielded)
    worker.returned.connect(on_result)
    worker.errored.connect(on_error or (lambda exc: notifications.show_error(f"{action}: {exc}")))
    worker.start()
    return worker
