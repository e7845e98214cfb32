"""What scripts, the CLI and the widgets call (contract: docs/architecture.md, ``api``).

Importing this module is cheap: torch and the training engine are imported inside the functions
that need them, so napari can import the widgets' modules without paying for torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_mtssl import active, ids, task_needs
from napari_mtssl.events import Event, Events
from napari_mtssl.export import ExportError, check_output
from napari_mtssl.export.model_files import export_bioimageio, export_onnx
from napari_mtssl.export.model_files import import_model as _import
from napari_mtssl.ids import What
from napari_mtssl.training.config import ExperimentConfig, parse_budget
from napari_mtssl.training.config import profile as _profile
from napari_mtssl.training.loop.metrics import dice_per_class
from napari_mtssl.training.running import saved
from napari_mtssl.training.running.jobs import JobHandle, JobWorker

if TYPE_CHECKING:  # pragma: no cover
    from napari_mtssl.io.napari_io import NAMES_KEY, WORKSPACE_KEY
    from napari_mtssl.io.scan import LabelError, Scan, ScanReadError
    from napari_mtssl.training.config import ExperimentConfig
    from napari_mtssl.training.planning.plan import Plan
    from napari_mtssl.training.running.jobs import JobHandle, JobWorker
    from napari_mtssl.workspace import SPLITS, Round, Workspace

__all__ = [
    "TaskInfo",
    "Prediction",
    "Comparison",
    "What",
    "Workspace",
    "Round",
    "SPLITS",
    "Scan",
    "LabelError",
    "ScanReadError",
    "NAMES_KEY",
    "WORKSPACE_KEY",
    "open_workspace",
    "create_workspace",
    "list_tasks",
    "check_tasks",
    "make_config",
    "plan",
    "train",
    "run",
    "start_job",
    "start_plan_job",
    "spare_worker",
    "list_models",
    "predict",
    "compare",
    "accept_correction",
    "propose_slices",
    "history",
    "export_model",
    "import_model",
    "recommended_strategy",
    "run_config",
    "save_labels",
    "patient_of",
    "read_scans",
    "labelled_patients",
    "scan_file_filter",
    "class_features",
    "MODEL_ORDER",
]

JOB_TARGET = "napari_mtssl.training.running.pipeline:run_training_job"
PLAN_TARGET = "napari_mtssl.training.running.pipeline:plan_job"
WARM_ENGINE = "napari_mtssl.training.running.pipeline:import_engine"


def __getattr__(name: str) -> Any:
    """The study's and its files' types and constants (``api.Scan``, ``api.SPLITS``...),
    imported when first asked for: they load the scan readers, which importing the api does
    not."""
    if name in ("Scan", "LabelError", "ScanReadError"):
        from napari_mtssl.io import scan as module  # imported here: it loads the scan readers
    elif name in ("NAMES_KEY", "WORKSPACE_KEY"):  # layer metadata: class names, workspace
        from napari_mtssl.io import napari_io as module  # imported here: it loads the scan readers
    elif name in ("SPLITS", "Round", "Workspace"):
        from napari_mtssl import workspace as module  # imported here: it loads the scan readers
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value


@dataclass(frozen=True)
class TaskInfo:
    name: str
    summary: str  # one line, for the UI checklist
    needs_labels: bool
    level: str  # "encoder" | "dense": which part of the U-Net the task shares
    paper: str = ""
    config: dict = field(default_factory=dict)  # setting -> default


@dataclass
class Prediction:
    labels: np.ndarray  # (z, y, x) uint8 in the scan's own geometry
    probs: np.ndarray  # (C, z, y, x) float32 class probabilities
    model: str
    run: str  # the run whose weights produced it


@dataclass
class Comparison:
    labels: dict[str, np.ndarray]  # model name -> (z, y, x) uint8
    teacher_mean: np.ndarray | None  # (C, z, y, x) mean of the teachers' probabilities
    disagreement: np.ndarray  # (z, y, x) float32, mutual information between teachers (nats)
    slice_scores: np.ndarray  # (z,) float32, mean disagreement per slice
    dice: dict[str, float | None]  # model -> mean foreground Dice on the labelled slices
    labelled_slices: list[int] = field(default_factory=list)
    class_dice: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> class -> Dice
    # the teachers whose masks the disagreement compares: fewer than two means no disagreement
    teachers: list[str] = field(default_factory=list)


def _ws(workspace: Workspace | str | os.PathLike) -> Workspace:
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.workspace import Workspace

    return workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)


def open_workspace(folder: str | os.PathLike) -> Workspace:
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.workspace import Workspace

    return Workspace.open(folder)


def create_workspace(
    folder: str | os.PathLike,
    source: str | os.PathLike | None = None,
    labelled: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> Workspace:
    """A new workspace in ``folder``.

    ``progress(done, total, case)`` is called as each case of a dataset is imported (the
    Study dock shows it; a study of hundreds of scans takes a while).

    ``source``: a dataset folder (Decathlon layout; its train split becomes "train", its val
    split "val"; without splits every case is "train" and training holds out scans), the string
    ``"sample"`` for the built-in synthetic study, or None (empty). ``labelled=N`` keeps the
    labels of the first N training patients (patient: case name before ``_frame``, else the
    case) and leaves the other training scans unlabelled; validation labels are always kept.
    The import itself is :mod:`napari_mtssl.workspace.importing`.
    """
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.workspace import Workspace, importing

    if labelled is not None and int(labelled) < 0:
        raise ValueError(f"labelled must be >= 0, got {labelled}")
    if source is None:
        return Workspace.create(folder)
    if str(source) == "sample":
        # imported here, when needed: it loads the scan readers, scipy
        from napari_mtssl.sample import make_sample_study

        study = make_sample_study(**SAMPLE_STUDY)
        return importing.import_study(folder, study, labelled, n_val=SAMPLE_VAL_SCANS)
    return importing.import_dataset(folder, source, labelled, progress)


# The built-in study ``source="sample"``: 12 varied scans, 2 of the 10 training scans labelled,
# 2 for validation: few labels, as users have them, and enough unlabelled scans for stage 1.
SAMPLE_STUDY = {"n_scans": 12, "n_labelled": 2, "varied": True}
SAMPLE_VAL_SCANS = 2


def patient_of(case: str) -> str:
    """Patient of a dataset case: the name before ``_frame`` (ACDC), else the case itself."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.workspace.importing import patient_of as of

    return of(case)


