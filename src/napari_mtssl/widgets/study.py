"""Study dock: open scans and workspaces, attach labels, choose splits, see what is labelled."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils import notifications
from qtpy.QtCore import QCoreApplication, QSize, Qt, QTimer
from qtpy.QtGui import QColor, QPainter
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionComboBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_mtssl import api
from napari_mtssl.api import SPLITS  # train, val, test, unused
from napari_mtssl.widgets._jobs import run_in_thread, widget_alive
from napari_mtssl.widgets._session import session_for
from napari_mtssl.widgets._state import (
    ROLE_KEY,
    SCAN_ID_KEY,
    WORKSPACE_KEY,
    LayerLabels,
    LayerScan,
    show_labels,
    show_only_scan,
    show_scan,
)
from napari_mtssl.widgets._turns import run_in_turns

STATUS_COLOURS = {
    "unlabelled": QColor(70, 70, 70),
    "annotated": QColor(60, 170, 90),
    "corrected": QColor(235, 150, 40),
}


def labels_layer_name(scan_id: str) -> str:
    return f"{scan_id}_labels"


def parse_class_names(text: str) -> dict[int, str]:
    """``"0: background, 1: right ventricle"`` or ``"background, RV, myo, LV"`` (numbered in
    order) -> ``{0: "background", ...}``; ValueError naming what is wrong."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        raise ValueError("give the class names, e.g. 0: background, 1: liver")
    out: dict[int, str] = {}
    for i, part in enumerate(parts):
        key, sep, name = part.partition(":")
        if sep:
            try:
                k = int(key.strip())
            except ValueError:
                raise ValueError(f"{part!r}: the class number before ':' is not a number") from None
        else:
            k, name = i, key
        if not name.strip():
            raise ValueError(f"{part!r}: the class has no name")
        if k in out:
            raise ValueError(f"class {k} is named twice")
        out[k] = name.strip()
    if 0 not in out:
        out[0] = "background"
    return dict(sorted(out.items()))


