"""The state the four docks share for one viewer: the open workspace and the running job.

Not a global singleton: :func:`session_for` keeps one :class:`Session` per viewer, stored on the
viewer's window object, so two viewers (or two tests) never see each other's workspace and a
closed viewer's session goes away with it. (A ``WeakKeyDictionary`` keyed by the viewer would
leak: the docks' signal connections give every session a strong path back to its viewer.)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal

from napari_mtssl import api
from napari_mtssl import events as ev
from napari_mtssl.service import EngineService
from napari_mtssl.widgets._jobs import JobController
from napari_mtssl.widgets._slider import keep_slider_fitted
from napari_mtssl.widgets._warm import thaw_for, warm_in_background

_ATTR = "_napari_mtssl_session"
_HEADLESS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


class Session(QObject):
    """Open workspace + job controller + change notifications for the docks of one viewer.

    Signals carry plain data only: ``workspace_changed(workspace or None)``,
    ``labels_changed(scan_id)`` after a label store write, ``models_changed()`` after a job ended
    (new checkpoints and metrics on disk).
    """

    workspace_changed = Signal(object)
    labels_changed = Signal(str)
    models_changed = Signal()

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self._viewer_ref = weakref.ref(viewer)
        self.workspace: Any | None = None
        self.jobs = JobController(viewer)
        # Compare, Propose, the student's mask to correct and Export run in a worker process
        # kept for the session: the viewer's process never imports torch for them.
        self.engine = EngineService()
        self.jobs.released.connect(self.engine.close)
        # Ready before the run ends (Compare is the next click), and again if it ended since.
        # Started at the run's first training step, not at the click: its import of torch
        # took the CPU from the job's plan and first step (beside two busy processes the first
        # step came 2-3 s later).
        self._engine_due = False
        self.jobs.job_started.connect(self._engine_after_first_step)
        self.jobs.job_event.connect(self._on_job_event)
        self.jobs.job_finished.connect(self._on_job_finished)
        # The training dock registers how it builds a config so that the correction dock's
        # retrain buttons use the same tasks/profile/device; the fallback is the quick profile.
        self.config_provider: Callable[[], Any] | None = None
        self.jobs.job_finished.connect(lambda _result: self.models_changed.emit())
        layers = getattr(viewer, "layers", None)
        if layers is not None:  # labels painted over a scan save in that scan's geometry
            # imported here, when needed: it loads the scan readers
            from napari_mtssl.widgets._state import adopt_geometry

            ref = weakref.ref(viewer)

            def on_inserted(event: Any) -> None:
                v = ref()
                if v is not None:
                    adopt_geometry(v, event.value)

            layers.events.inserted.connect(on_inserted)
            # a layer frozen by the warm-up is freed when it goes (_warm.thaw_for)
            layers.events.removed.connect(lambda event: thaw_for(event.value))
            keep_slider_fitted(viewer)  # the slice slider spans the scan on screen

            warm_in_background(viewer)  # the first layer's one-time costs, off the GUI thread

    def _engine_after_first_step(self, _what: str) -> None:
        self._engine_due = True

    def _on_job_event(self, event: Any) -> None:
        if self._engine_due and isinstance(event, ev.Progress):
            self._engine_due = False
            self.engine.prepare(self.workspace)

    def _on_job_finished(self, _result: Any) -> None:
        self._engine_due = False
        self.engine.prepare(self.workspace, refresh=True)

    @property
    def viewer(self) -> Any | None:
        return self._viewer_ref()

    def set_workspace(self, workspace: Any | None) -> None:
        self.workspace = workspace
        if workspace is not None:  # training is near: a worker process gets ready for it
            self.jobs.prepare()
            # and one for comparing and correcting, where there are models to do it with
            self.engine.prepare(workspace, when=lambda: bool(api.list_models(workspace)))
        self.workspace_changed.emit(workspace)

    def require_workspace(self) -> Any:
        """The open workspace, or a ValueError whose message tells the user what to do."""
        if self.workspace is None:
            raise ValueError(
                "no workspace is open: create or open one in the Study dock (or load the sample)"
            )
        return self.workspace

    def make_config(self) -> Any:
        if self.config_provider is not None:
            return self.config_provider()

        return api.make_config(profile="quick")


def unwrap(viewer: Any) -> Any:
    """The real viewer behind the public-only proxy napari hands to plugin docks.

    Each dock gets its own proxy object, so the proxy cannot key the shared session; the close
    guard also needs the Qt main window, which the proxy hides.
    """
    return getattr(viewer, "__wrapped__", viewer)


def session_for(viewer: Any) -> Session:
    """The session of ``viewer`` (or of the viewer behind a proxy), created on first use."""
    viewer = unwrap(viewer)
    window = getattr(viewer, "window", None)
    session = getattr(window, _ATTR, None) if window is not None else _HEADLESS.get(viewer)
    if session is None:
        session = Session(viewer)
        if window is not None:
            setattr(window, _ATTR, session)
        else:  # a viewer model without a window (scripts): no docks, so no path back to it
            _HEADLESS[viewer] = session
    return session