def read_scans(path: str | os.PathLike) -> list[Scan]:
    """Every scan in a file or folder (NIfTI, DICOM, TIFF/PNG stacks; a DICOM folder gives one
    scan per series), in the canonical ``(z, y, x)`` frame; ScanReadError naming the file."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io import read_scans as read

    return read(path)


def labelled_patients(folder: str | os.PathLike) -> int:
    """How many training patients (:func:`patient_of`) of a dataset folder have labels: what
    ``create_workspace(labelled=N)`` chooses among (the validation split and the held-out
    ``imagesTs/`` left out). Opening the folder fails here, naming the file, for a folder that
    is not a dataset."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.workspace.importing import labelled_training_patients

    return len(labelled_training_patients(folder))


def scan_file_filter() -> str:
    """A file dialog's filter for the scan files the readers open (``Scans (*.nii ...)``)."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io import formats

    return formats.dialog_filter()


def class_features(names: dict[int, str]) -> dict[str, list] | None:
    """A labels layer's ``features`` table naming each class (napari's status bar shows the
    class under the pointer); None without names."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io.napari_io import class_features as features

    return features(names)


def list_tasks() -> list[TaskInfo]:
    # imported here, when needed: it loads torch, MONAI, scipy
    from napari_mtssl.tasks import task_info

    return [
        TaskInfo(
            name=d["name"],
            summary=d["summary"],
            needs_labels=bool(d["needs_labels"]),
            level=d["level"],
            paper=d.get("paper", ""),
            config=dict(d.get("config", {})),
        )
        for d in task_info()
    ]


