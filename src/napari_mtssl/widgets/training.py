"""Tasks and training dock: choose auxiliary tasks and modes, train, watch curves and results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from napari_mtssl.api import TaskInfo

from napari_mtssl import events as ev
from napari_mtssl import ids
from napari_mtssl.ids import teacher, trained
from napari_mtssl.widgets._jobs import JobProgressPanel
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
# is the engine's "tiny" profile: a few steps, to try the loop in seconds (tests too).
BUDGETS = (
    ("10 min", "10m"),
    ("20 min", "20m"),
    ("30 min", "30m"),
    ("1 h", "1h"),
    ("2 h", "2h"),
    ("8 h (overnight)", "8h"),
    ("smoke test (a few steps)", "tiny"),
)
DEFAULT_BUDGET = "1 h"
DEVICES = ("auto", "cpu", "cuda", "mps")
EXECUTOR_CHOICES = (("this computer", "local"), ("a Ray cluster", "ray"))
TRAIN_BUTTONS = (("stage1", "Train stage 1"), ("stage2", "Train stage 2"), ("all", "Train all"))
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
        f"{plan.get('precision')} on {plan.get('device')} ({plan.get('threads')} threads)"
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


class TaskRow(QWidget):
    """One auxiliary task: checkbox with its summary, a warning line, and its options form."""

    def __init__(self, info: Any, checked: bool, parent: QWidget | None = None) -> None:
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
    """Auxiliary tasks, modes, profile and device; train in a worker process; live results."""

    def __init__(self, napari_viewer: Any) -> None:
        import pyqtgraph as pg

        from napari_mtssl import api

        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.jobs = self.session.jobs
        self.job_finished = self.jobs.job_finished  # tests: qtbot.waitSignal(w.job_finished)

        # tasks ------------------------------------------------------------------------------
        infos = list(api.list_tasks())
        default_tasks = set(self._default_tasks())
        self.task_rows: dict[str, TaskRow] = {}
        task_box = QGroupBox("Auxiliary tasks")
        task_layout = QVBoxLayout(task_box)
        for info in infos:
            row = TaskRow(info, checked=info.name in default_tasks)
            row.checkbox.toggled.connect(lambda _c: self.check_tasks())
            self.task_rows[row.name] = row
            task_layout.addWidget(row)

        # settings ---------------------------------------------------------------------------
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
        self.budget = _choices(
            BUDGETS,
            "Wall-clock time for the whole run (type your own: 45m, 1h30m). The planner picks "
            "the resolution, patch size, network and the steps of every model to fit it; "
            "'Estimate' shows its plan without training.",
        )
        self.budget.setEditable(True)
        self.budget.setCurrentText(DEFAULT_BUDGET)
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
        self.executor.currentIndexChanged.connect(
            lambda _i: self.ray_address.setVisible(self.executor.currentData() == "ray")
        )
        runs_on = QWidget()
        runs_on_layout = QVBoxLayout(runs_on)
        runs_on_layout.setContentsMargins(0, 0, 0, 0)
        runs_on_layout.addWidget(self.executor)
        runs_on_layout.addWidget(self.ray_address)
        settings = QGroupBox("Settings")
        form = QFormLayout(settings)
        form.addRow("Modes", self.mode)
        form.addRow("Student", self.student)
        form.addRow("Time budget", self.budget)
        form.addRow("Device", self.device)
        form.addRow("Runs on", runs_on)

        # buttons + progress -------------------------------------------------------------------
        self.train_buttons: dict[str, QPushButton] = {}
        buttons = QGridLayout()  # two rows: one would be wider than a laptop's dock
        tips = {
            "stage1": "Stage 1: the baseline and one teacher per ticked task (each trained "
            "joint and pre-trained, the better kept), within the time budget",
            "stage2": "Stage 2: distil the latest teachers into one student",
            "all": "Stage 1 and stage 2 in one run, within the time budget",
        }
        for what, text in TRAIN_BUTTONS:
            btn = QPushButton(text)
            btn.setToolTip(tips[what])
            btn.clicked.connect(lambda _=False, w=what: self.train(w))
            self.train_buttons[what] = btn
            buttons.addWidget(btn, 0, len(self.train_buttons) - 1)
        self.estimate_button = QPushButton("Estimate")
        self.estimate_button.setToolTip(
            "Plan the run for this budget (times a few steps on the device, a few seconds) and "
            "show the resolution, network and the steps and time of every model"
        )
        self.estimate_button.clicked.connect(lambda _=False: self.estimate("all"))
        buttons.addWidget(self.estimate_button, 1, 0)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip(
            "Go on with the run that was stopped or interrupted (napari closed, the computer "
            "shut down): its finished models are kept, the model in training continues from its "
            "last checkpoint, with its own plan and what is left of its budget"
        )
        self.resume_button.clicked.connect(lambda _=False: self.resume())
        self.resume_button.setVisible(False)
        buttons.addWidget(self.resume_button, 1, 1)
        self.plan_label = QLabel("")
        self.plan_label.setWordWrap(True)
        self.plan_label.setTextFormat(Qt.TextFormat.RichText)
        self.plan_label.setVisible(False)
        self.progress_panel = JobProgressPanel(self.jobs)
        self.stop_button = self.progress_panel.stop_button

        # curves -------------------------------------------------------------------------------
        pg.setConfigOptions(antialias=True)
        self.loss_plot = pg.PlotWidget(title="training loss")
        self.dice_plot = pg.PlotWidget(title="validation Dice")
        for plot, label in ((self.loss_plot, "loss"), (self.dice_plot, "Dice")):
            plot.setMinimumHeight(140)
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

        # results ------------------------------------------------------------------------------
        self.results = QTableWidget(0, len(RESULT_COLUMNS))
        self.results.setHorizontalHeaderLabels(RESULT_COLUMNS)
        self.results.verticalHeader().setVisible(False)
        self.results.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents
        )
        self.results.setMinimumHeight(170)
        self.results.setToolTip(
            "validation Dice per model: each task's joint and pre-train models and the chosen "
            "teacher, the conventional baseline, all tasks jointly, and the distilled student"
        )

        self.verdict = QLabel("")
        self.verdict.setWordWrap(True)
        self.verdict.setObjectName("student_verdict")
        self.verdict.setVisible(False)

        layout = QVBoxLayout(self)
        layout.addWidget(task_box)
        layout.addWidget(settings)
        layout.addLayout(buttons)
        layout.addWidget(self.plan_label)
        layout.addWidget(self.progress_panel)
        layout.addWidget(self.loss_plot)
        layout.addWidget(self.dice_plot)
        layout.addWidget(QLabel("Results (validation Dice)"))
        layout.addWidget(self.results)
        layout.addWidget(self.verdict)

        self.session.config_provider = self.build_config
        self.session.workspace_changed.connect(lambda _ws: self._on_workspace())
        self.jobs.job_started.connect(self._on_job_started)
        self.jobs.job_event.connect(self._on_event)
        self.jobs.job_finished.connect(self._on_job_finished)
        self.jobs.running_changed.connect(self._set_running)
        self._set_running(self.jobs.is_running)
        self._on_workspace()

    # -- configuration ---------------------------------------------------------------------------
    def budget_value(self) -> str:
        """The budget field as the engine reads it: "tiny" or a time ("45m")."""
        i = self.budget.findText(self.budget.currentText())
        if i >= 0 and self.budget.itemData(i):
            return str(self.budget.itemData(i))
        return self.budget.currentText().strip()

    @staticmethod
    def _default_tasks() -> list[str]:
        from napari_mtssl import api

        try:
            return list(api.make_config(profile="quick").stage1.tasks)
        except Exception:  # noqa: BLE001 - only a default ticking of boxes
            return []

    def selected_tasks(self) -> list[str]:
        return [name for name, row in self.task_rows.items() if row.checked]

    def build_config(self) -> Any:
        """The ExperimentConfig the fields describe (``api.make_config`` with overrides)."""
        from napari_mtssl import api

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
        if budget == "tiny":
            return api.make_config(profile="tiny", **overrides)
        return api.make_config(profile="quick", budget=budget, **overrides)

    def check_tasks(self) -> dict[str, str | None]:
        """Show, per ticked task, why it cannot run on this workspace (api.check_tasks)."""
        from napari_mtssl import api

        ws = self.session.workspace
        reasons: dict[str, str | None] = {}
        if ws is not None and self.selected_tasks():
            try:
                reasons = dict(api.check_tasks(ws, self.selected_tasks()))
            except Exception as exc:  # noqa: BLE001 - shown next to the tasks
                reasons = {name: str(exc) for name in self.selected_tasks()}
        for name, row in self.task_rows.items():
            row.set_warning(reasons.get(name) if row.checked else None)
        return reasons

    # -- running ---------------------------------------------------------------------------------
    @report_errors("Could not start training")
    def train(self, what: str) -> Any:
        """Start ``what`` ("stage1", "stage2", "all") in a worker process.

        The task check (it reads the data) runs with the start, off the GUI thread; a task that
        cannot run stops the start with a message naming it, before any training.
        """
        from napari_mtssl import api

        ws = self.session.require_workspace()
        tasks = self.selected_tasks()
        config = self.build_config()
        if what != "stage2" and not tasks:
            raise ValueError("tick at least one auxiliary task")

        def preflight() -> None:
            if what == "stage2":
                return
            reasons = api.check_tasks(ws, tasks, config)
            blocked = {n: r for n, r in reasons.items() if r}
            if blocked:
                raise ValueError(
                    "; ".join(f"{n}: {r}" for n, r in blocked.items())
                    + " (untick these tasks to train)"
                )

        return self.jobs.start(ws, config, what, preflight=preflight)

    @report_errors("Could not plan the run")
    def estimate(self, what: str = "all") -> Any:
        """Plan ``what`` for the budget in a worker process and show the plan (no training)."""
        ws = self.session.require_workspace()
        config = self.build_config()
        self.show_plan(None, message="planning: timing a few steps on this machine…")
        return self.jobs.start(ws, config, "plan", plan_for=what)

    def show_plan(self, plan: dict | None, message: str | None = None) -> None:
        """The plan's choices and per-model steps and times (or ``message``) under the buttons."""
        from html import escape

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
                "<table cellspacing='0'><tr><th align='left'>model</th><th>steps</th>"
                f"<th>time</th></tr>{rows}</table>"
            )
        self.plan_label.setText(html)
        self.plan_label.setToolTip("the plan of the run: why this resolution, patch and network")
        self.plan_label.setVisible(True)

    def resumable_run(self) -> Any | None:
        """The newest run of this workspace that stopped or was interrupted before its end."""
        ws = self.session.workspace
        if ws is None:
            return None
        from napari_mtssl.workspace.runs import RESUMABLE

        try:
            runs = ws.runs()
        except Exception:  # noqa: BLE001 - a damaged run folder only hides the button
            return None
        for run in reversed(runs):
            if run.status == "done":
                return None  # something finished since: an older unfinished run is history
            if run.status in RESUMABLE and (run.path / "plan.json").is_file():
                return run
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
        from napari_mtssl.training.config import ExperimentConfig

        ws = self.session.require_workspace()
        run = self.resumable_run()
        if run is None:
            raise ValueError("there is no stopped or interrupted run to resume")
        config = ExperimentConfig.from_dict(run.config)
        return self.jobs.start(ws, config, run.kind, resume=run.id)

    def stop(self) -> None:
        self.jobs.stop()

    def _set_running(self, running: bool) -> None:
        for btn in self.train_buttons.values():
            btn.setEnabled(not running)
        self.estimate_button.setEnabled(not running)
        self.resume_button.setEnabled(not running)

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
        budget = cfg.get("budget_s") or 0
        if cfg.get("profile") == "tiny":
            self.budget.setCurrentIndex(self.budget.findData("tiny"))
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

    # -- curves ----------------------------------------------------------------------------------
    def _on_job_started(self, what: str) -> None:
        if what == "plan":
            return
        self._series.clear()
        self.loss_plot.clear()
        self.dice_plot.clear()
        self._curves.clear()

    def _on_event(self, event: dict) -> None:
        e = ev.parse(event)
        if isinstance(e, ev.PlanMade):
            self.show_plan(e.plan)
            return
        if not isinstance(e, ev.Progress):
            return
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
        import pyqtgraph as pg

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
        if self.jobs.what == "plan":
            if isinstance(result, dict) and result.get("patch"):
                self.show_plan(result)
            else:
                self.show_plan(None, message=self.jobs.last_error or "planning stopped")
            return
        self._draw_curves()
        if isinstance(result, dict) and result.get("models"):
            self.show_results(result)
        elif self.jobs.last_state == "failed" and self.jobs.last_error:
            self.show_plan(None, message=self.jobs.last_error)

    def _show_last_results(self) -> None:
        ws = self.session.workspace
        if ws is None:
            self.results.setRowCount(0)
            return
        from napari_mtssl import api

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
        and, per task, both modes' validation Dice and the mode kept)."""
        models: dict[str, dict] = report.get("models") or {}
        selected: dict[str, dict] = report.get("selected") or {}

        def fmt(v: float | None) -> str:
            return "" if v is None else f"{float(v):.3f}"

        def dice(name: str) -> str:
            return fmt((models.get(name) or {}).get("mean_dice"))

        rows = [
            [
                f"teacher {t}",
                fmt(s.get("joint")),
                fmt(s.get("pretrain")),
                s.get("mode", ""),
                dice(str(teacher(t))),
            ]  # fmt: skip
            for t, s in selected.items()
        ]
        shown = {str(teacher(t)) for t in selected}
        shown |= {str(trained(t, m)) for t in selected for m in ids.MODES}
        rest = [
            n for n in models if n not in shown and n not in ("baseline", "all_joint", "student")
        ]
        for name in ("baseline", "all_joint", "student", *rest):
            if name in models:
                rows.append([name, "", "", "", dice(name)])
        self.results.setRowCount(len(rows))
        for r, values in enumerate(rows):
            for c, text in enumerate(values):
                self.results.setItem(r, c, QTableWidgetItem(text))
        # how the student compared with the run's baseline, in one line (pipeline.comparison)
        line = (report.get("comparison") or {}).get("line", "")
        self.verdict.setText(line[:1].upper() + line[1:] if line else "")
        self.verdict.setVisible(bool(line))
