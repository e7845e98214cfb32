"""Compare models dock: every model's labels over a scan, where the teachers disagree, and Dice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils import notifications
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from napari_mtssl.api import Comparison

from napari_mtssl import api, ids
from napari_mtssl.colours import PALETTE as _PALETTE
from napari_mtssl.colours import palette_rgb255
from napari_mtssl.widgets import _state
from napari_mtssl.widgets._jobs import run_in_thread, widget_alive
from napari_mtssl.widgets._session import session_for
from napari_mtssl.widgets._state import ROLE_KEY, SCAN_ID_KEY, WORKSPACE_KEY
from napari_mtssl.widgets._turns import run_in_turns
from napari_mtssl.widgets.study import report_errors

MAX_RANKED = 50  # slices listed by disagreement
COMPARED = ("student", "baseline", "all_joint")  # besides the teachers


# Label colours of the grid (row c: class c) when no canvas layer gives them: the shared palette.
PALETTE = palette_rgb255(len(_PALETTE) + 1).astype(np.float32)


def overlay_rgb(
    image: np.ndarray,
    labels: np.ndarray,
    lo: float,
    hi: float,
    palette: np.ndarray | None = None,
) -> np.ndarray:
    """``(y, x)`` grey slice + ``(y, x)`` label slice -> ``(y, x, 3)`` uint8, labels at 50 %.
    ``palette[c]``: the RGB (0-255) of class c (the canvas layers' colours when given)."""
    grey = np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    fg = labels > 0
    pal = PALETTE if palette is None else palette
    idx = labels[fg].astype(np.int64)
    colours = pal[np.where(idx < len(pal), idx, 1 + (idx - 1) % (len(pal) - 1))]
    rgb[fg] = 0.5 * rgb[fg] + 0.5 * colours
    return np.ascontiguousarray(rgb.astype(np.uint8))


def no_disagreement_note(teachers: list[str]) -> str:
    """Why the disagreement ranking is empty: it compares two or more teachers."""
    if not teachers:
        return (
            "No teacher in this run: disagreement compares two or more teachers. "
            "In the Correct tab, 'where the student is unsure' ranks slices without them."
        )
    name = teachers[0].removeprefix("teacher:")
    return (
        f"One teacher in this run ({name}): disagreement compares two or more teachers, "
        "so there is nothing to rank. In the Correct tab, 'where the student is unsure' "
        "ranks slices without teachers."
    )


def _note_item(text: str) -> QListWidgetItem:
    """A list row that explains rather than links to a slice (not selectable)."""
    item = QListWidgetItem(text)
    item.setFlags(Qt.ItemFlag.ItemIsEnabled)
    item.setToolTip(text)
    return item


def _layer_palette(viewer: Any, name: str, n: int = 32) -> np.ndarray | None:
    """The RGB (0-255) colours a labels layer on the canvas gives classes 0..n-1."""
    layer = _state.find_layer(viewer, name)
    if layer is None:
        return None
    try:
        rgba = np.asarray(layer.colormap.map(np.arange(n)), dtype=np.float32)
    except Exception:  # noqa: BLE001 - an older napari: the grid keeps its own colours
        return None
    return rgba[:, :3] * 255


class SliceGrid(QWidget):
    """The same slice for every model, side by side: a grid of small Qt images.

    Plain ``QLabel`` pixmaps rather than a plotting canvas: redrawing a dozen 2D slices on every
    slider move then costs well under a millisecond each.
    """

    def __init__(self, columns: int = 3, size: int = 128, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.columns, self.size = columns, size
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(4)
        self.title = QLabel("")
        self._image: np.ndarray | None = None
        self._labels: dict[str, np.ndarray] = {}
        self._tiles: dict[str, QLabel] = {}
        self._range = (0.0, 1.0)
        self.palette: np.ndarray | None = None  # the canvas layers' label colours
        self.z = 0

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        """Tiles use the dock's width (at least 128 px), so a wide dock shows large slices."""
        super().resizeEvent(event)
        size = max(128, (self.width() - 4 * (self.columns - 1)) // self.columns)
        if size != self.size:
            self.size = size
            self.show_slice(self.z)

    def set_models(self, image: np.ndarray, labels: dict[str, np.ndarray]) -> None:
        """``image`` (z, y, x); ``labels`` model -> (z, y, x) mask; one tile per model."""
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self._tiles.clear()
        self._image, self._labels = image, labels
        lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
        self._range = (float(lo), float(hi))
        self.title = QLabel("")
        self.grid.addWidget(self.title, 0, 0, 1, self.columns)
        for i, name in enumerate(labels):
            cell = QWidget()
            box = QVBoxLayout(cell)
            box.setContentsMargins(0, 0, 0, 0)
            box.setSpacing(1)
            caption = QLabel(name)
            caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
            caption.setStyleSheet("font-size: 9px;")
            tile = QLabel()
            tile.setAlignment(Qt.AlignmentFlag.AlignCenter)
            tile.setMinimumSize(self.size // 2, self.size // 2)
            box.addWidget(tile)
            box.addWidget(caption)
            self.grid.addWidget(cell, 1 + i // self.columns, i % self.columns)
            self._tiles[name] = tile
        self.show_slice(self.z)

    def tile_image(self, name: str) -> np.ndarray:
        """The RGB tile of ``name`` at the current slice (what the grid shows)."""
        assert self._image is not None
        return overlay_rgb(
            self._image[self.z], self._labels[name][self.z], *self._range, self.palette
        )

    def show_slice(self, z: int) -> None:
        if self._image is None or not self._tiles:
            return
        self.z = int(np.clip(z, 0, self._image.shape[0] - 1))
        self.title.setText(f"slice {self.z}")
        for name, tile in self._tiles.items():
            rgb = self.tile_image(name)
            h, w, _ = rgb.shape
            qimage = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
            pixmap = QPixmap.fromImage(qimage).scaled(
                self.size,
                self.size,
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.FastTransformation,
            )
            tile.setPixmap(pixmap)


class CompareWidget(QWidget):
    """Run ``api.compare`` on a scan; layers per model, disagreement map, grid, Dice, ranking."""

    comparison_ready = Signal(object)  # the Comparison, once its layers are in the viewer

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.comparison: Any | None = None
        self.scan_id: str | None = None
        self.worker: Any | None = None
        self._shown: object | None = None  # the comparison being shown, step by step

        self.scan = QComboBox()
        self.compare_button = QPushButton("Compare models")
        self.compare_button.setToolTip(
            "predict the chosen scan with every teacher, the student and the baseline; show "
            "their masks, their Dice on its labelled slices, and where the teachers disagree"
        )
        self.compare_button.clicked.connect(lambda: self.compare())
        top = QHBoxLayout()
        top.addWidget(QLabel("Scan"))
        top.addWidget(self.scan, 1)
        top.addWidget(self.compare_button)

        self.grid = SliceGrid()
        self.dice = QTableWidget(0, 2)
        self.dice.setHorizontalHeaderLabels(["Model", "Dice (labelled slices)"])
        self.dice.verticalHeader().setVisible(False)
        self.dice.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.ranked = QListWidget()
        self.ranked.setWordWrap(True)
        self.ranked.setToolTip(
            "slices where the teachers disagree most; click to go there. To choose which "
            "slices to correct, use 'Next slices to correct' in the Correct step: on ACDC, "
            "correcting these first did not improve the student faster than random slices "
            "showing the heart (docs/benchmarks.md)"
        )
        self.ranked.itemClicked.connect(self._go_to_item)
        self.status = QLabel("")

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.status)
        layout.addWidget(self.grid, 2)
        layout.addWidget(QLabel("Dice per model"))
        layout.addWidget(self.dice, 1)
        layout.addWidget(QLabel("Slices by teacher disagreement"))
        layout.addWidget(self.ranked, 1)
        self.export_button = QPushButton("Export the student…")
        self.export_button.setToolTip(
            "Save the student to run it elsewhere: an ONNX file (.onnx, with its preprocessing "
            "in the metadata) or a bioimage.io model package (.zip)"
        )
        self.export_button.clicked.connect(lambda _=False: self.export_student())
        layout.addWidget(self.export_button)

        self.session.workspace_changed.connect(lambda _ws: self.refresh_scans())
        self.session.models_changed.connect(self.refresh_scans)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self.refresh_scans()

    def refresh_scans(self) -> None:
        ws = self.session.workspace
        _state.refill_scan_choice(self.scan, ws)
        self.compare_button.setEnabled(ws is not None and self.scan.count() > 0)

    def ask_export_path(self) -> str | None:
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export the student",
            "student.onnx",
            "ONNX model (*.onnx);;bioimage.io model package (*.zip)",
        )
        return path or None

    @report_errors("Could not export the student")
    def export_student(self, path: str | None = None, model: str = "student") -> Any:
        """Export ``model`` as ONNX (``.onnx``) or a bioimage.io package (``.zip``), in a
        thread; a path that exists is refused (napari's dialog asked before)."""
        ws = self.session.require_workspace()
        path = path or self.ask_export_path()
        if not path:
            return None
        fmt = "bioimageio" if path.lower().endswith(".zip") else "onnx"
        self.status.setText(f"exporting {model} as {fmt}…")

        def done(out: Any) -> None:
            self.status.setText(f"exported {model}: {out}")
            notifications.show_info(f"Exported {model} to {out}")

        self.worker = run_in_thread(
            self.session.engine.run,
            "export",
            on_result=done,
            action=f"Could not export {model}",
            workspace=ws,
            model=model,
            fmt=fmt,
            out=path,
            force=True,
        )
        self.worker.errored.connect(lambda e: self.status.setText(f"export failed: {e}"))
        return self.worker

    def models_to_compare(self) -> list[str]:
        """Teachers, student, baseline and all-tasks-jointly (not every stage-1 candidate)."""
        available = api.list_models(self.session.require_workspace())
        if not available:
            raise ValueError("no trained models in this workspace yet: train first")
        keep = [m for m in available if m in ids.teachers(available) or m in COMPARED]
        return ids.in_order(keep or available)

    @report_errors("Could not compare the models")
    def compare(self, scan_id: str | None = None) -> Any:
        """Start ``api.compare`` for the scan in a thread; ``comparison_ready`` fires when shown.
        The scan itself is read in that thread too when the viewer does not show it yet."""
        ws = self.session.require_workspace()
        scan_id = scan_id or self.scan.currentText()
        if not scan_id:
            raise ValueError("choose a scan")
        if self.scan.findText(scan_id) >= 0:
            self.scan.setCurrentText(scan_id)  # the chooser names the scan compared
        models = self.models_to_compare()  # may refuse: before the dock says it is busy
        self.status.setText(f"comparing the models on {scan_id}…")
        self.compare_button.setEnabled(False)
        read_scan = _state.find_layer(self.viewer, _state.scan_layer_name(scan_id)) is None

        def work() -> tuple[Any, Any]:  # in a thread; the models run in the engine's process
            comparison = self.session.engine.run(
                "compare", workspace=ws, scan=scan_id, models=models
            )
            return comparison, (ws.load_scan(scan_id) if read_scan else None)

        def done(result: tuple[Any, Any]) -> None:
            self.compare_button.setEnabled(True)
            comparison, scan = result
            self.show_comparison(scan_id, comparison, scan)

        self.worker = run_in_thread(
            work, on_result=done, action=f"Could not compare models on {scan_id}"
        )
        self.worker.errored.connect(lambda _e: self.compare_button.setEnabled(True))
        self.worker.errored.connect(lambda e: self.status.setText(f"comparison failed: {e}"))
        return self.worker

    def show_comparison(self, scan_id: str, comparison: Comparison, scan: Any = None) -> None:
        """The scan, the shown model's layer (the student, or the first model before one
        exists), the grid, Dice table and ranking first; then one layer per other model and the
        disagreement map, each at its own turn of the event loop (the viewer answers between
        them); ``comparison_ready`` fires once all are in the viewer. ``scan``: the scan, read
        off the GUI thread, when the viewer does not show it yet."""
        ws = self.session.require_workspace()
        self.comparison, self.scan_id = comparison, scan_id
        self._shown = shown = object()  # a newer comparison drops this one's steps left
        labels: dict[str, np.ndarray] = dict(comparison.labels)
        names = ids.in_order(labels)
        first = "student" if "student" in names else names[0]
        layers: dict[str, Any] = {}

        def scan_layer() -> None:
            layer = _state.find_layer(self.viewer, _state.scan_layer_name(scan_id))
            if layer is None:
                layer = _state.show_scan(
                    self.viewer, scan if scan is not None else ws.load_scan(scan_id), scan_id, ws
                )
            layers["image"] = layer

        def only_this_scan() -> None:
            # the previous scan's image and comparison layers hidden, a turn after the one that
            # may have added this scan's image layer (that add alone is 150-200 ms on a busy
            # machine)
            _state.show_only_scan(self.viewer, scan_id)

        def model_layer(name: str) -> None:
            _state.show_labels(
                self.viewer,
                np.asarray(labels[name]),
                _state.model_layer_name(scan_id, name),
                scan_id,
                tuple(layers["image"].scale),
                role=f"model:{name}",
                visible=name == first,  # the student, or the first model before one exists
                ws=ws,
            )

        def tables() -> None:
            image_layer = layers["image"]
            self.grid.palette = _layer_palette(self.viewer, _state.model_layer_name(scan_id, first))
            self.grid.set_models(
                np.asarray(image_layer.data), {n: np.asarray(labels[n]) for n in names}
            )
            self.grid.show_slice(_state.current_slice(self.viewer, image_layer))
            self._fill_dice(comparison.dice, names, comparison.class_dice)
            self._fill_ranking(comparison.slice_scores, comparison.teachers)
            self.status.setText(f"{scan_id}: {len(names)} models compared")

        def finished() -> None:
            self.comparison_ready.emit(comparison)

        steps = [scan_layer, only_this_scan, lambda: model_layer(first), tables]
        steps += [lambda n=n: model_layer(n) for n in names if n != first]
        steps += [lambda: self._show_disagreement(scan_id, comparison, layers["image"]), finished]

        def failed(exc: BaseException) -> None:
            self.status.setText(f"could not show the comparison: {exc}")
            notifications.show_error(f"Could not show the comparison on {scan_id}: {exc}")

        run_in_turns(
            steps, alive=lambda: widget_alive(self) and self._shown is shown, on_error=failed
        )

    def _show_disagreement(self, scan_id: str, comparison: Comparison, image_layer: Any) -> None:
        """The teachers' disagreement map as a layer; none with fewer than two teachers."""
        disagreement = comparison.disagreement
        name = _state.model_layer_name(scan_id, "disagreement")
        layer = _state.find_layer(self.viewer, name)
        if len(comparison.teachers) < 2:
            # one teacher (or none) cannot disagree with itself: no map of zeros
            if layer is not None:
                self.viewer.layers.remove(layer)
            return
        if disagreement is None:
            return
        data = np.asarray(disagreement, dtype=np.float32)
        if layer is not None:
            layer.data = data
            layer.contrast_limits = (0.0, max(float(data.max()), 1e-6))
            return
        self.viewer.add_image(
            data,
            name=name,
            scale=tuple(image_layer.scale),
            colormap="magma",
            blending="additive",
            opacity=0.7,
            contrast_limits=(0.0, max(float(data.max()), 1e-6)),
            metadata={
                SCAN_ID_KEY: scan_id,
                ROLE_KEY: "disagreement",
                WORKSPACE_KEY: str(self.session.require_workspace().root),
            },
        )

    def _fill_dice(
        self, dice: dict[str, Any], names: list[str], per_class: dict | None = None
    ) -> None:
        """One row per model: the mean Dice on the scan's labelled slices, then each class."""
        per_class = per_class or {}
        classes: list[str] = []
        for row in per_class.values():
            classes += [c for c in row if c not in classes]
        self.dice.setColumnCount(2 + len(classes))
        self.dice.setHorizontalHeaderLabels(["Model", "mean Dice", *classes])
        order = [n for n in names if n in dice] + [n for n in dice if n not in names]
        self.dice.setRowCount(len(order))
        for r, name in enumerate(order):
            value = dice[name]
            text = "no labelled slices" if value is None else f"{float(value):.3f}"
            self.dice.setItem(r, 0, QTableWidgetItem(name))
            self.dice.setItem(r, 1, QTableWidgetItem(text))
            for c, cls in enumerate(classes):
                v = per_class.get(name, {}).get(cls)
                self.dice.setItem(r, 2 + c, QTableWidgetItem("" if v is None else f"{v:.3f}"))

    def _fill_ranking(self, scores: Any, teachers: list[str] | None = None) -> None:
        self.ranked.clear()
        if teachers is not None and len(teachers) < 2:
            self.ranked.addItem(_note_item(no_disagreement_note(teachers)))
            return
        if scores is None:
            return
        scores = np.asarray(scores, dtype=float)
        for z in np.argsort(-scores, kind="stable")[:MAX_RANKED]:
            item = QListWidgetItem(f"slice {int(z):3d}   disagreement {scores[z]:.3f}")
            item.setData(Qt.ItemDataRole.UserRole, int(z))
            self.ranked.addItem(item)

    def _go_to_item(self, item: QListWidgetItem) -> None:
        z = item.data(Qt.ItemDataRole.UserRole)
        if z is not None:  # a note, not a slice
            self.go_to_slice(int(z))

    def _scan_layer(self) -> Any | None:
        return (
            _state.find_layer(self.viewer, _state.scan_layer_name(self.scan_id))
            if self.scan_id
            else None
        )

    def go_to_slice(self, z: int) -> None:
        """Move the viewer to slice ``z`` of the compared scan."""
        _state.go_to_slice(self.viewer, z, self._scan_layer())

    def _on_step(self, _event: Any = None) -> None:
        if self.comparison is not None:
            self.grid.show_slice(_state.current_slice(self.viewer, self._scan_layer()))
