"""One dock with the four steps as tabs (Study, Tasks and training, Compare, Correct).

Four docks stacked in napari's right-hand area need about 2100 px of height; on a 1366 x 768
laptop screen they leave no canvas. In one tabbed dock each step scrolls inside its tab, so the
whole plugin fits beside a usable canvas. The four docks stay available one by one too.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (
    QFrame,
    QMessageBox,
    QScrollArea,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

HELP = """<b>napari-mtssl: segmentation from a few labels</b><br><br>
<b>1. Study</b>: open your scans (NIfTI, DICOM, TIFF/PNG, a dataset folder) into a workspace
folder, name your classes, attach the masks you have. Click a scan in the table to show it.<br>
<b>2. Tasks</b>: choose auxiliary tasks and a time budget; <i>Estimate</i> shows the plan,
<i>Train all</i> trains within the budget.<br>
<b>3. Compare</b>: every model's mask over a scan, its Dice, and where the teachers disagree.<br>
<b>4. Correct</b>: fix the student's mask on a few slices, accept them, retrain.<br><br>
<b>Words</b>: the <i>baseline</i> learns from your labels alone. A <i>teacher</i> learns from
your labels and one self-supervised <i>task</i> (what the images teach without labels), in one
of two <i>modes</i>: <i>joint</i> (both at once) or <i>pre-train</i> (the task first, then your
labels); the better mode is kept (<i>stage 1</i>). The <i>student</i> learns from your labels
and from the teachers' agreement on every slice (<i>stage 2</i>): it is the model to use.<br><br>
Nothing you label is lost: every change is saved at once, with who and when. A stopped or
interrupted run can be resumed. Files you opened are never written to."""

STEPS = ("Study", "Tasks and training", "Compare models", "Correct and retrain")


DOCK_WIDTH = 420  # what the dock asks for: a laptop's canvas keeps most of the screen


class _Scroll(QScrollArea):
    """A tab's page: scrolls instead of growing the dock to its content's size."""

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(DOCK_WIDTH, 500)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(300, 200)


def _scrolled(widget: QWidget) -> QScrollArea:
    area = _Scroll()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    return area


class AllStepsWidget(QWidget):
    """The four docks of napari-mtssl as tabs of one dock; ``widgets[name]`` reaches each."""

    def __init__(self, napari_viewer: Any) -> None:
        # imported here, when needed: it loads the scan readers
        from napari_mtssl.widgets.compare import CompareWidget
        from napari_mtssl.widgets.correct import CorrectWidget
        from napari_mtssl.widgets.study import StudyWidget
        from napari_mtssl.widgets.training import TrainingWidget

        super().__init__()
        self.viewer = napari_viewer
        self.widgets: dict[str, QWidget] = {
            "Study": StudyWidget(napari_viewer),
            "Tasks and training": TrainingWidget(napari_viewer),
            "Compare models": CompareWidget(napari_viewer),
            "Correct and retrain": CorrectWidget(napari_viewer),
        }
        self.tabs = QTabWidget()
        tips = {
            "Study": "1. open scans or a dataset, attach labels, choose splits",
            "Tasks and training": "2. choose tasks and a time budget; train teachers and student",
            "Compare models": "3. every model's masks over a scan, scores and disagreement",
            "Correct and retrain": "4. correct the student's masks, retrain, see each round",
        }
        for i, name in enumerate(STEPS):
            self.tabs.addTab(_scrolled(self.widgets[name]), f"{i + 1}. {name.split()[0]}")
            self.tabs.setTabToolTip(i, tips[name])
        self.help_button = QToolButton()
        self.help_button.setText("?")
        self.help_button.setToolTip("What the steps do, and what teacher, student and mode mean")
        self.help_button.clicked.connect(self.show_help)
        self.tabs.setCornerWidget(self.help_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        self.setMinimumWidth(300)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(DOCK_WIDTH, 600)

    def show_help(self) -> None:
        box = QMessageBox(self)
        box.setWindowTitle("napari-mtssl help")
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setText(HELP)
        box.open()

    def show_step(self, name: str) -> None:
        self.tabs.setCurrentIndex(STEPS.index(name))