def check_tasks(
    workspace: Workspace | str, tasks: Sequence[str], config: ExperimentConfig | None = None
) -> dict[str, str | None]:
    """For each task, the reason it cannot run on this workspace's data, or None.

    Without task settings in ``config`` nothing here imports torch: the training dock asks
    this in the viewer's process each time a task is ticked."""
    summary = task_needs.workspace_summary(_ws(workspace))
    if config is None or not config.stage1.task_overrides:
        tbsz = 0 if config is None else config.data.task_batch_size or config.data.batch_size
        return task_needs.check_names(summary, list(tasks), tbsz)
    # imported here, when needed: it loads torch, MONAI, scipy
    from napari_mtssl.training.loop.stages import check_tasks as _check

    return _check(summary, list(tasks), config)


def make_config(
    profile: str = "quick", budget: str | float | None = None, **overrides: Any
) -> ExperimentConfig:
    """A profile with overrides. Profiles are time budgets for the whole run ("quick" 10 min,
    "standard" 1 h, "overnight" 8 h) and "tiny" (a few steps, for tests); ``budget`` replaces
    the profile's ("20m", "1h30m", minutes as a number). Overrides: ``seed=1``,
    ``stage2__alpha=0.3``, ``tasks=["sdm", "rubik"]`` (shortcut for ``stage1__tasks``)."""
    if "tasks" in overrides:
        tasks = overrides.pop("tasks")
        overrides["stage1__tasks"] = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    if budget is not None:
        overrides["budget_s"] = parse_budget(budget)
    return _profile(profile, **overrides)


def plan(
    workspace: Workspace | str,
    config: ExperimentConfig,
    what: What | str = What.ALL,
    *,
    interactive: bool = False,
) -> Plan:
    """The plan a training run would make now (times a few steps on the device): resolution,
    patch, network, precision, the steps of every model and the time estimate. Raises
    ``PlanError`` (a ValueError) with what fits when the budget is too small."""
    w = What.parse(what)  # a wrong one is refused before anything opens
    # imported here, when needed: it loads torch, MONAI, scipy
    from napari_mtssl.training.planning.fingerprint import fingerprint
    from napari_mtssl.training.planning.planner import make_plan
    from napari_mtssl.training.running.pipeline import _fixed_plan

    ws = _ws(workspace)
    return make_plan(fingerprint(ws), config, w, interactive=interactive, fixed=_fixed_plan(ws, w))


def train(
    workspace: Workspace | str,
    config: ExperimentConfig,
    what: What | str = What.ALL,
    *,
    stop: Callable[[], bool] | None = None,
    resume: str | None = None,
    plan: Plan | None = None,
) -> Events[dict]:
    """The training generator: yields events (:mod:`napari_mtssl.events` types: read
    ``e.type``, ``e.model``, ``e.step``...; ``events.describe(e)`` gives the line the CLI
    prints), returns the run's report.
    ``plan``: from :func:`plan`, to keep the shape the user saw (steps are planned again
    once the data are prepared)."""
    w = What.parse(what)  # a wrong one is refused before anything opens
    # imported here, when needed: it loads torch, MONAI, scipy
    from napari_mtssl.training.running.pipeline import run_training

    return run_training(_ws(workspace), config, w, stop=stop, resume=resume, plan=plan)


def run(generator: Events[Any], on_event: Callable[[Event], None] | None = None):
    """Synchronous driver: run ``generator`` to the end, passing each event (an
    :class:`~napari_mtssl.events.Event`) to ``on_event``."""
    while True:
        try:
            ev = next(generator)
        except StopIteration as done:
            return done.value
        if on_event is not None:
            on_event(ev)


