"""Tasks and training dock: choose auxiliary tasks and modes, train, watch curves and results."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from napari_mtssl.api import TaskInfo

from napari_mtssl import api, ids
from napari_mtssl import events as ev
from napari_mtssl.ids import What, teacher, trained
from napari_mtssl.widgets._jobs import PLAN, JobProgressPanel
from napari_mtssl.widgets._session import session_for
from napari_mtssl.widgets.study import report_errors

MODES = (
    ("as planned", "auto"),
    ("both, keep the better", "both"),
    ("joint", "joint"),
    ("pre-train", "pretrain"),
)
# How stage 2 trains the student (Stage2Config.method): the engine's default first.
STUDENTS = (
    ("semi-supervised (default)", "semi"),
    ("the paper's distillation", "paper"),
)
# Time for the whole run; the planner fits resolution, network and steps into it. The last item
# is the engine's "tiny" profile: a few steps, to try the loop in seconds. It is a developer's
# setting: listed only when DEV_ENV is set (tests and scripts may still choose it by its text).
SMOKE = "tiny"
SMOKE_TEXT = "smoke test (a few steps)"
BUDGETS = (
    ("10 min", "10m"),
    ("20 min", "20m"),
    ("30 min", "30m"),
    ("1 h", "1h"),
    ("2 h", "2h"),
    ("8 h (overnight)", "8h"),
    (SMOKE_TEXT, SMOKE),
)
DEFAULT_BUDGET = "1 h"
DEV_ENV = "MTSSL_DEV"
# A model trained for fewer steps than this has not learnt anything worth a score.
NOT_LEARNT_STEPS = 100
NOT_LEARNT = "(not trained: a smoke test)"
DEVICES = ("auto", "cpu", "cuda", "mps")
EXECUTOR_CHOICES = (("this computer", "local"), ("a Ray cluster", "ray"))
TRAIN_BUTTONS = (
    (What.STAGE1, "Train stage 1"),
    (What.STAGE2, "Train stage 2"),
    (What.ALL, "Train all"),
)
# What each kind of run is called in the dock's status line.
RUN_TITLES = {
    What.ALL: "Train all",
    What.STAGE1: "Stage 1",
    What.STAGE2: "Stage 2",
    What.BASELINE: "The baseline",
    PLAN: "Planning",
    What.RETRAIN_QUICK: "Quick retraining",
    What.RETRAIN_STAGE2: "Retraining the student",
}
RESULT_COLUMNS = ["Model", "joint", "pre-train", "chosen", "val Dice"]


def _choices(items: tuple[tuple[str, str], ...], tip: str) -> QComboBox:
    """A combo box of (text, value) items with its tooltip."""
    box = QComboBox()
    for text, value in items:
        box.addItem(text, value)
    box.setToolTip(tip)
    return box


def task_defaults(info: TaskInfo) -> dict[str, Any]:
    """A task's settings and their defaults."""
    return dict(info.config)


def plan_lines(plan: dict) -> list[str]:
    """The plan's description lines (``Plan.describe``), without importing the engine."""
    sp = plan.get("spacing")
    where = "each scan's own spacing" if not sp else f"{float(sp[0]):.3g} mm"
    head = (
        f"{plan.get('patch')} x {plan.get('patch')} patches at {where}, U-Net width "
        f"{plan.get('width')}, depth {plan.get('depth')}, batch {plan.get('batch_size')}, "
        f"{plan.get('precision')} on {plan.get('device')} ({plan.get('threads')} "
        f"thread{'' if plan.get('threads') == 1 else 's'})"
    )
    lines = [head, *plan.get("reasons", [])]
    total = (plan.get("estimate_s") or {}).get("total")
    if plan.get("budget_s") and total is not None:
        lines.append(
            f"estimated {_minutes(total)} of the {_minutes(plan['budget_s'])} budget for "
            f"{len(plan.get('models', []))} model(s)"
        )
    return lines + [f"note: {w}" for w in plan.get("warnings", [])]


def plan_rows(plan: dict) -> list[tuple[str, str, str]]:
    """(model, steps, estimated time) for each model of the plan."""
    steps, est = plan.get("steps") or {}, plan.get("estimate_s") or {}
    rows = []
    for m in plan.get("models", []):
        key = "student" if m == "student" else ("retrain" if "retrain" in m else "seg")
        n = f"{steps.get(key, '?')}"
        if ids.ModelId.is_valid(m) and ids.ModelId.parse(m).mode == "pretrain":
            n += f" + {steps.get('pretext', '?')} pre-training"
        rows.append((m, n, _minutes(est.get(m, 0.0)) if m in est else ""))
    return rows


