"""Correct and retrain dock: edit the student's prediction, accept slices, retrain, see history."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from napari.utils import notifications
from napari.utils.key_bindings import coerce_keybinding
from qtpy.QtCore import QEvent, QObject, Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_mtssl import api, ids
from napari_mtssl import events as ev
from napari_mtssl.ids import What
from napari_mtssl.widgets import _state
from napari_mtssl.widgets._jobs import JobProgressPanel, run_in_thread
from napari_mtssl.widgets._session import session_for
from napari_mtssl.widgets._state import LayerLabels
from napari_mtssl.widgets.study import report_errors

RETRAIN = (
    (
        What.RETRAIN_QUICK,
        "Retrain quick",
        "fine-tune the student on the corrected slices (a sixth of the time budget, at least "
        "3 minutes)",
    ),
    (
        What.RETRAIN_STAGE2,
        "Stage 2 again",
        "distil the teachers into a new student with the corrections (a third of the budget)",
    ),
    (What.ALL, "Everything", "retrain teachers, baseline and student (the whole time budget)"),
)
# Share of the training dock's time budget each kind of retraining gets (at least 3 minutes):
# one model is retrained where a full run trains many.
RETRAIN_SHARE = {What.RETRAIN_QUICK: 1 / 6, What.RETRAIN_STAGE2: 1 / 3, What.ALL: 1.0}
HISTORY_MODELS = ("student", "baseline")
PROPOSED = 10  # slices proposed at a time (the simulated annotator's round)
# Propose ranks the slices of at most this many unlabelled scans, drawn at random, so that it
# answers in seconds on a study of hundreds of scans (docs/benchmarks.md, the viewer benchmark).
PROPOSE_SCANS = 12
# Shown in the strategy chooser; the measured one first (napari_mtssl.active.RECOMMENDED).
STRATEGY_LABELS = {
    "fg_random": "random slices showing the anatomy",
    "disagreement": "where the teachers disagree",
    "entropy": "where the student is unsure",
    "random": "random slices",
}


# Keys of the correction loop, on the canvas (napari's key syntax), and what each does. N and A
# are free in napari's default keymap (A only selects points, where a points layer is chosen);
# P, E and F are napari's own brush, eraser and fill keys of a labels layer. Bound on the viewer,
# they reach us only when the selected layer does not claim them: with the scan's image layer
# selected they pick the corrections layer first, with that layer selected napari's own binding
# does the same thing.
SHORTCUTS: tuple[tuple[str, str, str], ...] = (
    ("N", "next proposed slice", "next_proposal"),
    ("Shift-N", "previous proposed slice", "previous_proposal"),
    ("A", "accept the slice on screen", "accept_current_slice"),
    ("P", "brush on the corrections layer", "paint"),
    ("E", "eraser on the corrections layer", "erase"),
    ("F", "fill on the corrections layer", "fill"),
)
TOOLS = {"paint": "paint", "erase": "erase", "fill": "fill"}  # shortcut -> labels layer mode


def shortcut_help() -> str:
    """One line per key, for the dock's help text and tooltips."""
    return "\n".join(f"{key}: {what}" for key, what, _ in SHORTCUTS)


def edit_layer_name(scan_id: str) -> str:
    return _state.model_layer_name(scan_id, "edit")


def edited_slices(data: np.ndarray, original: np.ndarray) -> list[int]:
    """Slices (axis 0) where the edited mask differs from the prediction it started from."""
    if data.shape != original.shape:
        raise ValueError(f"edited shape {data.shape} differs from the original {original.shape}")
    return [int(z) for z in np.flatnonzero((data != original).reshape(data.shape[0], -1).any(1))]


def _corrections(entry: api.Round) -> tuple[str, str]:
    """A round's corrected slices and the time people spent on them (where it was timed)."""
    c = entry.corrections
    effort = ""
    if c.timed_slices:
        effort = f"{c.effort_s / 60:.1f} min"
        if c.timed_slices < c.slices:
            effort += f" ({c.timed_slices} timed)"
    return str(c.slices), effort