def start_job(
    workspace: Workspace | str,
    config: ExperimentConfig,
    what: What | str = What.ALL,
    *,
    resume: str | None = None,
    inline: bool = False,
    plan: dict | None = None,
    worker: JobWorker | None = None,
) -> JobHandle:
    """Training in its own worker process (``inline``: a thread of this one; ``worker``: an
    idle :func:`spare_worker`, which starts it at once). ``plan``: a plan's ``to_dict()``
    (from :func:`start_plan_job`) whose shape the run keeps."""
    w = What.parse(what).value  # the worker process is sent the plain text
    ws = _ws(workspace)
    kwargs: dict[str, Any] = {"workspace": str(ws.root), "config": config.to_dict(), "what": w}
    if resume:
        kwargs["resume"] = resume
    if plan is not None:
        kwargs["plan"] = plan
    return _job(JOB_TARGET, kwargs, inline, worker)


def start_plan_job(
    workspace: Workspace | str,
    config: ExperimentConfig,
    what: What | str = What.ALL,
    *,
    inline: bool = False,
    worker: JobWorker | None = None,
) -> JobHandle:
    """:func:`plan` in a worker process (the viewer never imports torch); its result is the
    plan's ``to_dict()``."""
    w = What.parse(what).value  # the worker process is sent the plain text
    ws = _ws(workspace)
    kwargs = {"workspace": str(ws.root), "config": config.to_dict(), "what": w}
    return _job(PLAN_TARGET, kwargs, inline, worker)


def spare_worker() -> JobWorker:
    """A worker process started ahead of a job: it imports the engine (seconds) while it waits,
    so that a job given to it (``start_job(..., worker=...)``) starts in a fraction of a second.
    It runs the jobs submitted to it one after another; ``close()`` it when it is not used."""
    return JobWorker(warm=(WARM_ENGINE, {}))


def _job(target: str, kwargs: dict, inline: bool, worker: JobWorker | None) -> JobHandle:
    if worker is not None and not inline:
        worker.submit(target, kwargs)
        return worker
    return JobHandle(target, kwargs, inline=inline)


MODEL_ORDER = saved.MODEL_ORDER


def list_models(workspace: Workspace | str) -> list[str]:
    """Models users can predict with: every model a run finished, including the finished
    models of a run that was stopped (the newest run holding a name provides its weights)."""
    return saved.list_models(_ws(workspace))


def _scan_and_truth(ws: Workspace, scan: Scan | str):
    if isinstance(scan, str):
        s = ws.load_scan(scan)
        labelled = ws.labelled_slices(scan)
        truth = ws.labels(scan) if labelled else None
        return s, truth, labelled
    return scan, None, []


def predict(
    workspace: Workspace | str, scan: Scan | str, model: str = "student", device: str = "auto"
) -> Prediction:
    """Segment a whole scan (a Scan or a scan id) with a trained model, in its own geometry:
    sliding windows at the model's planned resolution, mapped back onto the scan's grid."""
    # imported here, when needed: it loads torch
    from napari_mtssl.training.prediction.inference import resolve_device

    ws = _ws(workspace)
    s, _, _ = _scan_and_truth(ws, scan)
    dev = resolve_device(device)
    m = saved.load(ws, model, dev)
    labels, probs = m.predict(s, dev)
    return Prediction(labels=labels, probs=probs, model=model, run=m.run)