def _minutes(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def dev_mode() -> bool:
    """True when DEV_ENV is set (to anything but 0/false/no): developer settings are listed."""
    return os.environ.get(DEV_ENV, "").strip().lower() not in ("", "0", "false", "no")


def budget_choices(dev: bool | None = None) -> tuple[tuple[str, str], ...]:
    """The budgets the list offers: the smoke test only in developer mode."""
    dev = dev_mode() if dev is None else dev
    return tuple(item for item in BUDGETS if dev or item[1] != SMOKE)


def model_title(name: str) -> str:
    """A model's name as the status line says it: ``sdm:pretrain`` -> ``sdm (pre-train)``."""
    if not ids.ModelId.is_valid(name):
        return name
    m = ids.ModelId.parse(name)
    if m.kind == "task":
        return f"{m.task} ({'pre-train' if m.mode == 'pretrain' else 'joint'})"
    if m.kind == "teacher":
        return f"teacher {m.task}"
    return {"all_joint": "all tasks jointly"}.get(m.kind, m.kind)


def not_learnt(report: dict, name: str) -> bool:
    """Whether ``name`` of this run's report trained too few steps to have learnt (a smoke
    test: the "tiny" profile, or fewer than NOT_LEARNT_STEPS steps)."""
    if str((report.get("config") or {}).get("profile", "")) in (SMOKE, "smoke"):
        return True
    models = report.get("models") or {}
    steps = (models.get(name) or {}).get("steps")
    if steps is None and ids.ModelId.is_valid(name) and ids.ModelId.parse(name).is_teacher:
        task = ids.ModelId.parse(name).task
        by_mode = ((report.get("selected") or {}).get(task) or {}).get("steps") or {}
        steps = max((int(v) for v in by_mode.values()), default=None)
    return steps is not None and int(steps) < NOT_LEARNT_STEPS


@dataclass(frozen=True)
class Refusal:
    """A budget the planner refused, read from its message (``planner._too_small``): the budget,
    how many models it was to share, the steps each would get, the budget the whole selection
    needs, and the most tasks that fit in it beside the baseline (none: not even one)."""

    budget: str
    models: int
    steps: int
    need: str | None
    fit_tasks: tuple[str, ...]


_REFUSED = re.compile(
    r"\ban? (?P<budget>[^;]+?) budget gives each of the (?P<models>\d+) model\(s\) of this run "
    r"about (?P<steps>-?\d+) training steps"
)
_FITS = re.compile(r"allows baseline \+ \d+ tasks? \((?P<tasks>[^)]*)\)")
_NEED = re.compile(r"a budget of at least (?P<need>\d+(?: ?(?:h|min|s)\b)(?: \d+ ?(?:min|s)\b)*)")


def budget_refusal(message: str | None) -> Refusal | None:
    """The planner's "budget too small" message as a :class:`Refusal`; None for any other."""
    m = _REFUSED.search(message or "")
    if m is None:
        return None
    fits = _FITS.search(message or "")
    need = _NEED.search(message or "")
    tasks = tuple(t.strip() for t in fits.group("tasks").split(",") if t.strip()) if fits else ()
    return Refusal(
        budget=m.group("budget").strip(),
        models=int(m.group("models")),
        steps=max(0, int(m.group("steps"))),
        need=need.group("need") if need else None,
        fit_tasks=tasks,
    )


class Section(QWidget):
    """A titled part of the dock that folds away; its header says in one line what is inside,
    so a folded section still shows its choices."""

    def __init__(self, title: str, content: QWidget, expanded: bool = False) -> None:
        super().__init__()
        self.title = title
        self.content = content
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.toggle.setToolTip(f"show or hide {title.lower()}")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("color: #a0a4ab;")
        self.summary.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        header = QHBoxLayout()
        header.setContentsMargins(0, 0, 0, 0)
        header.addWidget(self.toggle, 0, Qt.AlignmentFlag.AlignTop)
        header.addWidget(self.summary, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 2, 0, 2)
        layout.setSpacing(2)
        layout.addLayout(header)
        layout.addWidget(content)
        self.toggle.toggled.connect(self._show)
        self.toggle.setChecked(expanded)
        self._show(expanded)

    @property
    def expanded(self) -> bool:
        return self.toggle.isChecked()

    def expand(self, on: bool = True) -> None:
        self.toggle.setChecked(on)

    def set_summary(self, text: str) -> None:
        self.summary.setText(text)

    def _show(self, on: bool) -> None:
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.content.setVisible(on)

    def mouseReleaseEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        # a click anywhere on the header line (the summary too) folds or unfolds
        pos = event.position() if hasattr(event, "position") else event.pos()
        header = max(self.toggle.geometry().bottom(), self.summary.geometry().bottom())
        if pos.y() <= header:
            self.toggle.toggle()
        super().mouseReleaseEvent(event)


class _Body(QScrollArea):
    """The dock's settings and results: they scroll, the status strip below them does not."""

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(400, 320)


class TaskRow(QWidget):
    """One auxiliary task: checkbox with its summary, a warning line, and its options form."""

    def __init__(self, info: Any, checked: bool, parent: QWidget | None = None) -> None:
        # imported here, when needed: magicgui loads with the first task's options form
        from magicgui.widgets import Container, create_widget

        super().__init__(parent)
        self.name = info.name
        summary = info.summary
        # the name on the checkbox, the summary wrapped below it: a checkbox's text does not
        # wrap, and a long one would make the dock wider than a laptop's screen leaves it
        self.checkbox = QCheckBox(self.name)
        self.summary = QLabel(summary)
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("color: #a0a4ab; margin-left: 22px;")
        self.summary.setVisible(bool(summary))
        self.checkbox.setChecked(checked)
        tip = summary
        if info.needs_labels:
            tip += "\n(uses the labels that exist)"
        if info.level:
            tip += f"\nshares the {info.level} level of the network"
        self.checkbox.setToolTip(tip.strip())
        self.summary.setToolTip(tip.strip())
        self.warning = QLabel("")
        self.warning.setStyleSheet("color: #e0a040;")
        self.warning.setWordWrap(True)
        self.warning.hide()

        self._defaults: dict[str, Any] = {}
        self.options: Container | None = None
        widgets = []
        for key, value in task_defaults(info).items():
            if not isinstance(value, bool | int | float | str):
                continue  # nested settings stay at their defaults (config file / CLI)
            self._defaults[key] = value
            label = key.replace("_", " ")
            widgets.append(
                create_widget(value=value, annotation=type(value), label=label, name=key)
            )
        if widgets:
            self.options = Container(widgets=widgets)
        self.options_button = QToolButton()
        self.options_button.setText("options")
        self.options_button.setCheckable(True)
        self.options_button.setEnabled(self.options is not None)
        self.options_button.setToolTip(f"settings of {self.name}")

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.checkbox, 1)
        row.addWidget(self.options_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        layout.addLayout(row)
        layout.addWidget(self.summary)
        layout.addWidget(self.warning)
        if self.options is not None:
            self.options.native.setVisible(False)
            self.options.native.setContentsMargins(16, 0, 0, 0)
            layout.addWidget(self.options.native)
            self.options_button.toggled.connect(self.options.native.setVisible)

    @property
    def checked(self) -> bool:
        return self.checkbox.isChecked()

    def set_warning(self, reason: str | None) -> None:
        self.warning.setText(f"⚠ {reason}" if reason else "")
        self.warning.setVisible(bool(reason))

    def overrides(self) -> dict[str, Any]:
        """Options changed from the task's defaults (only those go into the config)."""
        if self.options is None:
            return {}
        out = {}
        for key, default in self._defaults.items():
            value = self.options[key].value
            if value != default:
                out[key] = value
        return out


class TrainingWidget(QWidget):
    """Auxiliary tasks, modes, budget and device; train in a worker process; live results.

    Laid out for a laptop: the budget and its Estimate on top; tasks and the other settings in
    sections that fold (their headers say what is chosen); the curves and results below, all in
    one scrolling area. The train buttons and a status strip (the model in training, its
    progress, the time left, Stop) are pinned under it, so a click always shows its effect.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.jobs = self.session.jobs
        self.job_finished = self.jobs.job_finished  # tests: qtbot.waitSignal(w.job_finished)
        self._request: What | str | None = None  # what this dock last asked the controller to run
        self._planned: What | str = What.ALL  # what its last Estimate planned
        self._smoke = False  # the results shown are a smoke test's
        self._starting = False
        self._own_job = False
        self._run_models: list[str] = []
        self._models_done = 0
        self.refusal: Refusal | None = None

        self._to_reveal: QWidget | None = None
        self._reveal_timer = QTimer(self)  # owned by the dock: it dies with it
        self._reveal_timer.setSingleShot(True)
        self._reveal_timer.setInterval(0)
        self._reveal_timer.timeout.connect(lambda: self._reveal())

        self.body_scroll = self._body()
        self.status_strip = self._strip()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.body_scroll, 1)
        layout.addWidget(self.status_strip)

        self.session.config_provider = self.build_config
        self.session.workspace_changed.connect(lambda _ws: self._on_workspace())
        self.jobs.job_started.connect(self._on_job_started)
        self.jobs.job_event.connect(self._on_event)
        self.jobs.job_finished.connect(self._on_job_finished)
        self.jobs.running_changed.connect(self._set_running)
        self._set_running(self.jobs.is_running)
        self._set_now("Not training. Choose a time budget, then Train all.")
        self._on_workspace()

    # -- the parts of the dock -----------------------------------------------------------------
    def _body(self) -> QScrollArea:
        """Everything but the strip, in one scrolling area: budget, what fits, the plan,
        the tasks and settings (folded), the curves and the results."""
        body = QWidget()
        body_layout = QVBoxLayout(body)
        body_layout.setContentsMargins(6, 6, 6, 6)
        body_layout.addLayout(self._budget_row())
        body_layout.addWidget(self.budget_hint)
        body_layout.addWidget(self._fits_part())
        self.plan_label = QLabel("")
        self.plan_label.setWordWrap(True)
        self.plan_label.setTextFormat(Qt.TextFormat.RichText)
        self.plan_label.setVisible(False)
        body_layout.addWidget(self.plan_label)
        body_layout.addWidget(self._tasks_part())
        body_layout.addWidget(self._settings_part())
        body_layout.addWidget(self._curves_part())
        body_layout.addWidget(self._results_part())
        body_layout.addStretch(1)
        self.body = body
        area = _Body()
        area.setWidget(body)
        area.setWidgetResizable(True)
        area.setFrameShape(QFrame.Shape.NoFrame)
        area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        return area

    def _strip(self) -> QFrame:
        """The pinned strip: the train buttons, what runs now and the time left, the
        progress bar and Stop."""
        self.train_buttons: dict[What, QPushButton] = {}
        buttons = QGridLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        tips = {
            What.STAGE1: "Stage 1: the baseline and one teacher per ticked task (each trained "
            "joint and pre-trained, the better kept), within the time budget",
            What.STAGE2: "Stage 2: distil the latest teachers into one student",
            What.ALL: "Stage 1 and stage 2 in one run, within the time budget",
        }
        for what, text in TRAIN_BUTTONS:
            btn = QPushButton(text)
            btn.setToolTip(tips[what])
            btn.clicked.connect(lambda _=False, w=what: self.train(w))
            self.train_buttons[what] = btn
            buttons.addWidget(btn, 0, len(self.train_buttons) - 1)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip(
            "Go on with the run that was stopped or interrupted (napari closed, the computer "
            "shut down): its finished models are kept, the model in training continues from its "
            "last checkpoint, with its own plan and what is left of its budget"
        )
        self.resume_button.clicked.connect(lambda _=False: self.resume())
        self.resume_button.setVisible(False)
        buttons.addWidget(self.resume_button, 1, 0, 1, len(TRAIN_BUTTONS))
        self.now_label = QLabel("")
        self.now_label.setObjectName("training_now")
        self.now_label.setWordWrap(True)
        self.progress_panel = JobProgressPanel(self.jobs)
        self.progress_panel.status.setVisible(False)  # the strip's own line says it shorter
        self.stop_button = self.progress_panel.stop_button
        frame = QFrame()
        frame.setObjectName("training_status_strip")
        frame.setStyleSheet("QFrame#training_status_strip { border-top: 1px solid #5a5f66; }")
        strip = QVBoxLayout(frame)
        strip.setContentsMargins(6, 6, 6, 4)
        strip.setSpacing(4)
        strip.addLayout(buttons)
        strip.addWidget(self.now_label)
        strip.addWidget(self.progress_panel)
        return frame

    def _budget_row(self) -> QHBoxLayout:
        """The time budget, its Estimate button and what it covers."""
        self.budget = _choices(
            budget_choices(),
            "Wall-clock time for the whole run (type your own: 45m, 1h30m). The planner picks "
            "the resolution, patch size, network and the steps of every model to fit it; "
            "'Estimate' shows its plan without training.",
        )
        self.budget.setEditable(True)
        self.budget.setCurrentText(DEFAULT_BUDGET)
        self.estimate_button = QPushButton("Estimate")
        self.estimate_button.setToolTip(
            "Plan the run for this budget (times a few steps on the device, a few seconds) and "
            "show the resolution, network and the steps and time of every model"
        )
        self.estimate_button.clicked.connect(lambda _=False: self.estimate(What.ALL))
        budget_row = QHBoxLayout()
        budget_row.setContentsMargins(0, 0, 0, 0)
        budget_row.addWidget(QLabel("Time budget"))
        budget_row.addWidget(self.budget, 1)
        budget_row.addWidget(self.estimate_button)
        self.budget_hint = QLabel("")
        self.budget_hint.setWordWrap(True)
        self.budget_hint.setStyleSheet("color: #a0a4ab;")
        return budget_row

    def _fits_part(self) -> QFrame:
        """What fits in a refused budget: a line and one button per way."""
        self.fits_box = QFrame()
        self.fits_box.setObjectName("what_fits")
        self.fits_box.setStyleSheet(
            "QFrame#what_fits { border: 1px solid #e0a040; border-radius: 3px; }"
        )
        self.fits_label = QLabel("")
        self.fits_label.setWordWrap(True)
        self.fits_label.setTextFormat(Qt.TextFormat.RichText)
        self.fits_buttons: dict[str, QPushButton] = {}
        fits_layout = QVBoxLayout(self.fits_box)
        fits_layout.addWidget(self.fits_label)
        for key, slot in (
            ("baseline", self.take_baseline),
            ("fewer", self.take_fewer_tasks),
            ("pretrain", self.take_one_mode),
            ("budget", self.take_needed_budget),
        ):
            btn = QPushButton("")
            btn.clicked.connect(lambda _=False, f=slot: f())
            btn.setVisible(False)
            self.fits_buttons[key] = btn
            fits_layout.addWidget(btn)
        self.fits_box.setVisible(False)
        return self.fits_box

    def _tasks_part(self) -> Section:
        """The auxiliary tasks, one row each, in a folding section."""
        infos = list(api.list_tasks())
        default_tasks = set(self._default_tasks())
        self.task_rows: dict[str, TaskRow] = {}
        task_box = QWidget()
        task_layout = QVBoxLayout(task_box)
        task_layout.setContentsMargins(8, 0, 0, 4)
        for info in infos:
            row = TaskRow(info, checked=info.name in default_tasks)
            row.checkbox.toggled.connect(lambda _c: self.check_tasks())
            self.task_rows[row.name] = row
            task_layout.addWidget(row)
        self.tasks_section = Section("Auxiliary tasks", task_box)
        self.tasks_section.toggle.setToolTip(
            "the self-supervised tasks: one teacher is trained per ticked task"
        )
        return self.tasks_section

    def _settings_part(self) -> Section:
        """Modes, student, device and where it runs, folded."""
        self.mode = _choices(
            MODES,
            "as planned: both modes where the budget gives every model enough steps for joint "
            "training to pay, else pre-train only; joint: one network, segmentation + task "
            "loss; pre-train: task first, then fine-tune; both: train both and keep the better "
            "on validation Dice",
        )
        self.student = _choices(
            STUDENTS,
            "semi-supervised: the student starts from the best stage-1 model and learns the "
            "ground truth and the teachers' confident masks on unlabelled slices (mixed, "
            "strongly perturbed views), its own average refining those masks as it improves; "
            "the paper's distillation: a new student learns the labels and the teachers' "
            "averaged predictions",
        )
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.executor = _choices(
            EXECUTOR_CHOICES,
            "Where the models train: on this computer (several at once when the run is given "
            "in steps), or as tasks on a Ray cluster that already runs (pip install "
            "'napari-mtssl[ray]'; the workspace must be on storage every node sees)",
        )
        self.ray_address = QLineEdit()
        self.ray_address.setPlaceholderText("Ray address: auto or ray://host:port")
        self.ray_address.setVisible(False)
        self.executor.currentIndexChanged.connect(lambda _i: self._on_executor())
        runs_on = QWidget()
        runs_on_layout = QVBoxLayout(runs_on)
        runs_on_layout.setContentsMargins(0, 0, 0, 0)
        runs_on_layout.addWidget(self.executor)
        runs_on_layout.addWidget(self.ray_address)
        settings = QWidget()
        form = QFormLayout(settings)
        form.setContentsMargins(8, 0, 0, 4)
        form.addRow("Modes", self.mode)
        form.addRow("Student", self.student)
        form.addRow("Device", self.device)
        form.addRow("Runs on", runs_on)
        self.settings_section = Section("Settings", settings)
        for box in (self.mode, self.student, self.device, self.executor):
            box.currentIndexChanged.connect(lambda _i: self._update_summaries())
        return self.settings_section

    def _curves_part(self) -> Section:
        """The loss and validation Dice curves, live."""
        import pyqtgraph as pg  # imported here, when needed: it loads with the dock's curves

        pg.setConfigOptions(antialias=True)
        self.loss_plot = pg.PlotWidget(title="training loss")
        self.dice_plot = pg.PlotWidget(title="validation Dice")
        for plot, label in ((self.loss_plot, "loss"), (self.dice_plot, "Dice")):
            plot.setMinimumHeight(140)
            plot.setMaximumHeight(190)  # the slack goes to the results, not to one plot
            plot.setLabel("bottom", "step")
            plot.setLabel("left", label)
            plot.addLegend(offset=(-5, 5), labelTextSize="7pt")
            plot.showGrid(x=True, y=True, alpha=0.3)
        self.dice_plot.setYRange(0, 1)
        self._series: dict[str, dict[str, list[float]]] = {}
        self._curves: dict[tuple[str, str], Any] = {}
        self._redraw = QTimer(self)  # plots redraw at 5 Hz at most, never per event
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(200)
        self._redraw.timeout.connect(self._draw_curves)
        curves = QWidget()
        curves_layout = QVBoxLayout(curves)
        curves_layout.setContentsMargins(0, 0, 0, 0)
        curves_layout.addWidget(self.loss_plot)
        curves_layout.addWidget(self.dice_plot)
        self.curves_section = Section("Curves", curves, expanded=True)
        self.curves_section.set_summary("loss and validation Dice of each model, live")
        return self.curves_section

    def _results_part(self) -> Section:
        """The results table, the smoke-test note and the verdict."""
        self.results = QTableWidget(0, len(RESULT_COLUMNS))
        self.results.setHorizontalHeaderLabels(RESULT_COLUMNS)
        self.results.verticalHeader().setVisible(False)
        header = self.results.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)  # the names wrap
        header.setMinimumSectionSize(40)
        self.results.setWordWrap(True)
        self.results.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.results.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.results.setSizeAdjustPolicy(QTableWidget.SizeAdjustPolicy.AdjustIgnored)
        header.sectionResized.connect(lambda *_: self._fit_results_height())
        self.results.setToolTip(
            "validation Dice per model: each task's joint and pre-train models and the chosen "
            "teacher, the conventional baseline, all tasks jointly, and the distilled student"
        )
        self.smoke_note = QLabel(
            f"{NOT_LEARNT}: these models trained a few steps each, to try the loop; their "
            "scores mean nothing. Choose a time budget to train them."
        )
        self.smoke_note.setObjectName("smoke_note")
        self.smoke_note.setWordWrap(True)
        self.smoke_note.setStyleSheet("color: #e0a040;")
        self.smoke_note.setVisible(False)
        self.verdict = QLabel("")
        self.verdict.setWordWrap(True)
        self.verdict.setObjectName("student_verdict")
        self.verdict.setVisible(False)
        results = QWidget()
        results_layout = QVBoxLayout(results)
        results_layout.setContentsMargins(0, 0, 0, 0)
        results_layout.addWidget(self.smoke_note)
        results_layout.addWidget(self.results)
        results_layout.addWidget(self.verdict)
        self.results_section = Section("Results (validation Dice)", results, expanded=True)
        self._fit_results_height()
        return self.results_section

    # -- configuration ---------------------------------------------------------------------------
    def budget_value(self) -> str:
        """The budget field as the engine reads it: "tiny" or a time ("45m")."""
        text = self.budget.currentText().strip()
        return dict(BUDGETS).get(text) or text

    @staticmethod
    def _default_tasks() -> list[str]:
        try:
            return list(api.make_config(profile="quick").stage1.tasks)
        except Exception:  # noqa: BLE001 - only a default ticking of boxes
            return []

    def selected_tasks(self) -> list[str]:
        return [name for name, row in self.task_rows.items() if row.checked]

    def build_config(self) -> Any:
        """The ExperimentConfig the fields describe (``api.make_config`` with overrides)."""
        overrides: dict[str, Any] = {
            "device": self.device.currentText(),
            "stage1__tasks": self.selected_tasks(),
            "stage1__modes": self.mode.currentData(),
            "stage2__method": self.student.currentData(),
            "executor": self.executor.currentData(),
        }
        if self.executor.currentData() == "ray":
            overrides["ray_address"] = self.ray_address.text().strip() or None
        task_options = {n: r.overrides() for n, r in self.task_rows.items() if r.checked}
        task_options = {n: o for n, o in task_options.items() if o}
        if task_options:
            overrides["stage1__task_overrides"] = task_options
        budget = self.budget_value()
        if budget == SMOKE:
            return api.make_config(profile="tiny", **overrides)
        return api.make_config(profile="quick", budget=budget, **overrides)

    def check_tasks(self) -> dict[str, str | None]:
        """Show, per ticked task, why it cannot run on this workspace (api.check_tasks)."""
        ws = self.session.workspace
        reasons: dict[str, str | None] = {}
        if ws is not None and self.selected_tasks():
            try:
                reasons = dict(api.check_tasks(ws, self.selected_tasks()))
            except Exception as exc:  # noqa: BLE001 - shown next to the tasks
                reasons = {name: str(exc) for name in self.selected_tasks()}
        for name, row in self.task_rows.items():
            row.set_warning(reasons.get(name) if row.checked else None)
        if any(reasons.get(n) for n in self.selected_tasks()):
            self.tasks_section.expand()  # a ticked task that cannot run must be seen
        self._update_summaries(reasons)
        return reasons

    def _on_executor(self) -> None:
        ray = self.executor.currentData() == "ray"
        self.ray_address.setVisible(ray)
        if ray:
            self.settings_section.expand()  # the address to fill in must be seen

    def _update_summaries(self, reasons: dict[str, str | None] | None = None) -> None:
        """The folded sections' one-line summaries and the budget's scope line."""
        tasks = self.selected_tasks()
        text = ", ".join(tasks) if tasks else "none ticked"
        text += f" ({len(tasks)} of {len(self.task_rows)})"
        blocked = [n for n in tasks if (reasons or {}).get(n)]
        if blocked:
            text += f"; ⚠ {', '.join(blocked)} cannot run here"
        self.tasks_section.set_summary(text)
        self.settings_section.set_summary(
            " · ".join(
                (
                    f"modes {self.mode.currentText()}",
                    f"student {self.student.currentText().replace(' (default)', '')}",
                    f"device {self.device.currentText()}",
                    self.executor.currentText(),
                )
            )
        )
        teachers = f"a teacher for each of {', '.join(tasks)}" if tasks else "no teachers"
        self.budget_hint.setText(
            f"for the whole run (Train all): the baseline, {teachers}, and the student"
        )

    # -- running ---------------------------------------------------------------------------------
    def _start(self, what: What | str, config: Any, **kwargs: Any) -> Any:
        """Ask the viewer's job controller to run ``what`` (a What, or PLAN) and remember it
        was this dock."""
        ws = self.session.require_workspace()
        self._request = what
        self._starting = True
        try:
            return self.jobs.start(ws, config, what, **kwargs)
        finally:
            self._starting = False

    @report_errors("Could not start training")
    def train(self, what: What | str) -> Any:
        """Start ``what`` ("stage1", "stage2", "all", "baseline") in a worker process.

        The task check (it reads the data) runs with the start, off the GUI thread; a task that
        cannot run stops the start with a message naming it, before any training.
        """
        ws = self.session.require_workspace()
        tasks = self.selected_tasks()
        config = self.build_config()
        uses_tasks = What.parse(what).trains_teachers
        if uses_tasks and not tasks:
            raise ValueError("tick at least one auxiliary task")

        def preflight() -> None:
            if not uses_tasks:
                return
            reasons = api.check_tasks(ws, tasks, config)
            blocked = {n: r for n, r in reasons.items() if r}
            if blocked:
                raise ValueError(
                    "; ".join(f"{n}: {r}" for n, r in blocked.items())
                    + " (untick these tasks to train)"
                )

        return self._start(what, config, preflight=preflight)

    @report_errors("Could not plan the run")
    def estimate(self, what: What | str = What.ALL) -> Any:
        """Plan ``what`` for the budget in a worker process and show the plan (no training)."""
        self.session.require_workspace()
        config = self.build_config()
        self.show_plan(None, message="planning: timing a few steps on this machine…")
        self._planned = what
        return self._start(PLAN, config, plan_for=what)

    # -- what fits a budget that was refused --------------------------------------------------
    def show_fits(self, refusal: Refusal | None, what: What | str | None = None) -> None:
        """Say what fits in a refused budget, with one button per way to take it."""
        self.refusal = refusal
        if refusal is None:
            self.fits_box.setVisible(False)
            return
        what = what or What.ALL
        budget = escape(refusal.budget)
        whole = (
            "the whole method"
            if what == What.ALL
            else ("stage 1" if what == What.STAGE1 else RUN_TITLES.get(what, what).lower())
        )
        each = "its one model" if refusal.models == 1 else f"each of its {refusal.models} models"
        text = (
            f"<b>{budget} is too short for {whole}</b>: it would give {each} about "
            f"{refusal.steps} training steps, and a model needs a few hundred to learn."
        )
        tasks_run = What.parse(what).trains_teachers
        offers = {
            "baseline": (
                what != What.BASELINE,
                f"Train the baseline alone in {refusal.budget}",
                "the conventional model, from your labels alone: one model instead of "
                f"{refusal.models}, so it gets all the time; a first mask to correct now, "
                "the whole method later (overnight)",
            ),
            "fewer": (
                tasks_run and bool(refusal.fit_tasks),
                self._fewer_text(refusal),
                f"what the planner says fits in {refusal.budget}: the baseline, "
                f"{', '.join(refusal.fit_tasks)} and the student; the other tasks are unticked",
            ),
            "pretrain": (
                tasks_run and self.mode.currentData() in ("both", "joint"),
                "Train in one mode only (pre-train)",
                "one model per task instead of two: half the models share the budget",
            ),
            "budget": (
                bool(refusal.need),
                f"{RUN_TITLES.get(what, what)} in {refusal.need} instead",
                f"the budget the planner says {whole} needs on this machine",
            ),
        }
        for key, (show, label, tip) in offers.items():
            btn = self.fits_buttons[key]
            btn.setText(label)
            btn.setToolTip(tip)
            btn.setVisible(bool(show))
        if any(show for show, _l, _t in offers.values()):
            text += "<br>One click to go on:"
        self.fits_label.setText(text)
        self.fits_box.setVisible(True)
        self._reveal_later(self.fits_box)

    def _reveal_later(self, widget: QWidget) -> None:
        """Reveal ``widget`` once the layout has placed it (after this event)."""
        self._to_reveal = widget
        self._reveal_timer.start()

    def _reveal(self, widget: QWidget | None = None) -> None:
        """Scroll the body so ``widget`` is in view: from the top (the budget above it stays
        in view too) when it fits there, else just enough."""
        widget = widget or self._to_reveal
        if widget is None:
            return
        bar = self.body_scroll.verticalScrollBar()
        bottom = widget.mapTo(self.body, widget.rect().bottomLeft()).y()
        if bottom <= self.body_scroll.viewport().height():
            bar.setValue(0)
        else:
            self.body_scroll.ensureWidgetVisible(widget, 0, 8)

    def _fewer_text(self, refusal: Refusal) -> str:
        names = ", ".join(refusal.fit_tasks)
        text = f"Train all with {names} only (fits {refusal.budget})"
        if len(text) > 44:  # a button wider than the dock would widen it
            n = len(refusal.fit_tasks)
            text = f"Train all with {n} task{'s' if n > 1 else ''} only (fits {refusal.budget})"
        return text

    def _refused_what(self) -> What | str | None:
        return self._planned if self._request == PLAN else self._request

    def take_baseline(self) -> Any:
        """Train the baseline alone with the budget that was refused."""
        return self.train(What.BASELINE)

    def take_fewer_tasks(self) -> Any:
        """Tick only the tasks that fit, then start the run that was refused."""
        if self.refusal is None or not self.refusal.fit_tasks:
            return None
        what = self._refused_what() or What.ALL
        for name, row in self.task_rows.items():
            row.checkbox.setChecked(name in self.refusal.fit_tasks)
        return self.train(what if what in (What.STAGE1, What.ALL) else What.ALL)

    def take_one_mode(self) -> Any:
        """Train each task in the pre-train mode only, then start the run that was refused."""
        what = self._refused_what() or What.ALL
        self.mode.setCurrentIndex(self.mode.findData("pretrain"))
        return self.train(what if what in (What.STAGE1, What.ALL) else What.ALL)

    def take_needed_budget(self) -> Any:
        """Set the budget the planner asked for and start the run that was refused."""
        if self.refusal is None or not self.refusal.need:
            return None
        what = self._refused_what() or What.ALL
        self.budget.setCurrentText(self.refusal.need)
        return self.train(what)

    # -- the plan ---------------------------------------------------------------------------
    def show_plan(self, plan: dict | None, message: str | None = None) -> None:
        """The plan's choices and per-model steps and times (or ``message``) under the budget."""
        if plan is None:
            self.plan_label.setText(f"<i>{escape(message or '')}</i>")
            self.plan_label.setVisible(bool(message))
            return
        lines = plan_lines(plan)
        rows = "".join(
            f"<tr><td>{escape(m)}</td><td align='right'>&nbsp;{escape(n)}</td>"
            f"<td align='right'>&nbsp;{escape(t)}</td></tr>"
            for m, n, t in plan_rows(plan)
        )
        html = "<br>".join(escape(x.lstrip("- ").replace("**", "")) for x in lines)
        if rows:
            html += (
                "<table cellspacing='0' cellpadding='1'><tr><th align='left'>model</th><th>steps</th>"
                f"<th>time</th></tr>{rows}</table>"
            )
        self.plan_label.setText(html)
        self.plan_label.setToolTip("the plan of the run: why this resolution, patch and network")
        self.plan_label.setVisible(True)

    def resumable_run(self) -> Any | None:
        """The run Resume goes on with (``Workspace.resumable_run``, the CLI's rule too)."""
        ws = self.session.workspace
        if ws is None:
            return None
        try:
            return ws.resumable_run()
        except Exception:  # noqa: BLE001 - a damaged run folder only hides the button
            return None

    def _update_resume(self) -> None:
        run = self.resumable_run()
        self.resume_button.setVisible(run is not None)
        if run is not None:
            self.resume_button.setText(f"Resume {run.kind} ({run.status})")
            self.resume_button.setEnabled(not self.jobs.is_running)

    @report_errors("Could not resume training")
    def resume(self) -> Any:
        """Resume the newest stopped or interrupted run, with its own config and plan."""
        self.session.require_workspace()
        run = self.resumable_run()
        if run is None:
            raise ValueError("there is no stopped or interrupted run to resume")
        config = api.run_config(run)
        return self._start(run.kind, config, resume=run.id)

    def stop(self) -> None:
        self.jobs.stop()

    def _set_running(self, running: bool) -> None:
        for btn in (*self.train_buttons.values(), *self.fits_buttons.values()):
            btn.setEnabled(not running)
        self.estimate_button.setEnabled(not running)
        self.resume_button.setEnabled(not running)
        if running:  # the run it offered may be the one training now: offered again after
            self.resume_button.setVisible(False)

    def _on_workspace(self) -> None:
        self._restore_settings()
        self.check_tasks()
        self._show_last_results()
        self._update_resume()

    def _restore_settings(self) -> None:
        """A reopened workspace shows the tasks, modes and budget of its last run, so training
        "all" again does not silently switch to another task set."""
        ws = self.session.workspace
        if ws is None:
            return
        try:
            runs = ws.runs()
            cfg = runs[-1].config if runs else None
        except Exception:  # noqa: BLE001 - an unreadable run keeps the defaults
            cfg = None
        if not isinstance(cfg, dict):
            return
        s1 = cfg.get("stage1") or {}
        tasks = s1.get("tasks")
        if isinstance(tasks, list) and tasks:
            for name, row in self.task_rows.items():
                row.checkbox.setChecked(name in tasks)
        i = self.mode.findData(s1.get("modes"))
        if i >= 0:
            self.mode.setCurrentIndex(i)
        i = self.student.findData((cfg.get("stage2") or {}).get("method"))
        if i >= 0:
            self.student.setCurrentIndex(i)
        self._restore_budget(cfg)

    def _restore_budget(self, cfg: dict) -> None:
        """The budget box shows the last run's budget (a smoke test's: only where offered)."""
        budget = cfg.get("budget_s") or 0
        if cfg.get("profile") == SMOKE:
            # a smoke test is no budget to suggest again, unless to a developer
            i = self.budget.findData(SMOKE)
            self.budget.setCurrentText(self.budget.itemText(i) if i >= 0 else DEFAULT_BUDGET)
        elif budget:
            minutes = int(round(float(budget) / 60))
            text = f"{minutes // 60} h" if minutes % 60 == 0 and minutes >= 60 else f"{minutes}m"
            i = self.budget.findText(text) if minutes % 60 == 0 else -1
            if i < 0:
                i = self.budget.findText(f"{minutes} min")
            if i >= 0:
                self.budget.setCurrentIndex(i)
            else:
                self.budget.setCurrentText(f"{minutes}m")

    # -- the status strip --------------------------------------------------------------------
    def _set_now(self, text: str, tip: str = "") -> None:
        short = text if len(text) <= 200 else text[:197].rstrip() + "…"
        self.now_label.setText(short)
        self.now_label.setToolTip(tip or (text if short != text else ""))

    def _describe_progress(self, e: ev.Progress) -> str:
        phase = {"pretrain": "pre-training", "finetune": "fine-tuning"}.get(e.mode or "", "")
        line = model_title(e.model) + (f", {phase}" if phase else "")
        line += f": step {e.step} of {e.total}"
        parts = [line]
        if len(self._run_models) > 1:
            done = min(self._models_done, len(self._run_models))
            parts.append(f"{done} of {len(self._run_models)} models done")
        if e.run_budget_s:
            left = max(0.0, float(e.run_budget_s) - float(e.run_elapsed_s or 0.0))
            parts.append(f"about {_minutes(left)} left")
        elif e.eta_s is not None:
            parts.append(f"about {_minutes(e.eta_s)} left for this model")
        return " · ".join(parts)

    # -- curves ----------------------------------------------------------------------------------
    def _on_job_started(self, what: str) -> None:
        self._own_job = self._starting
        if self._own_job:
            self.show_fits(None)
        self._run_models, self._models_done = [], 0
        if what == PLAN:
            self._set_now("Planning: timing a few steps on this machine…")
            return
        self._set_now(f"{RUN_TITLES.get(what, what)}: starting the worker process…")
        self._series.clear()
        self.loss_plot.clear()
        self.dice_plot.clear()
        self._curves.clear()

    def _on_event(self, e: ev.Event) -> None:
        self.status_strip.setToolTip(self.progress_panel.status.text())
        if isinstance(e, ev.PlanMade):
            self.show_plan(e.plan)
            return
        if isinstance(e, ev.Start):
            self._run_models = list(e.plan)
            what = e.what or self.jobs.what or ""
            self._set_now(f"{RUN_TITLES.get(what, what)}: {len(e.plan)} model(s) to train")
            return
        if isinstance(e, ev.ModelDone):
            self._models_done += 1
            return
        if isinstance(e, ev.Status | ev.Note):
            self._set_now(e.message)
            return
        if not isinstance(e, ev.Progress):
            return
        self._set_now(self._describe_progress(e))
        s = self._series.setdefault(
            e.model, {"x": [], "loss": [], "dx": [], "dice": [], "offset": 0.0}
        )
        # A pre-trained model restarts its step count for fine-tuning: place those steps after
        # the pre-training ones, from the events' own phase (not from their arrival order).
        if e.mode == "pretrain" and e.total:
            s["offset"] = max(s["offset"], float(e.total))
        x = float(e.step) + (s["offset"] if e.mode == "finetune" else 0.0)
        if e.loss is not None and e.loss > 0:
            s["x"].append(x)
            s["loss"].append(e.loss)
        if e.val_dice is not None and (not s["dice"] or e.val_dice != s["dice"][-1]):
            s["dx"].append(x)
            s["dice"].append(e.val_dice)
        if not self._redraw.isActive():
            self._redraw.start()

    def _draw_curves(self) -> None:
        import pyqtgraph as pg  # imported here: the curves' part imported it already

        for i, (name, s) in enumerate(self._series.items()):
            pen = pg.mkPen(pg.intColor(i, hues=max(len(self._series), 6)), width=1.5)
            for key, plot, xs, ys in (
                ("loss", self.loss_plot, s["x"], s["loss"]),
                ("dice", self.dice_plot, s["dx"], s["dice"]),
            ):
                if not ys:
                    continue
                curve = self._curves.get((name, key))
                if curve is None:
                    symbol = "o" if key == "dice" else None
                    curve = plot.plot(
                        name=name, pen=pen, symbol=symbol, symbolSize=4, symbolBrush=pen.color()
                    )
                    self._curves[(name, key)] = curve
                curve.setData(xs, ys)

    # -- results ---------------------------------------------------------------------------------
    def _on_job_finished(self, result: object) -> None:
        self._update_resume()
        jobs = self.jobs
        what = jobs.what or ""
        title = RUN_TITLES.get(what, what)
        refusal = budget_refusal(jobs.last_error) if jobs.last_state == "failed" else None
        if refusal is not None and self._own_job:
            self.show_plan(None)
            self.show_fits(refusal, self._refused_what())
            self._set_now(
                f"Refused: {refusal.budget} is too short for this run; the choices are above.",
                tip=jobs.last_error or "",
            )
            return
        if jobs.last_state == "failed":
            self._set_now(f"{title} failed: {jobs.last_error}", tip=jobs.last_error or "")
        elif jobs.last_state == "stopped":
            self._set_now(f"{title} stopped; the last checkpoint is kept (Resume goes on).")
        if what == PLAN:
            self._on_plan_finished(result)
            return
        self._draw_curves()
        if isinstance(result, dict) and result.get("models"):
            self.show_results(result)
            self._set_now(
                f"{title} finished: the results are shown above"
                + (f" {NOT_LEARNT}." if self._smoke else ".")
            )
            if self._own_job:
                self._reveal_later(self.results_section)
        elif jobs.last_state == "failed" and jobs.last_error:
            self.show_plan(None, message=jobs.last_error)
        elif jobs.last_state == "done":
            self._set_now(f"{title} finished.")

    def _on_plan_finished(self, result: object) -> None:
        if isinstance(result, dict) and result.get("patch"):
            self.show_plan(result)
            total = (result.get("estimate_s") or {}).get("total")
            self._set_now(
                "The plan is shown above"
                + (f": about {_minutes(total)} in all." if total is not None else ".")
            )
            if self._own_job:
                self._reveal_later(self.plan_label)
        else:
            self.show_plan(None, message=self.jobs.last_error or "planning stopped")

    def _show_last_results(self) -> None:
        ws = self.session.workspace
        if ws is None:
            self.results.setRowCount(0)
            self._fit_results_height()
            return

        try:
            rounds = api.history(ws)
        except Exception:  # noqa: BLE001 - an empty or old workspace simply shows no results
            return
        # the newest round whose run's report is readable (a run folder may have been deleted)
        for entry in reversed(rounds):
            try:
                report = ws.run(entry.run).metrics() if entry.run else None
            except Exception:  # noqa: BLE001 - a missing or damaged run: look further back
                continue
            if report and report.get("models"):
                self.show_results(report)
                return

    def show_results(self, report: dict) -> None:
        """Fill the results table from a run's report (``metrics.json``: each model's scores
        and, per task, both modes' validation Dice and the mode kept). A model trained too
        few steps to have learnt (a smoke test) says so next to its name."""
        models: dict[str, dict] = report.get("models") or {}
        selected: dict[str, dict] = report.get("selected") or {}

        def fmt(v: float | None) -> str:
            return "" if v is None else f"{float(v):.3f}"

        def dice(name: str) -> str:
            return fmt((models.get(name) or {}).get("mean_dice"))

        rows = [
            (
                str(teacher(t)),
                [
                    f"teacher {t}",
                    fmt(s.get("joint")),
                    fmt(s.get("pretrain")),
                    s.get("mode", ""),
                    dice(str(teacher(t))),
                ],
            )
            for t, s in selected.items()
        ]
        shown = {str(teacher(t)) for t in selected}
        shown |= {str(trained(t, m)) for t in selected for m in ids.MODES}
        rest = [
            n for n in models if n not in shown and n not in ("baseline", "all_joint", "student")
        ]
        for name in ("baseline", "all_joint", "student", *rest):
            if name in models:
                rows.append((name, [name, "", "", "", dice(name)]))
        self._smoke = False
        for name, cells in rows:
            if not_learnt(report, name):
                self._smoke = True
                cells[0] += f" {NOT_LEARNT}"
        self.results.setRowCount(len(rows))
        for r, (_name, cells) in enumerate(rows):
            for c, text in enumerate(cells):
                self.results.setItem(r, c, QTableWidgetItem(text))
        self.smoke_note.setVisible(self._smoke)
        self._fit_results_height()
        # how the student compared with the run's baseline, in one line (pipeline.comparison)
        line = (report.get("comparison") or {}).get("line", "")
        self.verdict.setText(line[:1].upper() + line[1:] if line else "")
        self.verdict.setVisible(bool(line))
        self.verdict.setToolTip(f"{NOT_LEARNT}: the scores mean nothing" if self._smoke else "")

    def _fit_results_height(self) -> None:
        """The table as tall as its rows (the dock scrolls, not the table); names wrap."""
        t = self.results
        t.resizeRowsToContents()
        rows = sum(t.rowHeight(r) for r in range(t.rowCount())) or 24
        t.setFixedHeight(t.horizontalHeader().sizeHint().height() + rows + 2 * t.frameWidth())