class CorrectWidget(QWidget):
    """Edit the student's labels with napari's tools, accept slices, retrain, compare rounds."""

    edit_ready = Signal(str)  # scan id whose editable student prediction is in the viewer
    accepted = Signal(str, list)  # scan id, slices written as "corrected"
    proposals_ready = Signal(list)  # the proposed Candidates ([] when cancelled)
    _ranked = Signal(int, int, str)  # from the ranking thread: scans done, of how many, next

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.jobs = self.session.jobs
        self.job_finished = self.jobs.job_finished
        self.worker: Any | None = None
        self._cancel_propose: Any | None = None  # threading.Event while Propose ranks
        self._ranked.connect(self._show_ranking_progress)
        self._original: dict[str, np.ndarray] = {}  # scan id -> prediction the edit started from
        self._painted: dict[str, set[int]] = {}
        # scan id -> slice -> when it was first on screen in the edit layer (correction effort)
        self._seen_at: dict[str, dict[int, float]] = {}
        napari_viewer.dims.events.current_step.connect(lambda _e: self._note_all_shown())

        self.scan = QComboBox()
        self.edit_button = QPushButton("Edit student prediction")
        self.edit_button.setToolTip(
            "put the student's labels in an editable layer; use napari's paint, fill and erase"
        )
        self.edit_button.clicked.connect(lambda: self.edit_prediction())
        self.accept_slice_button = QPushButton("Accept this slice")
        self.accept_slice_button.setToolTip(
            "save the slice on screen as corrected (saved at once, with you and this round); "
            "it trains the next round. Key: A"
        )
        self.accept_slice_button.clicked.connect(lambda: self.accept_current_slice())
        self.accept_all_button = QPushButton("Accept all edited slices")
        self.accept_all_button.setToolTip("save every slice you changed as corrected")
        self.accept_all_button.clicked.connect(lambda: self.accept_edited())
        self.edit_status = QLabel("")
        self.edit_status.setWordWrap(True)

        edit_box = QGroupBox("Correct")
        grid = QGridLayout(edit_box)
        row = QHBoxLayout()
        row.addWidget(QLabel("Scan"))
        row.addWidget(self.scan, 1)
        grid.addLayout(row, 0, 0, 1, 2)
        grid.addWidget(self.edit_button, 1, 0, 1, 2)
        grid.addWidget(self.accept_slice_button, 2, 0)
        grid.addWidget(self.accept_all_button, 2, 1)
        grid.addWidget(self.edit_status, 3, 0, 1, 2)
        self.keys_help = QLabel(
            "Keys on the canvas: N / Shift-N next / previous proposed slice, A accept the slice, "
            "P brush, E eraser, F fill (on the corrections layer)"
        )
        self.keys_help.setWordWrap(True)
        self.keys_help.setStyleSheet("color: #a0a4ab;")
        self.keys_help.setToolTip(shortcut_help())
        grid.addWidget(self.keys_help, 4, 0, 1, 2)

        retrain_box = QGroupBox("Retrain with the corrections")
        box = QVBoxLayout(retrain_box)
        row = QHBoxLayout()
        self.retrain_buttons: dict[What, QPushButton] = {}
        for what, text, tip in RETRAIN:
            btn = QPushButton(text)
            btn.setToolTip(tip)
            btn.clicked.connect(lambda _=False, w=what: self.retrain(w))
            self.retrain_buttons[what] = btn
            row.addWidget(btn)
        box.addLayout(row)
        self.progress_panel = JobProgressPanel(self.jobs)
        box.addWidget(self.progress_panel)

        next_box = self._build_next_box()

        self.history = QTableWidget(0, 0)
        self.history.verticalHeader().setVisible(False)
        self.history.setToolTip("what each round of corrections bought: Dice per model per round")

        layout = QVBoxLayout(self)
        layout.addWidget(next_box)
        layout.addWidget(edit_box)
        layout.addWidget(retrain_box)
        layout.addWidget(QLabel("Rounds"))
        layout.addWidget(self.history, 1)

        self.session.workspace_changed.connect(lambda _ws: self.refresh())
        self.session.models_changed.connect(self.refresh)
        self.jobs.running_changed.connect(self._set_running)
        self._set_running(self.jobs.is_running)
        self.refresh()

        # keys: bound now, unbound when the dock holding this widget is closed (see eventFilter)
        self._keys: dict[str, Any] = {}  # key -> the function bound on the viewer
        self._docked = False
        self.bind_keys()
        self._watch_ancestors()

    # -- which slices next ------------------------------------------------------------------------
    def _build_next_box(self) -> QGroupBox:
        RECOMMENDED, RECOMMENDED_WHY = api.recommended_strategy()

        box = QGroupBox("Next slices to correct")
        lay = QVBoxLayout(box)
        row = QHBoxLayout()
        self.strategy = QComboBox()
        order = [RECOMMENDED, *[s for s in STRATEGY_LABELS if s != RECOMMENDED]]
        for s in order:
            self.strategy.addItem(
                STRATEGY_LABELS[s] + ("  (default)" if s == RECOMMENDED else ""), s
            )
        self.strategy.setToolTip(f"How slices are chosen. Default: {RECOMMENDED_WHY}.")
        # the longest choice must not widen the dock past a 1366 x 768 screen
        self.strategy.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.strategy.setMinimumContentsLength(16)
        self.propose_button = QPushButton("Propose")
        self._propose_tip = (
            f"choose {PROPOSED} unlabelled training slices to correct next (among at most "
            f"{PROPOSE_SCANS} scans drawn at random); click one to edit it"
        )
        self.propose_button.setToolTip(self._propose_tip)
        self.propose_button.clicked.connect(lambda: self.propose())
        row.addWidget(self.strategy, 1)
        row.addWidget(self.propose_button)
        lay.addLayout(row)
        # what the measurement found, where the choice is made (the numbers: the tooltip)
        self.strategy_note = QLabel(
            "Measured on ACDC: no ranking by the models beat random slices; the default picks "
            "random slices where the student sees something."
        )
        self.strategy_note.setWordWrap(True)
        self.strategy_note.setStyleSheet("color: #a0a4ab;")
        self.strategy_note.setToolTip(RECOMMENDED_WHY)
        lay.addWidget(self.strategy_note)
        self.proposals = QListWidget()
        self.proposals.setMaximumHeight(120)
        self.proposals.setWordWrap(True)  # the reasons wrap instead of widening the dock
        self.proposals.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.proposals.setToolTip(
            "why each slice was chosen; click to edit it (keys: N next, Shift-N previous)"
        )
        self.proposals.itemClicked.connect(self._open_proposal)
        lay.addWidget(self.proposals)
        return box

    @property
    def proposing(self) -> bool:
        """Whether Propose is ranking slices (its button then reads Cancel)."""
        return self._cancel_propose is not None

    @report_errors("Could not propose slices")
    def propose(self, strategy: str | None = None) -> Any:
        """Rank the unlabelled training slices (in a thread) and list the next ones to correct;
        pressed again while it ranks, it cancels (between two scans: a second or so)."""

        if self._cancel_propose is not None:
            self._cancel_propose.set()
            self.propose_button.setEnabled(False)
            self.proposals.clear()
            self.proposals.addItem("cancelling…")
            return self.worker
        ws = self.session.require_workspace()
        strategy = strategy or self.strategy.currentData()
        if strategy == "disagreement" and len(ids.teachers(api.list_models(ws))) < 2:
            raise ValueError("teacher disagreement needs two or more teachers: train stage 1")
        if strategy != "random" and not {"student", "baseline"} & set(api.list_models(ws)):
            raise ValueError("no trained model yet: train first (or choose random slices)")
        cancel = threading.Event()
        self._cancel_propose = cancel
        self.propose_button.setText("Cancel")
        self.propose_button.setToolTip("stop ranking the slices")
        self.proposals.clear()
        self.proposals.addItem("ranking the unlabelled slices…")

        def progress(e: ev.Event) -> None:  # in the thread below: the ranking's progress
            if isinstance(e, ev.Status) and e.total:
                self._ranked.emit(e.done or 0, e.total, e.message)  # queued to the GUI thread

        def rank() -> list | None:  # the engine's process ranks; None once cancelled
            return self.session.engine.run(
                "propose",
                cancel=cancel,
                on_event=progress,
                workspace=ws,
                k=PROPOSED,
                strategy=strategy,
                max_scans=PROPOSE_SCANS,
            )

        def done(found: list | None) -> None:
            self._end_propose()
            if found is None or cancel.is_set():  # a click on Cancel wins, however late
                self.proposals.clear()
                self.proposals.addItem("cancelled: press Propose to rank again")
                self.proposals_ready.emit([])
                return
            self.show_proposals(found)
            self.proposals_ready.emit(found)

        def failed(_e: Any) -> None:
            self._end_propose()
            self.proposals.clear()

        self.worker = run_in_thread(rank, on_result=done, action="Could not propose slices")
        self.worker.errored.connect(failed)
        return self.worker

    def _show_ranking_progress(self, i: int, n: int, scan_id: str) -> None:
        if self._cancel_propose is None or self._cancel_propose.is_set():
            return
        self.proposals.clear()
        what = f": {scan_id}" if scan_id else ""
        self.proposals.addItem(f"ranking the unlabelled slices, scan {min(i + 1, n)} of {n}{what}…")

    def _end_propose(self) -> None:
        self._cancel_propose = None
        self.propose_button.setText("Propose")
        self.propose_button.setToolTip(self._propose_tip)
        self.propose_button.setEnabled(self.session.workspace is not None)

    def show_proposals(self, found: list) -> None:
        self.proposals.clear()
        if not found:
            self.proposals.addItem("every training slice is labelled: nothing to propose")
            return
        for c in found:
            item = QListWidgetItem(f"{c.scan}  slice {c.z}: {c.reason}")
            item.setData(Qt.ItemDataRole.UserRole, (c.scan, int(c.z)))
            item.setToolTip(c.reason)
            self.proposals.addItem(item)

    def _open_proposal(self, item: QListWidgetItem) -> Any:
        where = item.data(Qt.ItemDataRole.UserRole)
        if not where:
            return None
        scan_id, z = where
        layer = _state.find_layer(self.viewer, edit_layer_name(scan_id))
        if layer is not None:
            _state.go_to_slice(self.viewer, z, layer)
            return None
        worker = self.edit_prediction(scan_id)
        if worker is not None:
            self.edit_ready.connect(self._go_when_ready(scan_id, z))
        return worker

    def _go_when_ready(self, scan_id: str, z: int):
        def go(ready: str) -> None:
            if ready != scan_id:
                return
            self.edit_ready.disconnect(go)
            _state.go_to_slice(
                self.viewer, z, _state.find_layer(self.viewer, edit_layer_name(scan_id))
            )
            self._note_shown(scan_id)

        return go

    def next_proposal(self) -> Any:
        """Show the next proposed slice (the first when none was chosen yet)."""
        return self._step_proposal(+1)

    def previous_proposal(self) -> Any:
        return self._step_proposal(-1)

    def _step_proposal(self, step: int) -> Any:
        rows = [
            r
            for r in range(self.proposals.count())
            if self.proposals.item(r).data(Qt.ItemDataRole.UserRole)
        ]
        if not rows:
            notifications.show_info("No proposed slices: press Propose first")
            return None
        current = self.proposals.currentRow()
        if current not in rows:
            row = rows[0]
        else:
            i = rows.index(current) + step
            if not 0 <= i < len(rows):
                notifications.show_info(
                    "That was the last proposed slice" if step > 0 else "This is the first one"
                )
                return None
            row = rows[i]
        item = self.proposals.item(row)
        self.proposals.setCurrentRow(row)
        worker = self._open_proposal(item)
        scan_id, _z = item.data(Qt.ItemDataRole.UserRole)
        layer = _state.find_layer(self.viewer, edit_layer_name(scan_id))
        if layer is not None:  # painting goes to the corrections, not to what was selected
            self.viewer.layers.selection.active = layer
            self._note_shown(scan_id)
        return worker

    @report_errors("Could not choose the tool")
    def use_tool(self, mode: str) -> Any:
        """Select the corrections layer of the scan being edited and its ``mode`` (paint, erase,
        fill), whichever layer was selected before."""
        layer = self._edit_layer(self._editing_scan())
        self.viewer.layers.selection.active = layer
        layer.mode = mode
        return layer

    # -- keys ------------------------------------------------------------------------------------
    def bind_keys(self) -> dict[str, Any]:
        """Bind ``SHORTCUTS`` on the viewer; a key someone else bound there is left to them.
        Returns key -> bound function."""
        for key, _what, action in SHORTCUTS:
            if key in self._keys:
                continue
            func = self._key_function(action)
            try:
                self.viewer.bind_key(key, func)
            except ValueError:  # already used on this viewer (a script's own key): keep it
                continue
            self._keys[key] = func
        return dict(self._keys)

    def unbind_keys(self) -> None:
        """Remove our keys from the viewer (only those still bound to us)."""

        for key, func in list(self._keys.items()):
            if self.viewer.keymap.get(coerce_keybinding(key)) is func:
                self.viewer.bind_key(key, None)
            del self._keys[key]

    def _key_function(self, action: str) -> Any:
        def on_key(_viewer: Any) -> None:
            try:
                if action in TOOLS:
                    self.use_tool(TOOLS[action])
                else:
                    getattr(self, action)()
            except RuntimeError:  # the dock's Qt widgets are gone: nothing to act on
                self.unbind_keys()

        on_key.__name__ = f"mtssl_{action}"  # what napari's keybinding list shows
        on_key.__doc__ = {a: w for _k, w, a in SHORTCUTS}[action]
        return on_key

    def _watch_ancestors(self) -> None:
        """Follow reparenting of this widget and of every widget around it: napari closes a
        dock by taking its content out of the dock (``setParent(None)``) on the outermost
        widget, which may be a tab page several levels up."""
        w: QObject | None = self
        while w is not None:
            w.installEventFilter(self)  # installed once, however often this runs
            w = w.parent()

    def _in_a_dock(self) -> bool:
        w: QObject | None = self.parent()
        while w is not None:
            if isinstance(w, QDockWidget | QMainWindow):
                return True
            w = w.parent()
        return False

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        try:
            if event.type() == QEvent.Type.ParentChange:
                self._watch_ancestors()
                if self._in_a_dock():
                    self._docked = True
                    self.bind_keys()  # back in a dock after a close: the keys again
                elif self._docked:
                    self._docked = False
                    self.unbind_keys()
        except RuntimeError:  # Qt is deleting these widgets (napari closing)
            pass
        return False

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        self.unbind_keys()
        super().closeEvent(event)

    # -- editing ---------------------------------------------------------------------------------
    @report_errors("Could not predict with the student")
    def edit_prediction(self, scan_id: str | None = None) -> Any:
        """Predict with the student (in a thread) and show it as an editable labels layer."""
        ws = self.session.require_workspace()
        scan_id = scan_id or self.scan.currentText()
        if not scan_id:
            raise ValueError("choose a scan")
        self.edit_status.setText(f"predicting {scan_id} with the student…")
        read_scan = _state.find_layer(self.viewer, _state.scan_layer_name(scan_id)) is None

        def work() -> tuple[Any, Any]:  # the scan is read here too when it is not shown yet
            labels = self.session.engine.run(
                "predict_labels", workspace=ws, scan=scan_id, model="student"
            )
            return labels, (ws.load_scan(scan_id) if read_scan else None)

        self.worker = run_in_thread(
            work,
            on_result=lambda out: self._show_edit(scan_id, *out),
            action=f"Could not predict {scan_id} with the student",
        )
        self.worker.errored.connect(lambda e: self.edit_status.setText(f"prediction failed: {e}"))
        return self.worker

    def _show_edit(self, scan_id: str, labels: Any, scan: Any = None) -> None:
        """The student's prediction as an editable layer over its scan (``scan``: read off the
        GUI thread when the viewer did not show it)."""
        ws = self.session.require_workspace()
        labels = np.asarray(labels)
        image_layer = _state.find_layer(self.viewer, _state.scan_layer_name(scan_id))
        if image_layer is None:
            scan = scan if scan is not None else ws.load_scan(scan_id)
            image_layer = _state.show_scan(self.viewer, scan, scan_id, ws)
        name = edit_layer_name(scan_id)
        old = _state.find_layer(self.viewer, name)
        if old is not None:
            self.viewer.layers.remove(old)
        layer = _state.show_labels(
            self.viewer, labels.copy(), name, scan_id, tuple(image_layer.scale), "edit", ws=ws
        )
        _state.show_only_scan(self.viewer, scan_id, keep=(name,))
        self._original[scan_id] = labels.copy()
        self._painted[scan_id] = set()
        self.scan.setCurrentText(scan_id)
        layer.events.paint.connect(lambda event, sid=scan_id: self._on_paint(sid, event))
        layer.opacity = 0.6
        layer.selected_label = 1
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        self.edit_status.setText(
            f"editing {name}: paint, fill or erase, then accept the slices you corrected"
        )
        self._seen_at.setdefault(scan_id, {})
        self._note_shown(scan_id)
        self.edit_ready.emit(scan_id)

    def _note_shown(self, scan_id: str | None = None) -> None:
        """When a slice of the edit layer is first on screen: the start of its correction."""
        scan_id = scan_id or next(iter(self._seen_at), None)
        if scan_id is None or scan_id not in self._seen_at:
            return
        layer = _state.find_layer(self.viewer, edit_layer_name(scan_id))
        if layer is None or not layer.visible:
            return
        z = _state.current_slice(self.viewer, layer)
        self._seen_at[scan_id].setdefault(int(z), time.monotonic())

    def _note_all_shown(self) -> None:
        for sid in list(self._seen_at):
            self._note_shown(sid)

    def effort(self, scan_id: str, slices: list[int]) -> dict[int, float]:
        """Seconds from first showing each slice in the edit layer to now (its acceptance)."""
        now = time.monotonic()
        seen = self._seen_at.get(scan_id, {})
        return {int(z): now - seen[int(z)] for z in slices if int(z) in seen}

    def _on_paint(self, scan_id: str, event: Any) -> None:
        # Each paint "atom" is (indices, old values, new value); its first index array is z.
        for atom in getattr(event, "value", None) or []:
            try:
                self._painted.setdefault(scan_id, set()).update(int(z) for z in set(atom[0][0]))
            except (TypeError, IndexError, ValueError):
                continue
        self._update_edit_status(scan_id)

    def pending_slices(self, scan_id: str) -> list[int]:
        """Slices edited but not yet accepted (data compared with the starting prediction)."""
        layer = _state.find_layer(self.viewer, edit_layer_name(scan_id))
        if layer is None or scan_id not in self._original:
            return []
        data = LayerLabels.from_layer(layer).data
        return edited_slices(data, self._original[scan_id])

    def _update_edit_status(self, scan_id: str) -> None:
        pending = self.pending_slices(scan_id)
        text = ", ".join(map(str, pending[:20])) + ("…" if len(pending) > 20 else "")
        self.edit_status.setText(
            f"{scan_id}: edited slices not yet accepted: {text}"
            if pending
            else f"{scan_id}: no pending edits"
        )

    # -- accepting -------------------------------------------------------------------------------
    @report_errors("Could not accept the slice")
    def accept_current_slice(self, scan_id: str | None = None) -> list[int]:
        scan_id = scan_id or self._editing_scan()
        layer = self._edit_layer(scan_id)
        return self._accept(scan_id, [_state.current_slice(self.viewer, layer)])

    @report_errors("Could not accept the edited slices")
    def accept_edited(self, scan_id: str | None = None) -> list[int]:
        scan_id = scan_id or self._editing_scan()
        slices = self.pending_slices(scan_id)
        if not slices:
            notifications.show_info(
                "No edited slices to accept (paint, fill or erase in the edit layer first)"
            )
            return []
        return self._accept(scan_id, slices)

    def _accept(self, scan_id: str, slices: list[int]) -> list[int]:
        """Write ``slices`` of the edit layer as corrected labels (by user, current round)."""

        ws = self.session.require_workspace()
        data = LayerLabels.from_layer(self._edit_layer(scan_id)).data
        api.accept_correction(
            ws, scan_id, data, slices, by="user", effort_s=self.effort(scan_id, slices)
        )
        original = self._original.get(scan_id)
        if original is not None:  # accepted slices are no longer pending
            original[slices] = data[slices]
        self._painted.get(scan_id, set()).difference_update(slices)
        self.session.labels_changed.emit(scan_id)
        self.accepted.emit(scan_id, list(slices))
        self._update_edit_status(scan_id)
        notifications.show_info(
            f"{scan_id}: slice(s) {', '.join(map(str, slices))} stored as corrected"
        )
        return list(slices)

    def _editing_scan(self) -> str:
        scan_id = self.scan.currentText()
        if scan_id and _state.find_layer(self.viewer, edit_layer_name(scan_id)) is not None:
            return scan_id
        for sid in self._original:
            if _state.find_layer(self.viewer, edit_layer_name(sid)) is not None:
                return sid
        raise ValueError("no edit layer: press 'Edit student prediction' first")

    def _edit_layer(self, scan_id: str) -> Any:
        layer = _state.find_layer(self.viewer, edit_layer_name(scan_id))
        if layer is None:
            raise ValueError(f"no edit layer for {scan_id}: press 'Edit student prediction' first")
        return layer

    # -- retraining ------------------------------------------------------------------------------
    @report_errors("Could not start retraining")
    def retrain(self, what: What | str) -> Any:
        """Same job mechanism as the training dock, with its settings when it is open; the
        time budget is shared as ``RETRAIN_SHARE`` says."""
        ws = self.session.require_workspace()
        config = self.session.make_config()
        if config.budget_s > 0:
            config.budget_s = min(
                config.budget_s, max(180.0, config.budget_s * RETRAIN_SHARE[what])
            )
        return self.jobs.start(ws, config, what)

    def _set_running(self, running: bool) -> None:
        for btn in self.retrain_buttons.values():
            btn.setEnabled(not running)

    # -- refresh / history ----------------------------------------------------------------------
    def refresh(self) -> None:
        ws = self.session.workspace
        _state.refill_scan_choice(self.scan, ws)
        for btn in (
            self.edit_button,
            self.accept_slice_button,
            self.accept_all_button,
            self.propose_button,
        ):
            btn.setEnabled(ws is not None)
        self.refresh_history()

    def refresh_history(self) -> None:
        """One row per round: what ran, when, on how many labelled slices, Dice per model."""
        ws = self.session.workspace
        entries: list[api.Round] = []
        if ws is not None:
            try:
                entries = api.history(ws)
            except Exception as exc:  # noqa: BLE001 - shown in the dock, not raised
                self.edit_status.setText(f"history unavailable: {exc}")
        seen = [m for e in entries for m in e.metrics]
        models = list(HISTORY_MODELS) + sorted(
            {m for m in seen if m == "all_joint" or m in ids.teachers(seen)}
        )
        models = [m for m in models if any(e.dice(m) is not None for e in entries)]
        # the change of the student's Dice first: what each round bought, without scrolling
        headers = ["Round", "Δ student", "What", "When", "Labelled slices", "Corrected", "Effort"]
        headers += models
        self.history.setColumnCount(len(headers))
        self.history.setHorizontalHeaderLabels(headers)
        self.history.setRowCount(len(entries))
        previous: float | None = None
        for r, e in enumerate(entries):
            student = e.dice("student")
            delta = "" if student is None or previous is None else f"{student - previous:+.3f}"
            if student is not None:
                previous = student
            values = [
                str(e.round),
                delta,
                e.what or "",
                e.time[:19].replace("T", " "),
                "" if e.labelled_slices is None else str(e.labelled_slices),
                *_corrections(e),
                *[("" if e.dice(m) is None else f"{e.dice(m):.3f}") for m in models],
            ]
            for c, text in enumerate(values):
                self.history.setItem(r, c, QTableWidgetItem(text))
        self.history.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents
        )