def compare(
    workspace: Workspace | str,
    scan: Scan | str,
    models: Sequence[str] | None = None,
    device: str = "auto",
) -> Comparison:
    """Every model's labels for a scan, the teachers' mean and where the teachers disagree."""
    # imported here, when needed: it loads torch
    from napari_mtssl.training.prediction.inference import (
        disagreement,
        ensemble_mean,
        resolve_device,
        slice_scores,
    )

    ws = _ws(workspace)
    s, truth, labelled = _scan_and_truth(ws, scan)
    dev = resolve_device(device)
    available = list_models(ws)
    wanted = list(models) if models is not None else available
    teachers = ids.teachers(available)
    todo = list(dict.fromkeys([*wanted, *teachers]))
    labels: dict[str, np.ndarray] = {}
    probs: dict[str, np.ndarray] = {}
    prepared: dict = {}  # one preprocessed volume for all models that share the plan
    for m in todo:
        labels[m], probs[m] = saved.load(ws, m, dev).predict(s, dev, prepared)
    t_probs = [probs[t] for t in teachers]
    if t_probs:
        mean = ensemble_mean(t_probs)
        dis = disagreement(t_probs) if len(t_probs) > 1 else np.zeros(s.shape, np.float32)
    else:
        mean, dis = None, np.zeros(s.shape, np.float32)
    dice: dict[str, float | None] = {}
    class_dice: dict[str, dict[str, float]] = {}
    nc = int(ws.num_classes)
    names = dict(ws.label_names)
    for m in wanted:
        if truth is None or not labelled:
            dice[m] = None
        else:
            d = dice_per_class(labels[m][labelled], truth[labelled], nc)
            dice[m] = float(d.mean()) if d.size else None
            class_dice[m] = {names.get(c, f"class {c}"): float(d[c - 1]) for c in range(1, nc)}
    return Comparison(
        labels={m: labels[m] for m in wanted},
        teacher_mean=mean,
        disagreement=dis,
        slice_scores=slice_scores(dis),
        dice=dice,
        labelled_slices=list(labelled),
        class_dice=class_dice,
        teachers=list(teachers),
    )


def accept_correction(
    workspace: Workspace | str,
    scan_id: str,
    labels: np.ndarray,
    slices: Sequence[int],
    by: str = "user",
    effort_s: dict[int, float] | None = None,
) -> None:
    """Store corrected slices (status "corrected") in the current round; they train the next.
    ``effort_s``: seconds a person spent on each slice (from showing it to accepting it), kept
    in its provenance, so the history shows the effort behind each round."""
    ws = _ws(workspace)
    details = {int(z): {"effort_s": round(float(s), 1)} for z, s in (effort_s or {}).items()}
    ws.set_labels(
        scan_id,
        np.asarray(labels),
        slices=list(slices),
        status="corrected",
        by=by,
        round=ws.current_round,
        details=details or None,
    )


def propose_slices(
    workspace: Workspace | str,
    k: int = 10,
    strategy: str | None = None,
    *,
    scans: Sequence[str] | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    max_scans: int | None = None,
) -> list:
    """The ``k`` unlabelled training slices most worth correcting next, best first, each a
    ``Candidate(scan, z, score, reason)``. ``strategy``: disagreement, entropy, random or
    fg_random (default: the one the simulated annotator measured best, ``active.RECOMMENDED``).
    Predicts the candidate scans with the student (the baseline until there is one; the
    teachers for disagreement): every one, or at most ``max_scans`` drawn at random.
    ``progress(i, n, scan)`` may raise :class:`napari_mtssl.events.Cancelled` to stop the
    ranking."""
    return active.propose(
        _ws(workspace),
        k,
        strategy,
        scans=scans,
        device=device,
        seed=seed,
        progress=progress,
        max_scans=max_scans,
    )


def recommended_strategy() -> tuple[str, str]:
    """The slice-proposal strategy the simulated annotator measured best, and why."""
    return active.RECOMMENDED, active.RECOMMENDED_WHY


