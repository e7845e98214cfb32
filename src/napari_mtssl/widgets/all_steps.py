"""One dock with the four steps as tabs (Study, Tasks and training, Compare, Correct).

Four docks stacked in napari's right-hand area need about 2100 px of height; on a 1366 x 768
laptop screen they leave no canvas. In one tabbed dock each step scrolls inside its tab, so the
whole plugin fits beside a usable canvas. The four docks stay available one by one too.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QFrame, QScrollArea, QTabWidget, QVBoxLayout, QWidget

STEPS = ("Study", "Tasks and training", "Compare models", "Correct and retrain")


def _scrolled(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    return area


class AllStepsWidget(QWidget):
    """The four docks of napari-mtssl as tabs of one dock; ``widgets[name]`` reaches each."""

    def __init__(self, napari_viewer: Any) -> None:
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
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        self.setMinimumWidth(360)

    def show_step(self, name: str) -> None:
        self.tabs.setCurrentIndex(STEPS.index(name))