def format_class_names(names: dict[int, str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(names.items()))


def report_errors(action: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for button handlers: any exception becomes one napari error message.

    Our io/workspace errors already name the file and the problem; the traceback goes to the log
    only, never into the user's face.
    """

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown to the user, not swallowed
                notifications.show_error(f"{action}: {exc}")
                return None

        run.__name__ = func.__name__
        run.__doc__ = func.__doc__
        return run

    return wrap


def read_for_view(ws: Any, scan_id: str) -> tuple[Any, np.ndarray | None]:
    """What showing a scan reads from the workspace (any thread): the scan, and its labels
    when any slice has some (None otherwise)."""
    scan = ws.load_scan(scan_id)
    labelled = any(s != "unlabelled" for s in ws.slice_status(scan_id))
    return scan, (np.asarray(ws.labels(scan_id)) if labelled else None)


def _show_error(message: str) -> None:
    notifications.show_error(message)


STRIP_ROLE = Qt.ItemDataRole.UserRole + 1  # a row's per-slice statuses, for the strip


class SliceStripDelegate(QStyledItemDelegate):
    """Paints the "Per slice" column: one cell per slice, coloured by its label status.

    A delegate rather than a widget per row: a study of 160 scans builds its table without
    160 child widgets (each one cost the viewer milliseconds)."""

    def paint(self, painter: QPainter, option: Any, index: Any) -> None:
        statuses = index.data(STRIP_ROLE) or []
        n = len(statuses)
        if n == 0:
            return
        r = option.rect
        painter.save()
        for i, status in enumerate(statuses):
            x0, x1 = r.x() + round(i * r.width() / n), r.x() + round((i + 1) * r.width() / n)
            painter.fillRect(
                x0,
                r.y() + 2,
                max(1, x1 - x0 - 1),
                r.height() - 4,
                STATUS_COLOURS.get(status, QColor(Qt.GlobalColor.red)),
            )
        painter.restore()

    def sizeHint(self, option: Any, index: Any) -> QSize:  # noqa: N802 (Qt API)
        return QSize(max(60, 4 * len(index.data(STRIP_ROLE) or [])), 14)


class SplitDelegate(QStyledItemDelegate):
    """The "Split" column: painted as a combo box, a real one made only while a cell is edited
    (a click on it opens its list at once). A delegate rather than a combo box per row: 160
    combo boxes took the viewer 0.5-0.8 s of turns and repaints after an import, beside two
    busy processes, while the user opened a scan and clicked Train. ``picked(row, split)`` is
    called with the user's choice; the cell shows what the workspace then holds."""

    def __init__(self, parent: Any, picked: Callable[[int, str], None]) -> None:
        super().__init__(parent)
        self._picked = picked
        self._hint: QSize | None = None

    def paint(self, painter: QPainter, option: Any, index: Any) -> None:
        widget = option.widget
        style = widget.style() if widget is not None else QApplication.style()
        box = QStyleOptionComboBox()
        box.rect = option.rect
        box.state = option.state | QStyle.StateFlag.State_Enabled
        box.palette = option.palette
        box.currentText = str(index.data() or "")
        style.drawComplexControl(QStyle.ComplexControl.CC_ComboBox, box, painter, widget)
        style.drawControl(QStyle.ControlElement.CE_ComboBoxLabel, box, painter, widget)

    def sizeHint(self, option: Any, index: Any) -> QSize:  # noqa: N802 (Qt API)
        if self._hint is None:  # a combo box of the splits, once (asked for every row)
            sample = QComboBox()
            sample.addItems(SPLITS)
            self._hint = sample.sizeHint()
        return self._hint

    def createEditor(self, parent: Any, option: Any, index: Any) -> QComboBox:  # noqa: N802
        combo = QComboBox(parent)
        combo.addItems(SPLITS)
        # a choice ends the edit at once (not only when the cell loses focus)
        combo.activated.connect(lambda _i, c=combo: self._done(c))
        QTimer.singleShot(0, lambda: combo.showPopup() if widget_alive(combo) else None)
        return combo

    def _done(self, combo: QComboBox) -> None:
        self.commitData.emit(combo)
        self.closeEditor.emit(combo)

    def setEditorData(self, editor: QComboBox, index: Any) -> None:  # noqa: N802 (Qt API)
        editor.setCurrentText(str(index.data() or SPLITS[0]))

    def setModelData(self, editor: QComboBox, model: Any, index: Any) -> None:  # noqa: N802
        if editor.currentText() != index.data():
            self._picked(index.row(), editor.currentText())


def _counts(statuses: list[str]) -> tuple[int, int, int]:
    """(slices, annotated, corrected) of a per-slice status list."""
    return (
        len(statuses),
        sum(s == "annotated" for s in statuses),
        sum(s == "corrected" for s in statuses),
    )


def status_summary(statuses: list[str]) -> str:
    """``"5 of 12 slices annotated, 1 corrected"`` for a per-slice status list."""
    n, annotated, corrected = _counts(statuses)
    text = f"{annotated} of {n} slices annotated"
    return text + (f", {corrected} corrected" if corrected else "")


def status_short(statuses: list[str]) -> str:
    """``"5/12 +1"``: slices annotated / all slices, + corrected ones (the table's column)."""
    n, annotated, corrected = _counts(statuses)
    return f"{annotated}/{n}" + (f" +{corrected}" if corrected else "")


def _import_dataset(folder: str, workspace_folder: str, labelled: int | None):
    """A dataset folder imported into a new workspace in a thread of its own, its progress
    ``(done, total, case)`` yielded every 0.2 s (a generator worker: napari relays the yields
    to the GUI thread); returns the workspace and its first scan, read here too (off the GUI
    thread): ``(ws, (scan id, read_for_view's scan) or None)``."""

    box: dict[str, Any] = {}

    def tick(done: int, total: int, case: str) -> None:
        box["last"] = (done, total, case)

    def run() -> None:
        try:
            box["ws"] = api.create_workspace(
                workspace_folder, source=folder, labelled=labelled, progress=tick
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the worker
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        if "last" in box:
            yield box["last"]
    if "error" in box:
        raise box["error"]
    ws = box["ws"]
    ids = ws.scan_ids()
    return ws, ((ids[0], read_for_view(ws, ids[0])) if ids else None)


class StudyWidget(QWidget):
    """Open scans, DICOM series, dataset folders or workspaces; attach labels; set splits."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self._showing: object | None = None  # the scan a table click is showing

        self.ws_label = QLabel("No workspace open")
        self.ws_label.setWordWrap(True)

        buttons = {
            "new_ws": ("New workspace…", self.new_workspace),
            "open_ws": ("Open workspace…", self.open_workspace),
            "save_ws": ("Save label edits", self.save_workspace),
            "sample": ("Load sample study", self.load_sample),
            "open_scans": ("Open scans…", self.open_scans),
            "open_dicom": ("Open DICOM folder…", self.open_dicom_folder),
            "open_dataset": ("Open dataset folder…", self.open_dataset_folder),
            "add_layers": ("Add selected image layers", self.add_selected_layers),
            "save_all": ("Save all labels…", self.save_all_labels),
        }
        self.buttons: dict[str, QPushButton] = {}
        for key, (text, slot) in buttons.items():
            btn = QPushButton(text)
            btn.clicked.connect(lambda _=False, s=slot: s())
            self.buttons[key] = btn

        ws_box = QGroupBox("Workspace")
        grid = QGridLayout(ws_box)
        grid.addWidget(self.ws_label, 0, 0, 1, 2)
        grid.addWidget(self.buttons["new_ws"], 1, 0)
        grid.addWidget(self.buttons["open_ws"], 1, 1)
        grid.addWidget(self.buttons["sample"], 2, 0)
        grid.addWidget(self.buttons["save_ws"], 2, 1)
        self.class_names = QLineEdit()
        self.class_names.setPlaceholderText("0: background, 1: liver, 2: tumour")
        self.class_names.setToolTip(
            "The classes your masks use, as 'number: name' separated by commas. Attaching a "
            "mask with more classes adds them as 'class N'; rename them here."
        )
        self.class_names.returnPressed.connect(lambda: self.apply_class_names())
        self.class_button = QPushButton("Set")
        self.class_button.setToolTip("Save these class names in the workspace")
        self.class_button.clicked.connect(lambda _=False: self.apply_class_names())
        grid.addWidget(QLabel("Classes"), 3, 0, 1, 2)
        names_row = QHBoxLayout()
        names_row.addWidget(self.class_names, 1)
        names_row.addWidget(self.class_button)
        grid.addLayout(names_row, 4, 0, 1, 2)

        data_box = QGroupBox("Scans")
        grid = QGridLayout(data_box)
        grid.addWidget(self.buttons["open_scans"], 0, 0)
        grid.addWidget(self.buttons["open_dicom"], 0, 1)
        grid.addWidget(self.buttons["open_dataset"], 1, 0)
        grid.addWidget(self.buttons["add_layers"], 1, 1)
        grid.addWidget(self.buttons["save_all"], 2, 0)
        self.buttons["save_all"].setToolTip(
            "Write the labels of every labelled scan into a folder, each in its scan's own "
            "geometry: DICOM-SEG for scans read from DICOM, NIfTI for the others"
        )

        attach_box = QGroupBox("Attach labels to a scan")
        form = QFormLayout(attach_box)  # one row each: a layer's long name must not widen the dock
        self.attach_image = QComboBox()
        self.attach_labels = QComboBox()
        for combo in (self.attach_image, self.attach_labels):
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            combo.setMinimumContentsLength(12)
        self.attach_button = QPushButton("Attach")
        self.attach_button.clicked.connect(lambda: self.attach_labels_layer())
        to_scan = QHBoxLayout()
        to_scan.addWidget(self.attach_image, 1)
        to_scan.addWidget(self.attach_button)
        form.addRow("Labels", self.attach_labels)
        form.addRow("→ scan", to_scan)

        self.table = QTableWidget(0, 4)  # narrow enough for a laptop's dock, the strip shown
        self.table.setHorizontalHeaderLabels(["Scan", "Split", "Labelled", "Per slice"])
        self.table.horizontalHeaderItem(2).setToolTip(
            "slices annotated / all slices of the scan, + slices corrected from a prediction"
        )
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.EditKeyPressed)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.table.setItemDelegateForColumn(1, SplitDelegate(self.table, self._split_picked))
        self.table.setItemDelegateForColumn(3, SliceStripDelegate(self.table))
        self._table_ids: list[str] = []
        self.table.cellClicked.connect(self._cell_clicked)
        self.table.setToolTip("click a scan to show it (and hide the others of the workspace)")

        layout = QVBoxLayout(self)
        layout.addWidget(ws_box)
        layout.addWidget(data_box)
        layout.addWidget(attach_box)
        layout.addWidget(self.table, 1)

        self.session.workspace_changed.connect(lambda _ws: self.refresh())
        self.session.labels_changed.connect(self.refresh_table)
        self.session.models_changed.connect(self.refresh_table)
        self.viewer.layers.events.inserted.connect(self._refresh_layer_choices)
        self.viewer.layers.events.removed.connect(self._refresh_layer_choices)
        self.refresh()

    # -- dialogs (methods, so tests can replace them) ------------------------------------------
    def ask_folder(self, title: str) -> str | None:
        folder = QFileDialog.getExistingDirectory(self, title)
        return folder or None

    def ask_files(self, title: str) -> list[str]:
        files, _ = QFileDialog.getOpenFileNames(
            self,
            title,
            "",
            api.scan_file_filter(),
        )
        return list(files)

    # -- workspace -------------------------------------------------------------------------------
    @report_errors("Could not create the workspace")
    def new_workspace(self, folder: str | None = None) -> Any:
        folder = folder or self.ask_folder("Choose an empty folder for the new workspace")
        if not folder:
            return None
        ws = api.create_workspace(folder)
        self.session.set_workspace(ws)
        return ws

    @report_errors("Could not open the workspace")
    def open_workspace(self, folder: str | None = None) -> Any:
        folder = folder or self.ask_folder("Open a napari-mtssl workspace folder")
        if not folder:
            return None
        ws = api.open_workspace(folder)
        self.clear_workspace_layers()
        self.session.set_workspace(ws)
        self.show_workspace_scans()
        return ws

    @report_errors("Could not load the sample study")
    def load_sample(self, folder: str | None = None) -> Any:
        """Create a workspace holding the built-in synthetic study and show it.

        Without ``folder`` it goes into a new temporary folder (named in a notification), so the
        button works in one click; use "New workspace" + a dataset to keep results.
        """

        if folder is None:
            folder = tempfile.mkdtemp(prefix="napari-mtssl-sample-")
        ws = api.create_workspace(folder, source="sample")
        self.clear_workspace_layers()
        self.session.set_workspace(ws)
        self.show_workspace_scans(limit=None)  # five small scans: all of them
        notifications.show_info(f"Sample study workspace: {folder}")
        return ws

    @report_errors("Could not save the label edits")
    def save_workspace(self) -> int:
        """Write edits made in the ``<scan>_labels`` layers to the label store (changed slices)."""
        ws = self.session.require_workspace()
        written = 0
        for scan_id in ws.scan_ids():
            name = labels_layer_name(scan_id)
            if name not in self.viewer.layers:
                continue
            data = LayerLabels.from_layer(self.viewer.layers[name]).data
            stored = np.asarray(ws.labels(scan_id))
            data = LayerLabels(name, data).checked_for(stored.shape)
            changed = [int(z) for z in np.flatnonzero((data != stored).any(axis=(1, 2)))]
            if changed:
                ws.set_labels(scan_id, data, slices=changed, status="annotated", by="user")
                written += len(changed)
                self.session.labels_changed.emit(scan_id)

        notifications.show_info(f"Saved {written} edited slice(s) to the workspace")
        return written

    def show_workspace_scans(self, limit: int | None = 1) -> None:
        """Put workspace scans (and their stored labels) into the viewer: the first ``limit``
        (None: all). A study of hundreds of scans is not loaded at once: the one chosen in the
        table is (``show_workspace_scan``)."""
        ws = self.session.workspace
        if ws is None:
            return
        ids = list(ws.scan_ids())
        for scan_id in ids if limit is None else ids[:limit]:
            self.show_workspace_scan(scan_id, hide_others=False)

    def show_workspace_scan(self, scan_id: str, hide_others: bool = True) -> Any:
        """Show one workspace scan with its labels (loading it if needed); hide the others.
        Everything on the calling thread (scripts, tests); a click in the table reads the scan
        in a thread and adds its layers a turn of the event loop apart
        (:meth:`show_workspace_scan_soon`)."""
        ws = self.session.require_workspace()
        read = None if scan_id in self.viewer.layers else read_for_view(ws, scan_id)
        steps, shown = self._view_steps(scan_id, read, hide_others)
        for step in steps:
            step()
        return shown["layer"]

    def show_workspace_scan_soon(self, scan_id: str) -> Any:
        """Like :meth:`show_workspace_scan` without holding the viewer: the scan and its labels
        are read in a thread, then its layers are added one per turn. Returns the worker (None
        when the scan is already in the viewer)."""
        ws = self.session.require_workspace()
        if scan_id in self.viewer.layers:
            self.show_workspace_scan(scan_id)
            return None
        self._showing = token = object()  # a later click wins

        def put(read: Any) -> None:
            if self.session.workspace is not ws or self._showing is not token:
                return
            steps, _ = self._view_steps(scan_id, read, hide_others=True)
            run_in_turns(
                steps,
                alive=lambda: widget_alive(self) and self.session.workspace is ws,
                on_error=lambda e: _show_error(f"Could not show {scan_id}: {e}"),
            )

        return run_in_thread(
            read_for_view, ws, scan_id, on_result=put, action=f"Could not show {scan_id}"
        )

    def _view_steps(
        self, scan_id: str, read: tuple[Any, np.ndarray | None] | None, hide_others: bool
    ) -> tuple[list[Callable[[], None]], dict[str, Any]]:
        """The GUI-thread steps that show a scan already read (``read_for_view``; None when its
        layer exists): its image layer, its labels layer, then the others hidden. The second
        value gets ``"layer"``, the scan's image layer, once the first step ran."""
        ws = self.session.require_workspace()
        root = str(ws.root)
        shown: dict[str, Any] = {}

        def image() -> None:
            if scan_id in self.viewer.layers or read is None:
                shown["layer"] = self.viewer.layers[scan_id]
                return
            shown["layer"] = show_scan(self.viewer, read[0], scan_id, ws)
            shown["new"] = True

        def labels() -> None:
            if shown.get("new") and read is not None and read[1] is not None:
                show_labels(
                    self.viewer,
                    read[1],
                    labels_layer_name(scan_id),
                    scan_id,
                    tuple(shown["layer"].scale),
                    role="labels",
                    ws=ws,
                )

        def focus() -> None:  # every other scan's layers hidden, a person's attached masks too
            mine = tuple(
                ly.name
                for ly in self.viewer.layers
                if ly.metadata.get(SCAN_ID_KEY) == scan_id
                and ly.metadata.get(WORKSPACE_KEY) == root
            )
            show_only_scan(self.viewer, scan_id, keep=mine)
            self.viewer.layers.selection.active = shown["layer"]
            self.viewer.reset_view()

        return [image, labels, *([focus] if hide_others else [])], shown

    def clear_workspace_layers(self) -> int:
        """Before another workspace opens: remove the layers the docks showed for the current
        one (scans, labels, model masks, disagreement), except label layers with edits not
        saved yet and correction layers (kept hidden, and said so: nothing painted is lost)."""

        ws = self.session.workspace
        if ws is None:
            return 0
        root, kept, removed = str(ws.root), [], 0
        for layer in list(self.viewer.layers):
            if layer.metadata.get(WORKSPACE_KEY) != root:
                continue
            sid = layer.metadata.get(SCAN_ID_KEY)
            if layer.metadata.get(ROLE_KEY) == "edit":
                layer.visible = False
                kept.append(layer.name)
                continue
            if layer.name == labels_layer_name(str(sid)):
                try:
                    same = np.array_equal(np.asarray(layer.data), ws.labels(sid))
                except Exception:  # noqa: BLE001 - unknown: keep it
                    same = False
                if not same:
                    kept.append(layer.name)
                    continue
            self.viewer.layers.remove(layer)
            removed += 1
        if kept:
            notifications.show_warning(
                f"kept {', '.join(kept)} (hidden): edits or corrections not stored in the "
                "previous workspace (save or accept them there, or delete the layers)"
            )
        return removed

    # -- scans -----------------------------------------------------------------------------------
    def open_scans(self, paths: list[str] | None = None) -> list[str]:
        paths = paths if paths is not None else self.ask_files("Open scans")
        return self._read_and_add(paths)

    def open_dicom_folder(self, folder: str | None = None) -> list[str]:
        folder = folder or self.ask_folder("Open a DICOM folder (every series in it)")
        return self._read_and_add([folder] if folder else [])

    def _read_and_add(self, paths: list[str]) -> list[str]:
        """Read each path with ``api.read_scans``; a bad file is reported by name, others load."""

        added: list[str] = []
        for path in paths:
            try:
                scans = api.read_scans(path)
            except Exception as exc:  # noqa: BLE001 - reported with the file name
                text = str(exc)
                notifications.show_error(
                    text if str(Path(path).name) in text else f"{path}: {text}"
                )
                continue
            for scan in scans:
                added.append(self._add_scan(scan))
        if added and self.session.workspace is None:
            notifications.show_info("Scans shown; create or open a workspace to train on them")
        self.refresh_table()
        return added

    def _add_scan(self, scan: Any) -> str:
        ws = self.session.workspace
        if ws is None:
            layer = self.viewer.add_image(scan.array, colormap="gray", **scan.layer_kwargs())
            return str(layer.name)
        scan_id = ws.add_scan(scan)
        show_scan(self.viewer, scan, scan_id, ws)
        return str(scan_id)

    def ask_labelled(self, patients: int) -> int | None:
        """How many training patients keep their labels (the method is for few labels)."""
        value, ok = QInputDialog.getInt(
            self,
            "Labelled patients",
            f"The dataset has {patients} labelled training patients. Keep the labels of how "
            "many (the first ones; 0 = all)? The others become unlabelled scans for the "
            "self-supervised tasks; validation labels are always kept.",
            min(3, patients),
            0,
            max(patients, 0),
        )
        return int(value) if ok else None

    @report_errors("Could not open the dataset")
    def open_dataset_folder(
        self,
        folder: str | None = None,
        workspace_folder: str | None = None,
        labelled: int | None = None,
        wait: bool = False,
    ) -> Any:
        """A Decathlon / nnU-Net folder becomes a new workspace (its splits kept), imported in
        the background with progress; ``labelled`` patients keep their labels (0: all).
        Returns the import worker (``wait``: the workspace, for scripts and tests)."""

        folder = folder or self.ask_folder("Open a dataset folder (Decathlon / nnU-Net layout)")
        if not folder:
            return None
        # fails here, naming the file, before anything is made
        patients = api.labelled_patients(folder)
        if labelled is None:
            labelled = self.ask_labelled(patients)
            if labelled is None:
                return None
        workspace_folder = workspace_folder or self.ask_folder(
            "Choose an empty folder for the workspace of this dataset"
        )
        if not workspace_folder:
            return None

        self.clear_workspace_layers()
        # The dock's line says how far the import is; napari's activity panel is left alone:
        # its indicator animates while a bar is open (the window repainted in software where
        # there is no GPU: 40 % of a core, taken from the import's thread; _jobs.py)
        ended: dict[str, bool] = {}

        def on_tick(t: tuple) -> None:
            done, total, case = t
            if not ended and widget_alive(self.ws_label):  # the dock may have been closed
                self.ws_label.setText(f"Importing {Path(folder).name}: {done}/{total} ({case})")

        def on_done(result: tuple[Any, Any]) -> None:
            ended["imported"] = True  # no more progress lines
            self._show_imported(*result, ended)

        def on_error(exc: BaseException) -> None:
            ended["done"] = True
            if widget_alive(self.ws_label):
                self.refresh()
            notifications.show_error(f"Could not open the dataset: {exc}")

        worker = run_in_thread(
            _import_dataset,
            folder,
            workspace_folder,
            labelled or None,
            on_result=on_done,
            action="Could not open the dataset",
            on_yielded=on_tick,
            on_error=on_error,
        )
        self._import_worker = worker
        # training follows an import: a worker process imports the engine meanwhile, so that
        # the first Train click starts at once rather than after a new process's seconds
        self.session.jobs.prepare()
        if wait:
            while "done" not in ended:  # until the result (a queued signal) has been shown
                QCoreApplication.processEvents()
                time.sleep(0.02)
            return self.session.workspace
        return worker

    def _show_imported(self, ws: Any, first: tuple | None, ended: dict[str, bool]) -> None:
        """The imported workspace opened in the docks, then its first scan's image and labels,
        each at its own turn of the event loop; ``ended["done"]`` once all is shown (or
        given up: the dock closed or another workspace opened)."""
        self.session.set_workspace(ws)  # the docks refresh (the import's line gives way)

        def wanted() -> bool:
            if widget_alive(self.ws_label) and self.session.workspace is ws:
                return True
            ended["done"] = True
            return False

        def all_shown() -> None:
            ended["done"] = True

        def failed(exc: BaseException) -> None:
            ended["done"] = True
            _show_error(f"Could not show the first scan: {exc}")

        steps = self._view_steps(*first, hide_others=False)[0] if first else []
        QTimer.singleShot(
            0, lambda: run_in_turns([*steps, all_shown], alive=wanted, on_error=failed)
        )

    @report_errors("Could not add the image layers")
    def add_selected_layers(self) -> list[str]:
        """Add the selected image layers (or all not yet in the workspace) as workspace scans."""

        ws = self.session.require_workspace()
        chosen = [ly for ly in self.viewer.layers.selection if isinstance(ly, Image)]
        if not chosen:
            chosen = [ly for ly in self.viewer.layers if isinstance(ly, Image)]
        added = []
        for layer in chosen:
            if layer.metadata.get(SCAN_ID_KEY):
                continue
            scan = LayerScan.from_layer(layer).to_scan()
            scan_id = ws.add_scan(scan)
            layer.metadata[SCAN_ID_KEY] = scan_id
            added.append(scan_id)
        self.refresh_table()
        return added

    @report_errors("Could not attach the labels")
    def attach_labels_layer(
        self, labels_name: str | None = None, image_name: str | None = None
    ) -> str | None:
        """Store a labels layer as the annotation of an image's scan (slices with any label)."""
        ws = self.session.require_workspace()
        labels_name = labels_name or self.attach_labels.currentText()
        image_name = image_name or self.attach_image.currentText()
        if not labels_name or not image_name:
            raise ValueError("choose a labels layer and an image layer")
        image_layer = self.viewer.layers[image_name]
        if not image_layer.metadata.get(SCAN_ID_KEY):
            scan = LayerScan.from_layer(image_layer).to_scan()
            image_layer.metadata[SCAN_ID_KEY] = ws.add_scan(scan)
        scan_id = image_layer.metadata[SCAN_ID_KEY]
        image = LayerScan.from_layer(image_layer)
        shape = (1, *image.array.shape) if image.array.ndim == 2 else image.array.shape
        labels = LayerLabels.from_layer(self.viewer.layers[labels_name]).checked_for(shape)
        slices = [int(z) for z in np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))]
        if not slices:
            raise ValueError(f"{labels_name}: the layer holds no labels")
        top = int(labels.max())
        names = dict(ws.label_names)
        if top >= max(names) + 1:
            for c in range(1, top + 1):
                names.setdefault(c, f"class {c}")
            ws.set_label_names(names)
            self.class_names.setText(format_class_names(names))
            notifications.show_info(
                f"{labels_name} uses classes up to {top}: added them as 'class N'; rename them "
                "under Classes"
            )
        ws.set_labels(scan_id, labels, slices=slices, status="annotated", by="user")
        # the layer now belongs to that scan: hidden with it when another scan is shown, so a
        # mask never lies over a scan it was not drawn on
        self.viewer.layers[labels_name].metadata[SCAN_ID_KEY] = scan_id
        self.session.labels_changed.emit(scan_id)
        return scan_id

    @report_errors("Could not save the labels")
    def save_all_labels(self, folder: str | None = None) -> list[str]:
        """Every labelled scan's stored labels into ``folder``: ``<scan>_labels.dcm``
        (DICOM-SEG) for DICOM scans, ``<scan>_labels.nii.gz`` for the others; an existing
        file is never replaced."""

        ws = self.session.require_workspace()
        folder = folder or self.ask_folder("Folder for the labels of every labelled scan")
        if not folder:
            return []
        written = api.save_labels(ws, folder)
        notifications.show_info(f"Saved the labels of {len(written)} scan(s) in {folder}")
        return written

    @report_errors("Could not set the class names")
    def apply_class_names(self, text: str | None = None) -> dict[int, str]:
        ws = self.session.require_workspace()
        names = parse_class_names(self.class_names.text() if text is None else text)
        ws.set_label_names(names)
        self.class_names.setText(format_class_names(names))
        return names

    # -- table -----------------------------------------------------------------------------------
    def refresh(self) -> None:
        ws = self.session.workspace
        root = getattr(ws, "root", None) or getattr(ws, "folder", None) or getattr(ws, "path", "")
        self.ws_label.setText(f"Workspace: {root}" if ws is not None else "No workspace open")
        self.buttons["save_ws"].setEnabled(ws is not None)
        self.class_names.setEnabled(ws is not None)
        self.class_button.setEnabled(ws is not None)
        if ws is not None:
            self.class_names.setText(format_class_names(dict(ws.label_names)))
        self.buttons["add_layers"].setEnabled(ws is not None)
        self.buttons["save_all"].setEnabled(ws is not None)
        self.attach_button.setEnabled(ws is not None)
        self._refresh_layer_choices()
        self.refresh_table()

    def refresh_table(self, scan_id: Any = None) -> None:
        """The scans, their splits and per-slice statuses. ``scan_id`` (a label change): only
        its row. The same scans as shown: rows whose split or statuses changed are updated in
        place; other scans: the table is rebuilt (plain items: the split's combo box is painted,
        :class:`SplitDelegate`)."""
        ws = self.session.workspace
        ids = list(ws.scan_ids()) if ws is not None else []
        if ids and ids == self._table_ids:
            for row, sid in enumerate(ids):
                if scan_id is None or sid == scan_id:
                    self._fill_row(row, sid)
            return
        self._table_ids = ids
        self.table.clearContents()
        self.table.setRowCount(0)
        self.table.setRowCount(len(ids))
        for row, sid in enumerate(ids):
            self._fill_row(row, sid)

    def _fill_row(self, row: int, scan_id: str) -> None:
        ws = self.session.workspace
        record = ws.record(scan_id)
        statuses = list(ws.slice_status(scan_id))
        cells = (str(scan_id), str(record.split), status_short(statuses))
        for col, text in enumerate(cells):
            item = self.table.item(row, col)
            if item is None:
                item = QTableWidgetItem(text)
                if col != 1:  # only the split is edited (F2 or a click on it)
                    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                self.table.setItem(row, col, item)
            elif item.text() != text:
                item.setText(text)
            if col == 1:
                item.setToolTip("the scan's split: click to change it")
            if col == 2:
                item.setToolTip(status_summary(statuses))
        strip = self.table.item(row, 3)
        if strip is None:
            strip = QTableWidgetItem()
            strip.setFlags(strip.flags() & ~Qt.ItemFlag.ItemIsEditable)
            strip.setToolTip(
                "one cell per slice: grey unlabelled, green annotated, orange corrected"
            )
            self.table.setItem(row, 3, strip)
        if strip.data(STRIP_ROLE) != statuses:
            strip.setData(STRIP_ROLE, statuses)

    @report_errors("Could not change the split")
    def set_split(self, scan_id: str, split: str) -> None:
        ws = self.session.require_workspace()
        ws.set_split(scan_id, split)

    def _split_picked(self, row: int, split: str) -> None:
        """A split chosen in the table: written to the workspace; the row shows what it holds
        (the old split where the change was refused)."""
        if 0 <= row < len(self._table_ids):
            sid = self._table_ids[row]
            self.set_split(sid, split)
            self._fill_row(row, sid)

    def _cell_clicked(self, row: int, col: int) -> None:
        if col == 1:  # the split: its list opens; the scan shown stays
            item = self.table.item(row, col)
            if item is not None:
                self.table.editItem(item)
            return
        self._show_scan_row(row, col)

    @report_errors("Could not show the scan")
    def _show_scan_row(self, row: int, _col: int) -> None:
        item = self.table.item(row, 0)
        if item is not None and self.session.workspace is not None:
            self.show_workspace_scan_soon(item.text())

    def _refresh_layer_choices(self, *_: Any) -> None:
        for combo, kind in ((self.attach_image, Image), (self.attach_labels, Labels)):
            current = combo.currentText()
            combo.clear()
            combo.addItems([ly.name for ly in self.viewer.layers if isinstance(ly, kind)])
            if current:
                combo.setCurrentText(current)