def save_labels(workspace: Workspace | str, folder: str | os.PathLike) -> list[str]:
    """Every labelled scan's stored labels into ``folder``: ``<scan>_labels.dcm`` (DICOM-SEG,
    its segments coded by the workspace's ``segment_codes.json``) for DICOM scans,
    ``<scan>_labels.nii.gz`` in the scan's geometry for the others. An existing file is never
    replaced (ValueError naming it). Returns the paths written."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io import write_labels

    ws = _ws(workspace)
    written = []
    for sid in ws.scan_ids():
        if not ws.labelled_slices(sid):
            continue
        scan = ws.load_scan(sid)
        labels = np.asarray(ws.labels(sid))
        if scan.meta.get("format") == "dicom":
            # imported here, when needed: it loads the scan readers
            from napari_mtssl.export.dicomseg import workspace_codes, write_dicom_seg

            out = check_output(Path(folder) / f"{sid}_labels.dcm")
            names = dict(ws.label_names)
            codes = workspace_codes(ws.root, names)
            write_dicom_seg(labels, scan.meta, out, label_names=names, codes=codes)
        else:
            out = check_output(Path(folder) / f"{sid}_labels.nii.gz")
            write_labels(labels, out, like=scan)
        written.append(str(out))
    return written


def run_config(run: Any) -> ExperimentConfig:
    """The configuration ``run`` (a workspace's run) was started with."""
    return ExperimentConfig.from_dict(run.config)


def export_model(
    workspace: Workspace | str,
    model: str = "student",
    fmt: str = "onnx",
    out: str | os.PathLike = "model.onnx",
    *,
    force: bool = False,
    license: str = "CC-BY-4.0",
) -> Path:
    """A trained model as ``onnx`` (metadata: preprocessing, patch, classes, provenance) or a
    ``bioimageio`` model package (zip, validated by bioimageio.spec)."""
    # imported here, when needed: it loads torch
    from napari_mtssl.training.loop import checkpoints

    ws = _ws(workspace)
    if fmt not in ("onnx", "bioimageio"):
        raise ExportError(f"format must be onnx or bioimageio, got {fmt!r}")
    dest = check_output(out, force=force)
    r = saved.model_run(ws, model, ExportError)
    net, meta = checkpoints.load_model(r.model_path(model))
    extra = {"workspace": ws.root.name, "round": r.round, "run": r.id, "name": model}
    if fmt == "onnx":
        return export_onnx(net, meta, dest, extra=extra)
    plan = None
    if (r.path / "plan.json").is_file():
        plan = json.loads((r.path / "plan.json").read_text())
    image = _test_slice(ws, meta)
    train = [ws.record(s).name for s in ws.scan_ids("train")]
    lab = [s for s in ws.scan_ids("train") if ws.labelled_slices(s)]
    data = (
        f"{len(train)} training scans ({len(lab)} with labels) and "
        f"{len(ws.scan_ids('val'))} validation scans of the workspace {ws.root.name}; classes "
        f"{dict(ws.label_names)}"
    )
    return export_bioimageio(
        net,
        {**meta, **extra},
        dest,
        test_image=image,
        plan=plan,
        data_description=data,
        license=license,
    )


def _test_slice(ws: Workspace, meta: dict) -> np.ndarray:
    """A normalised middle slice of a labelled scan at the model's planned grid."""
    # imported here, when needed: it loads torch, MONAI, scipy
    from napari_mtssl.training.data.preprocess import Preprocessing
    from napari_mtssl.training.data.slices import prepare_volume

    ids = [s for s in ws.scan_ids("val") if ws.labelled_slices(s)] or ws.scan_ids()
    scan = ws.load_scan(ids[0])
    vol, _ = prepare_volume(
        scan.array, scan.spacing, scan.modality, Preprocessing.from_dict(meta["preprocessing"])
    )
    return vol[vol.shape[0] // 2]


def import_model(workspace: Workspace | str, path: str | os.PathLike, name: str = "student") -> str:
    """An ONNX model or bioimage.io package exported by napari-mtssl becomes model ``name``
    (``student``, ``teacher:<task>``, ...) of a new run of the workspace; returns the run id."""
    mid = ids.ModelId.parse(name) if ids.ModelId.is_valid(name) else None
    if mid is None or not (mid in (ids.STUDENT, ids.BASELINE) or mid.is_teacher):
        raise ValueError(
            f"import a model as 'student', 'baseline' or 'teacher:<task>', not {name!r}"
        )
    return _import(_ws(workspace), Path(path), name)


def history(workspace: Workspace | str) -> list[Round]:
    """Rounds, oldest first: what was trained, when, on which corrections, and each model's
    scores (:class:`~napari_mtssl.workspace.Round`)."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.workspace import Round

    return [
        Round.from_dict(e, i) for i, e in enumerate(_ws(workspace).rounds()) if isinstance(e, dict)
    ]
