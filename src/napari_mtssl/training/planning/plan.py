"""The plan of a run: what the data and the machine allow in the user's time budget.

nnU-Net's experiment planning, for 2D slices and a wall-clock budget instead of a GPU's
memory. Three steps, each saved with the run (``plan.json``) and shown before training:

1. **Fingerprint** (:func:`fingerprint`): in-plane spacings and sizes, slice spacing and counts,
   modalities with the intensity statistics CT normalisation needs, class frequencies, labelled
   and unlabelled slice counts. Read from the workspace records and labels; CT scans with labels
   are read once and their statistics cached.
2. **Shape** (:func:`shape_plan`): target in-plane spacing (the median), patch size, network
   width and depth, batch size, normalisation per modality, precision and threads. A candidate
   ladder is priced with the network's FLOPs and the device's measured speed: the planner keeps
   the finest resolution whose patch covers most of a slice and gives every model enough steps,
   then spends what is left on a wider network. Every choice has its reason in ``reasons``.
3. **Budget** (:func:`.planner.allocate`, with :func:`.planner.make_plan` the entry point): a few real steps of each kind of model are timed on the
   device (segmentation, each task, a forward pass for distillation and validation), and the
   budget is shared so that every model of the run (baseline, each task in each mode, the
   student) gets the same number of segmentation steps, with successive halving and cached
   pre-training counted. A budget too small for the chosen tasks is refused with what fits.

Any field the user set in the config wins over the plan (``overridden`` lists them).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_mtssl._atomic import atomic_write_json
from napari_mtssl.ids import STUDENT, ModelId, What, trained
from napari_mtssl.training.config import ExperimentConfig, format_budget
from napari_mtssl.training.data.preprocess import NormSpec, Preprocessing, content_hash
from napari_mtssl.training.loop.pace import machine_busy_s, recent_busy_cores
from napari_mtssl.training.prediction import inference

__all__ = [
    "Fingerprint",
    "Plan",
    "PlanError",
    "fingerprint",
    "shape_plan",
    "explicit_steps",
    "model_units",
    "MIN_STEPS",
    "GOOD_STEPS",
]

# Segmentation steps per model: below MIN_STEPS the planner refuses the budget (it says what
# fits instead); below GOOD_STEPS it keeps the cheapest shape that covers enough of a slice
# rather than a larger patch or a wider network. Measured on ACDC (docs/benchmarks.md,
# "Choosing the plan"): at L = 7, for the same 20 minutes of one core, 128 px patches with
# 4300 steps reached 0.835 mean Dice, 96 px with 6500 steps 0.830, 160 px with 3000 0.803.
MIN_STEPS = 300
# A quick retrain fine-tunes a trained student: a couple of hundred steps already move it (the
# simulated annotator, docs/benchmarks.md); 300 refused the correction dock's 3 minutes at one
# thread of a 2-core laptop (about 210 steps).
MIN_RETRAIN_STEPS = 100
GOOD_STEPS = 4000
# Below this many steps per model, joint training has not paid on the data measured (ACDC, 3
# labelled patients: pre-training won for every task at 2207 steps, docs/benchmarks.md), so
# `stage1.modes = "auto"` trains the pre-training mode only and the time goes to the student.
JOINT_PAYS_STEPS = 4000
COVERAGE = 0.5  # a patch should span at least this share of the median slice's longer side
MAX_COARSEN = 4.0  # never resample coarser than four times the median spacing
CPU_WIDTHS = (16, 24, 32)
GPU_WIDTHS = (32, 48)
CPU_PATCH_MAX = 256
GPU_PATCH_MAX = 512
TASK_COST_GUESS = 1.0  # a task step costs about one segmentation step (before timing)
# Validation passes per model: halfway (the curve in the dock; the halving point in stage 1)
# and the final report. A pass over ACDC's 20 validation volumes costs about 25 seg steps.
EVALS = 2
OVERHEAD_S = 3.0  # per run: loading teachers, writing the report (data preparation is timed)
OVERHEAD_PER_MODEL_S = 1.0  # saving the model and its checkpoint
# Below this budget a run trains one unit at a time without pricing side by side: timing the
# steps beside other processes (starting them) takes 5 to 10 seconds.
SIDE_MIN_BUDGET_S = 300.0


class PlanError(ValueError):
    """The budget or the data do not allow a run; the message says what would."""


# -- fingerprint -------------------------------------------------------------------------------


@dataclass
class Fingerprint:
    """What the planner knows about a study (all JSON-able)."""

    n_train: int
    n_val: int
    n_labelled_scans: int
    labelled_slices: int
    unlabelled_slices: int
    spacing: tuple[float, float]  # median in-plane (y, x) mm of the training scans
    spacing_range: tuple[float, float]  # smallest and largest in-plane spacing
    size: tuple[int, int]  # median in-plane (h, w) in voxels
    size_range: tuple[int, int]  # smallest and largest in-plane side
    slice_spacing: float  # median
    slices: tuple[int, int, int]  # min, median, max slices per scan
    modalities: dict[str, int]
    intensity: dict[str, dict[str, float]]  # modality -> CT statistics of labelled foreground
    class_freq: dict[str, float]  # class id -> share of labelled voxels
    num_classes: int
    val_shapes: list[tuple[int, int, int]]  # (z, h, w) of the validation scans (their cost)
    spacing_known: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        d = dict(d)
        for k in ("spacing", "spacing_range", "size", "size_range", "slices"):
            d[k] = tuple(d[k])
        d["val_shapes"] = [tuple(x) for x in d.get("val_shapes", [])]
        return cls(**d)


def fingerprint(ws: Any, *, stats_cache: bool = True) -> Fingerprint:
    """The fingerprint of a workspace's training and validation scans."""
    train = ws.scan_ids("train")
    val = [s for s in ws.scan_ids("val") if ws.labelled_slices(s)]
    if not train:
        raise PlanError("the workspace has no training scans; add scans first")
    recs = {s: ws.record(s) for s in [*train, *val]}
    sp = np.array([[float(recs[s].spacing[1]), float(recs[s].spacing[2])] for s in train])
    sp = np.where(np.isfinite(sp) & (sp > 0), sp, 1.0)
    shapes = np.array([[int(recs[s].shape[1]), int(recs[s].shape[2])] for s in train])
    nz = np.array([int(recs[s].shape[0]) for s in train])
    zsp = np.array([float(recs[s].spacing[0]) for s in train])
    mods: dict[str, int] = {}
    for s in train:
        m = str(recs[s].modality or "unknown").upper()
        mods[m] = mods.get(m, 0) + 1
    nl = 0
    counts = np.zeros(int(ws.num_classes), np.int64)
    ct_samples: list[np.ndarray] = []
    labelled_scans = 0
    rng = np.random.default_rng(0)
    for s in train:
        zs = ws.labelled_slices(s)
        if not zs:
            continue
        labelled_scans += 1
        nl += len(zs)
        lab = ws.labels(s)[zs]
        counts += np.bincount(lab.reshape(-1), minlength=len(counts))[: len(counts)]
        if str(recs[s].modality).upper() == "CT":
            ct_samples.append(_ct_foreground(ws, s, lab, zs, rng, stats_cache))
    notes = []
    known = not bool(np.all(sp == 1.0) and np.all(zsp == 1.0))
    if not known:
        notes.append(
            "every scan has 1 mm voxels: the files probably record no spacing, so sizes are "
            "in pixels"
        )
    intensity = _ct_intensity(ct_samples)
    total = max(1, int(counts.sum()))
    return Fingerprint(
        n_train=len(train),
        n_val=len(val),
        n_labelled_scans=labelled_scans,
        labelled_slices=nl,
        unlabelled_slices=int(nz.sum()) - nl,
        spacing=(float(np.median(sp[:, 0])), float(np.median(sp[:, 1]))),
        spacing_range=(float(sp.min()), float(sp.max())),
        size=(int(np.median(shapes[:, 0])), int(np.median(shapes[:, 1]))),
        size_range=(int(shapes.min()), int(shapes.max())),
        slice_spacing=float(np.median(zsp)),
        slices=(int(nz.min()), int(np.median(nz)), int(nz.max())),
        modalities=mods,
        intensity=intensity,
        class_freq={str(i): round(float(n) / total, 6) for i, n in enumerate(counts)},
        num_classes=int(ws.num_classes),
        val_shapes=[tuple(int(x) for x in recs[s].shape) for s in val],
        spacing_known=known,
        notes=notes,
    )


def _ct_intensity(samples: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """CT's foreground intensity statistics (nnU-Net's: percentiles 0.5 and 99.5, and the mean
    and standard deviation within them), where there are CT samples."""
    if not samples or not sum(len(c) for c in samples):
        return {}
    v = np.concatenate(samples)
    lo, hi = np.percentile(v, [0.5, 99.5])
    c = np.clip(v, lo, hi)
    return {
        "CT": {
            "p0.5": float(lo),
            "p99.5": float(hi),
            "mean": float(c.mean()),
            "std": float(c.std()),
            "n": int(v.size),
        }
    }


def _ct_foreground(ws, sid, lab, zs, rng, use_cache: bool) -> np.ndarray:
    """Up to 20 000 intensities of the labelled foreground of a CT scan (cached per scan and
    label content: reading a large CT is the slow part of fingerprinting)."""

    key = f"{ws.record(sid).sha256[:24]}_{content_hash(lab)[:16]}"
    path = ws.root / "cache" / "fingerprint" / f"{key}.json"
    if use_cache and path.is_file():
        try:
            got = json.loads(path.read_text())
        except (OSError, ValueError):
            got = None
        if isinstance(got, list):
            return np.asarray(got, np.float32)
    img = ws.load_scan(sid).array[zs]
    v = img[lab > 0].astype(np.float32)
    v = v[np.isfinite(v)]
    if v.size > 20_000:
        v = v[rng.choice(v.size, 20_000, replace=False)]
    if use_cache:
        try:
            atomic_write_json(path, [round(float(x), 3) for x in v])
        except OSError:
            pass  # a read-only workspace only loses the cache
    return v


# -- the plan ----------------------------------------------------------------------------------


@dataclass
class Plan:
    """The planner's choices for one run; ``apply`` turns them into a concrete config."""

    device: str
    threads: int
    precision: str
    spacing: tuple[float, float] | None
    patch: int
    width: int
    depth: int
    batch_size: int
    norms: dict[str, dict[str, Any]]
    budget_s: float = 0.0
    models: list[str] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)  # seg / pretext / student / retrain
    estimate_s: dict[str, float] = field(default_factory=dict)  # per model + "total"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step, measured
    reasons: list[str] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    lanes: int = 1  # units a budgeted run trains at once (priced that way by allocate)
    lanes_why: str = ""
    modes: str = ""  # stage 1's modes the planner chose for `stage1.modes = "auto"`
    # the most CPU threads a unit may move to when cores free up (the plan's thread policy);
    # 0: the threads stay as they are (the user set them, or a GPU does the work)
    threads_max: int = 0
    # {"tasks", "steps", "why"}: the budget was too short for teachers (allocate), so the run
    # trains the baseline and the student only; empty: the tasks train as configured
    teachers_skipped: dict[str, Any] = field(default_factory=dict)
    what: str = ""  # what the run trains (ids.What): a quick retrain's student steps "retrain"

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            spacing=None if self.spacing is None else tuple(self.spacing),  # type: ignore[arg-type]
            norms={k: NormSpec(**v) for k, v in self.norms.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        if d.get("spacing") is not None:
            d["spacing"] = tuple(d["spacing"])
        if _OLD_RETRAIN in d.get("models", ()):  # written before a retrain was a stage
            d["models"] = ["student" if m == _OLD_RETRAIN else m for m in d["models"]]
            d["estimate_s"] = {
                "student" if k == _OLD_RETRAIN else k: v for k, v in d["estimate_s"].items()
            }
            d["what"] = str(What.RETRAIN_QUICK)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def apply(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """A copy of ``cfg`` with every planned field filled in (fields the user set stay)."""
        c = ExperimentConfig.from_dict(cfg.to_dict())
        c.data.patch_size = c.data.patch_size or self.patch
        c.data.batch_size = c.data.batch_size or self.batch_size
        c.model.width = c.model.width or self.width
        c.model.depth = c.model.depth or self.depth
        c.optim.precision = self.precision
        c.num_threads = c.num_threads or self.threads
        if c.stage1.modes == "auto" and self.modes:
            c.stage1.modes = self.modes
        if self.teachers_skipped:
            gone = set(self.teachers_skipped.get("tasks", []))
            c.stage1.tasks = [t for t in c.stage1.tasks if t not in gone]
            c.stage1.lambda_ = {t: v for t, v in c.stage1.lambda_.items() if t not in gone}
        self._apply_steps(c)
        c.stage1.task_overrides = task_shape_overrides(
            c.stage1.tasks, c.stage1.task_overrides, c.data.patch_size, c.model.depth
        )
        return c.validate()

    def _apply_steps(self, c: ExperimentConfig) -> None:
        """Fill ``c``'s step counts from the plan's (in place; counts the user set stay)."""
        st = self.steps
        if "seg" in st:
            c.baseline.steps = c.baseline.steps or st["seg"]
            c.stage1.joint_steps = c.stage1.joint_steps or st["seg"]
            c.stage1.finetune_steps = c.stage1.finetune_steps or st["seg"]
            if self.budget_s > 0 and not st.get("halving_at") and not c.stage1.eval_every:
                c.stage1.eval_every = st["seg"]  # nothing to decide halfway: one validation
        if "pretext" in st:
            c.stage1.pretrain_steps = c.stage1.pretrain_steps or st["pretext"]
        if "student" in st:
            c.stage2.steps = c.stage2.steps or st["student"]
        if "retrain" in st:
            c.stage2.retrain_steps = c.stage2.retrain_steps or st["retrain"]

    def describe(self) -> list[str]:
        """Markdown lines: the choices, the reasons and the per-model steps."""
        sp = "each scan's own spacing" if self.spacing is None else f"{self.spacing[0]:.3g} mm"
        lines = [
            f"- **{self.patch} x {self.patch} patches at {sp}**, U-Net width {self.width}, "
            f"depth {self.depth}, batch {self.batch_size}, {self.precision} on {self.device} "
            f"({self.threads} thread{'s' if self.threads != 1 else ''})",
        ]
        lines += [f"- {r}" for r in self.reasons]
        if self.teachers_skipped:
            lines.append(f"- {self.teachers_skipped['why']}")
        if self.budget_s:
            lines.append(
                f"- budget {format_budget(self.budget_s)}: estimated "
                f"{format_budget(self.estimate_s.get('total', 0.0))} for "
                f"{len(self.models)} model(s)"
            )
        if self.lanes_why:
            how = f"{self.lanes} units at once" if self.lanes > 1 else "one unit at a time"
            lines.append(f"- {how}: {self.lanes_why}")
        for w in self.warnings:
            lines.append(f"- note: {w}")
        return lines

    def step_table(self) -> list[tuple[str, str, str]]:
        """(model, steps, estimated time) rows for the dock and the report."""
        rows = []
        for m in self.models:
            n = self.steps.get(_step_key(m, self.what), 0)
            extra = ""
            if _mode_of(m) == "pretrain":
                extra = f" + {self.steps.get('pretext', 0)} pre-training"
            rows.append((m, f"{n}{extra}", format_budget(self.estimate_s.get(m, 0.0))))
        return rows


def task_shape_overrides(
    tasks: Sequence[str], overrides: dict[str, dict[str, Any]], patch: int, depth: int
) -> dict[str, dict[str, Any]]:
    """Task crop sizes that fit the plan: no larger than the patch the crops are cut from, and
    a multiple of what the network's depth needs (Rubik's quarters each go through the
    encoder). A crop size the user set is kept."""
    # imported here, when needed: it loads MONAI, scipy
    from napari_mtssl.tasks import task_class

    out = {k: dict(v) for k, v in overrides.items()}
    for name in tasks:
        try:
            cls = task_class(name)
        except ValueError:
            continue
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        if "crop_size" not in fields or "crop_size" in out.get(name, {}):
            continue
        default = int(fields["crop_size"].default)
        unit = max(16, 2**depth) * (2 if name == "rubik" else 1)
        crop = min(default, patch) // unit * unit
        if crop >= 2 * unit and crop != default:
            out.setdefault(name, {})["crop_size"] = int(crop)
    return out


_OLD_RETRAIN = "student (retrain)"  # a quick retrain's unit in plans of earlier versions


def _step_key(model: str, what: str) -> str:
    """The key of :attr:`Plan.steps` that counts ``model``'s steps in a run of ``what``."""
    if model != "student":
        return "seg"
    return "retrain" if what == What.RETRAIN_QUICK else "student"


# -- shaping -----------------------------------------------------------------------------------


def _mode_of(unit: str) -> str | None:
    """The mode of a task's model (``joint`` / ``pretrain``); None for the other units."""
    return ModelId.parse(unit).mode


def model_units(what: str, cfg: ExperimentConfig) -> list[str]:
    """The models a run of ``what`` trains, in order (also the budget's shares); a quick
    retrain's one model is the student (its stage, not its name, says it is a retrain)."""
    units: list[str] = []
    w = What.parse(what)
    if w.trains_baseline:
        units.append("baseline")
    if w.trains_teachers:
        for t in cfg.stage1.tasks:
            if cfg.stage1.modes in ("joint", "both", "auto"):
                units.append(str(trained(t, "joint")))
            if cfg.stage1.modes in ("pretrain", "both", "auto"):
                units.append(str(trained(t, "pretrain")))
        if cfg.all_joint and len(cfg.stage1.tasks) > 1:
            units.append("all_joint")
    if w.trains_student:
        units.append("student")
    if w == What.RETRAIN_QUICK:
        units.append(str(STUDENT))
    return units


def _ceil_to(x: float, m: int) -> int:
    return int(math.ceil(x / m) * m)


def _depth_for(patch: int) -> int:
    """Poolings until the bottleneck is 8 to 16 pixels (nnU-Net stops at 4 to 8 for larger
    networks; a CPU budget favours the cheaper, shallower end)."""
    return int(np.clip(math.floor(math.log2(max(patch, 16) / 8)), 3, 6))


def _flops_per_sample(width: int, depth: int, patch: int, out_channels: int) -> float:
    """Forward FLOPs of the U-Net for one ``patch`` x ``patch`` sample (counted once per
    width and depth at a small size, then scaled by area: every layer is convolutional)."""
    return _flops_small(width, depth, out_channels) * (patch / (2**depth * 4)) ** 2


_FLOPS_CACHE: dict[tuple[int, int, int], float] = {}


def _flops_small(width: int, depth: int, out_channels: int) -> float:
    key = (width, depth, out_channels)
    if key not in _FLOPS_CACHE:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        # imported here, when needed: it loads MONAI
        from napari_mtssl.models import build_unet

        net = build_unet(1, out_channels, width, depth=depth)
        x = torch.zeros(1, 1, 2**depth * 4, 2**depth * 4)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            net(x)
        _FLOPS_CACHE[key] = float(fc.get_total_flops())
    return _FLOPS_CACHE[key]


def _norms(fp: Fingerprint, cfg: ExperimentConfig) -> tuple[dict[str, dict], list[str]]:
    d = cfg.data
    reasons = []
    zs = NormSpec("zscore", d.clip_low, d.clip_high)
    window = NormSpec(
        "window", lower=d.ct_level - d.ct_width / 2, upper=d.ct_level + d.ct_width / 2
    )
    forced = {"zscore": zs, "mri": zs, "window": window, "none": NormSpec("none")}
    norms: dict[str, NormSpec] = {}
    mods = sorted(fp.modalities) or ["UNKNOWN"]
    for m in mods:
        if d.normalisation in forced:
            norms[m] = forced[d.normalisation]
        elif m == "CT" and d.normalisation in ("auto", "ct"):
            st = fp.intensity.get("CT")
            if st:
                norms[m] = NormSpec(
                    "ct", lower=st["p0.5"], upper=st["p99.5"], mean=st["mean"], std=st["std"]
                )
            else:
                norms[m] = window
                reasons.append(
                    "CT without labelled foreground to learn intensities from: fixed window "
                    f"[{window.lower:.0f}, {window.upper:.0f}] HU"
                )
        elif d.normalisation == "ct":
            norms[m] = window
        else:
            norms[m] = zs
    default = norms[max(mods, key=lambda m: fp.modalities.get(m, 0))]
    out = {k: dataclasses.asdict(v) for k, v in norms.items()}
    out["default"] = dataclasses.asdict(default)
    for m in mods:
        who = {"CT": "CT", "MR": "MR"}.get(m, f"{m.lower()}-modality" if m != "UNKNOWN" else "")
        who = f"{who} scans" if who else "scans of unknown modality"
        reasons.append(f"{who}: {norms[m].describe()}")
    return out, reasons


def shape_plan(
    fp: Fingerprint,
    cfg: ExperimentConfig,
    what: str = "all",
    *,
    device: Any = None,
    probe: bool = True,
    interactive: bool = False,
    fixed: Plan | None = None,
    planner: type[ShapePlanner] | None = None,
) -> Plan:
    """Shape the run for ``fp`` on ``device``: spacing, patch, network, batch, precision and
    threads, each with its reason; the steps only where ``cfg`` gives them (no budget).
    :func:`.planner.make_plan` then shares a budget across the models.

    ``interactive``: the job shares the machine with a viewer, so one core is left free.
    ``fixed``: a plan whose data shape must be kept (stage 2 and retraining reuse the teachers'
    spacing, patch and network); only the steps are planned again.
    ``planner``: a :class:`ShapePlanner` subclass whose steps decide the shape differently.
    """
    with _Ahead.lock:  # a timing ahead in progress ends first; none begins after this plan
        _Ahead.closed = True
        return _shape_plan(fp, cfg, what, device, probe, interactive, fixed, planner)


def _shape_plan(
    fp: Fingerprint,
    cfg: ExperimentConfig,
    what: str,
    device: Any,
    probe: bool,
    interactive: bool,
    fixed: Plan | None,
    planner: type[ShapePlanner] | None,
) -> Plan:
    import torch

    dev = (
        device
        if isinstance(device, torch.device)
        else inference.resolve_device(device or cfg.device)
    )
    m = cfg.model
    overridden = _overridden(cfg)
    reasons: list[str] = []
    warnings = list(fp.notes)
    # Measured for each plan: a process that plans again later (a script's second run, a
    # retrain) must see the machine as it is then, not as it was at its first plan.
    busy = _busy_cores() if dev.type == "cpu" and not cfg.num_threads else 0.0
    threads = cfg.num_threads or _thread_policy(dev, interactive, busy)
    if dev.type == "cpu":
        torch.set_num_threads(threads)
        if not cfg.num_threads:
            reasons.append(_threads_reason(threads, interactive, busy))
    precision = inference.resolve_precision(dev, cfg.optim.precision)
    if cfg.optim.precision == "auto" and dev.type == "cpu":
        sp = inference.cpu_bf16_speedup()
        reasons.append(
            f"{precision}: a training step under bf16 autocast ran {sp:.2f}x the speed of fp32 "
            "on this CPU" + ("" if precision == "bf16" else " (not faster, so fp32)")
        )
    norms, nreasons = _norms(fp, cfg)
    reasons += nreasons
    out_ch = 1 if fp.num_classes == 2 and m.binary_sigmoid else fp.num_classes

    if fixed is not None:
        plan = dataclasses.replace(
            fixed,
            device=str(dev),
            threads=threads,
            precision=precision,
            budget_s=cfg.budget_s,
            reasons=[*fixed.reasons],
            warnings=warnings,
            overridden=overridden,
            fingerprint=fp.to_dict(),
            steps={},
            estimate_s={},
            timings={},
            teachers_skipped={},  # decided again for this run (allocate)
        )
    else:
        shaper = (planner or ShapePlanner)(fp, cfg, what, dev, precision, out_ch, probe=probe)
        plan = shaper.plan(threads, precision, norms, reasons)
        plan.overridden = overridden
        plan.warnings = warnings + plan.warnings
        plan.fingerprint = fp.to_dict()
    plan.models = model_units(what, cfg)
    plan.what = str(What.parse(what))
    plan.threads_max = _threads_max(dev, interactive) if not cfg.num_threads else 0
    if cfg.budget_s <= 0:
        plan.steps = explicit_steps(cfg, what)
    return plan


def _overridden(cfg: ExperimentConfig) -> list[str]:
    out = []
    for name, value in (
        ("data.target_spacing", cfg.data.target_spacing),
        ("data.patch_size", cfg.data.patch_size),
        ("data.batch_size", cfg.data.batch_size),
        ("model.width", cfg.model.width),
        ("model.depth", cfg.model.depth),
        ("num_threads", cfg.num_threads),
    ):
        if value:
            out.append(name)
    if cfg.optim.precision != "auto":
        out.append("optim.precision")
    return out


def _threads_reason(threads: int, interactive: bool, busy: float) -> str:
    cpus = os.cpu_count() or 1
    why = "one core left to the viewer" if interactive else "the cores other work leaves free"
    return (
        f"{threads} of {cpus} CPU thread{'s' if cpus > 1 else ''} ({why}; other processes kept "
        f"{busy:.1f} core(s) busy)"
    )


def _busy_cores(window_s: float = 0.5) -> float:
    """Cores kept busy by other processes right now: in a process that keeps a load history
    (the viewer's spare worker, :func:`~napari_mtssl.training.loop.pace.watch_load`), its last
    windows; else the machine's CPU time over a short window while this process sleeps
    (:func:`~napari_mtssl.training.loop.pace.machine_busy_s`: work at lowered priority, which
    yields to this job, does not count); where the platform gives no CPU times, the one-minute
    load average. Measured anew at each call (once per plan: the plan's threads and its reason
    use the same figure)."""
    recent = recent_busy_cores()
    if recent is not None:
        return recent

    def window() -> float | None:
        try:
            a, ta = machine_busy_s(), time.monotonic()
            time.sleep(window_s)
            b, tb = machine_busy_s(), time.monotonic()
        except OSError:
            return None
        return (b - a) / (tb - ta) if tb > ta else 0.0

    # Two windows a little apart, and the quieter one: a burst (a program starting, a file
    # being written) is not the sustained load that would slow the run down.
    first = window()
    if first is None:
        try:
            busy = float(os.getloadavg()[0])
        except (AttributeError, OSError):
            busy = 0.0
    else:
        time.sleep(0.3)
        busy = min(first, window() or 0.0)
    return max(0.0, busy)


def usable_cpus() -> int:
    """The CPU cores this process may run on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return int(cpus or 1)


def _thread_policy(dev: Any, interactive: bool, busy: float) -> int:
    """Every free core for a headless run; one left to the viewer for a job started from napari.

    torch's OpenMP threads busy-wait for each other, so a job with more threads than free cores
    slows down many times over (docs/benchmarks.md, threads): cores that other processes keep
    busy (measured over half a second) are not counted as free."""
    cpus = usable_cpus()
    if dev.type != "cpu":
        return max(1, min(4, cpus - 1))  # the GPU does the work; threads feed it
    want = max(1, cpus - 1) if interactive else cpus
    return int(max(1, min(want, round(cpus - busy + 0.25))))


def _threads_max(dev: Any, interactive: bool) -> int:
    """The threads the policy would take on a free machine (0 on a GPU: they stay)."""
    if dev.type != "cpu":
        return 0
    cpus = usable_cpus()
    return max(1, cpus - 1) if interactive else cpus


class ShapePlanner:
    """The shape of a run in small steps, each overridable (the shape of nnU-Net's experiment
    planner): :meth:`batch`, :meth:`spacing`, :meth:`patches`, :meth:`widths`, :meth:`depth`,
    then :meth:`network` picks the patch and width from them and :meth:`plan` writes the
    :class:`Plan` with a reason for each choice. The steps each model gets within a budget are
    not planned here: :func:`.planner.allocate` shares the budget once the shape is known.

    The median spacing is kept (coarser only when a patch the device can afford could not
    cover enough of the median slice); the patch is the smallest that covers ``COVERAGE`` of
    the slice's longer side, or the whole slice when that still leaves every model
    ``GOOD_STEPS``; the width is the widest that leaves ``GOOD_STEPS``, else the narrowest.
    The budget never buys speed with resolution: a budget too small for the narrowest network
    is refused by :func:`allocate` with what fits instead.
    """

    def __init__(
        self,
        fp: Fingerprint,
        cfg: ExperimentConfig,
        what: str,
        dev: Any,
        precision: str,
        out_ch: int,
        *,
        probe: bool = True,
    ):
        self.fp, self.cfg, self.dev, self.out_ch = fp, cfg, dev, out_ch
        self.gpu = dev.type == "cuda"
        self.base = float(np.median(fp.spacing))  # mm
        self.side = max(fp.size)  # the longer in-plane side of the median scan, voxels at base
        self._cost = _step_cost(dev, precision, self.batch(), out_ch) if probe else _nominal_cost
        self._weight = _unit_weight(model_units(what, cfg), cfg)

    def batch(self) -> int:
        return self.cfg.data.batch_size or (16 if self.gpu else 8)  # 8: see time_ahead

    def patch_max(self) -> int:
        """The largest patch this device trains fast enough."""
        return GPU_PATCH_MAX if self.gpu else CPU_PATCH_MAX

    def spacing(self) -> tuple[float, str]:
        """The in-plane spacing to train at (0: each scan's own) and why."""
        return _target_spacing(self.cfg.data, self.base, self.side, self.patch_max())

    def patches(self, s_side: float) -> list[int]:
        """Candidate patch sides for a slice ``s_side`` voxels long at the planned spacing: the
        smallest that covers ``COVERAGE`` of it, and the whole slice when that is larger."""
        if self.cfg.data.patch_size:
            return [int(self.cfg.data.patch_size)]
        pmax = self.patch_max()
        least = max(32, _ceil_to(min(COVERAGE * s_side, pmax), 16))
        full = max(least, _ceil_to(min(s_side, pmax), 16))
        return [least] if full == least else [least, full]

    def widths(self) -> list[int]:
        """Candidate widths, narrowest first."""
        m = self.cfg.model
        return [m.width] if m.width else list(GPU_WIDTHS if self.gpu else CPU_WIDTHS)

    def depth(self, patch: int) -> int:
        return self.cfg.model.depth or _depth_for(patch)

    def steps(self, patch: int, width: int) -> float:
        """The steps a budget leaves every model at this patch and width (about: 80 % of the
        budget at the timed cost of a step); infinite without a budget."""
        if self.cfg.budget_s <= 0:
            return float("inf")
        flops = _flops_per_sample(width, self.depth(patch), patch, self.out_ch) * self.batch()
        return 0.8 * self.cfg.budget_s / max(1e-9, self._cost(flops) * self._weight)

    def network(self, patches: list[int]) -> tuple[int, int, int, bool]:
        """The patch (the whole slice when affordable at the narrowest width, else the smallest
        that covers enough), then the widest network that still gets ``GOOD_STEPS``; its depth,
        and whether that width gets them."""
        widths = self.widths()
        patch = patches[-1] if self.steps(patches[-1], widths[0]) >= GOOD_STEPS else patches[0]
        good = [w for w in widths if self.steps(patch, w) >= GOOD_STEPS]
        width = good[-1] if good else widths[0]
        depth = self.depth(patch)
        if patch % 2**depth:
            if self.cfg.data.patch_size:
                raise PlanError(
                    f"data.patch_size {patch} is not a multiple of 2**depth = {2**depth}; use "
                    f"{_ceil_to(patch, 2**depth)} or set model.depth lower"
                )
            patch = _ceil_to(patch, 2**depth)
        return patch, width, depth, bool(good)

    def plan(self, threads: int, precision: str, norms: dict, reasons: list[str]) -> Plan:
        """The shape as a :class:`Plan` (no steps yet), its reasons first in ``reasons``."""
        sp, why_sp = self.spacing()
        s_side = self.side if sp == 0 else self.side * self.base / sp
        patch, width, depth, good = self.network(self.patches(s_side))
        n_est = self.steps(patch, width)
        reasons.insert(0, _spacing_reason(sp, why_sp, self.fp.size, self.base))
        cover = min(1.0, patch / max(1.0, s_side))
        why_w = _width_reason(self.cfg.budget_s > 0, good, n_est)
        reasons.insert(
            1,
            f"{patch} x {patch} patches cover {cover:.0%} of the longer side"
            + (" (the whole slice)" if cover >= 1 else f" (at least {COVERAGE:.0%} wanted)")
            + f"; depth {depth} leaves a {patch // 2**depth} px bottleneck; width {width}: "
            + why_w,
        )
        return Plan(
            device=str(self.dev),
            threads=threads,
            precision=precision,
            spacing=None if sp == 0 else (float(sp), float(sp)),
            patch=int(patch),
            width=int(width),
            depth=int(depth),
            batch_size=int(self.batch()),
            norms=norms,
            budget_s=self.cfg.budget_s,
            reasons=reasons,
        )


def _target_spacing(d: Any, base: float, side: int, pmax: int) -> tuple[float, str]:
    """The in-plane spacing to train at (0: each scan's own) and why: the user's, else the
    median ``base``, coarser only where a ``pmax`` patch could not cover ``COVERAGE`` of the
    median slice's longer ``side`` (voxels)."""
    if d.target_spacing > 0:
        return float(d.target_spacing), "data.target_spacing"
    if d.target_spacing < 0:
        return 0.0, "data.target_spacing = -1"  # each scan keeps its own spacing
    if d.patch_size or COVERAGE * side <= pmax:
        return base, "the median in-plane spacing of the training scans"
    sp = base * min(MAX_COARSEN, COVERAGE * side / pmax)
    return sp, (
        f"{sp / base:.2g}x the median {base:.3g} mm, so that a {pmax} px patch (the "
        f"largest this device trains fast enough) covers {COVERAGE:.0%} of a slice"
    )


def _spacing_reason(sp: float, why: str, size: tuple[int, int], base: float) -> str:
    if sp == 0:
        return f"in-plane spacing: each scan's own ({why})"
    h2, w2 = (round(x * base / sp) for x in size)
    return (
        f"{sp:.3g} mm in-plane ({why}): the median slice of {size[0]} x {size[1]} "
        f"voxels is {h2} x {w2} at that spacing"
    )


def _width_reason(budgeted: bool, good: bool, n_est: float) -> str:
    if not budgeted:
        return "step counts given, no budget"
    if good:
        return f"the widest that leaves every model about {GOOD_STEPS} steps or more"
    return (
        f"the narrowest; the budget leaves about {int(n_est)} steps per model, fewer than "
        f"the {GOOD_STEPS} the planner aims for"
    )


def _nominal_cost(flops: float) -> float:
    """Seconds of a training step at a nominal 50 GFLOP/s plus 30 ms (no timing: tests)."""
    return 0.03 + 3 * flops / 50e9


def _unit_weight(units: Sequence[str], cfg: ExperimentConfig) -> float:
    """Segmentation-step equivalents of one step of every model of the run (before timing)."""
    w = 0.0
    for u in units:
        mode = _mode_of(u)
        if u == "baseline" or mode == "pretrain":
            w += 1.0 + (cfg.stage1.pretrain_ratio * TASK_COST_GUESS if mode else 0.0)
        elif mode == "joint":
            w += 1.0 + TASK_COST_GUESS
        elif u == "all_joint":
            w += 1.0 + TASK_COST_GUESS * len(cfg.stage1.tasks)
        else:  # student: its batch + an unlabelled one, and the teachers' forward passes
            w += 2.0 + 0.7 * max(1, len(cfg.stage1.tasks))
    return max(w, 1.0)


_COST_CACHE: dict[tuple, tuple[float, float]] = {}
# The fit is timed with a two-class head whatever the run's classes: the head is a 1 x 1
# convolution, under 1 % of a step's FLOPs, so one fit serves every study (and can be timed
# ahead of the job, before its study is known: time_ahead).
_TIMED_OUT_CH = 2


# Seconds of a training step and of a forward pass of the networks _step_cost timed, by
# (device, precision, threads, load level, batch, width, depth, patch): a CPU plan of one of
# those shapes at that level takes them instead of timing its network again (_time_steps).
_TIMED_STEPS: dict[tuple, dict[str, float]] = {}


def _timed_key(
    dev: Any, precision: str, level: int, batch: int, width: int, depth: int, patch: int
):
    import torch

    return (str(dev), precision, torch.get_num_threads(), level, batch, width, depth, patch)


def _load_level() -> int:
    """The whole cores other programs keep busy, by this process's load history (-1 where it
    keeps none): a step's time depends on them as well as on the threads, so timings are kept
    per level and a plan at another level times anew."""
    busy = recent_busy_cores()
    return -1 if busy is None else int(round(busy))


def _step_cost(dev: Any, precision: str, batch: int, out_ch: int):
    """``flops -> seconds`` of one training step on ``dev``: a fixed overhead plus FLOPs at
    the device's speed, both fitted to two timed sizes of a width-16 U-Net (64 and 128 px)
    trained as the run trains (its loss on random labels). Small steps are dominated by the
    overhead, large ones by the arithmetic. ``out_ch`` is the caller's (its FLOPs are counted
    with it); the fit is the same for every head."""
    import torch

    level = _load_level()  # once: the fit and its two networks are kept at the same level
    key = (str(dev), precision, torch.get_num_threads(), level, batch)
    if key not in _COST_CACHE:
        # imported here, when needed: it loads MONAI
        from napari_mtssl.models import build_unet
        from napari_mtssl.training.loop.losses import SegLoss

        torch.manual_seed(0)
        net = build_unet(1, _TIMED_OUT_CH, 16, depth=4).to(dev)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        loss_fn, timer = SegLoss(), _StepTimer(dev)
        pts = []
        for p in (64, 128):
            x = torch.randn(batch, 1, p, p, device=dev)
            y = torch.randint(0, _TIMED_OUT_CH, (batch, p, p), device=dev)

            def step(x=x, y=y) -> None:
                with inference.autocast(dev, precision):
                    loss = loss_fn(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()

            @torch.no_grad()
            def fwd(x=x) -> None:
                with inference.autocast(dev, precision):
                    net(x)

            seconds = {"seg": timer.timed(step), "fwd": timer.timed(fwd)}
            _TIMED_STEPS[_timed_key(dev, precision, level, batch, 16, 4, p)] = seconds
            pts.append((3 * _flops_per_sample(16, 4, p, _TIMED_OUT_CH) * batch, seconds["seg"]))
        (f1, t1), (f2, t2) = pts
        per_flop = max((t2 - t1) / max(f2 - f1, 1.0), 1e-15)
        overhead = max(0.0, t1 - per_flop * f1)
        _COST_CACHE[key] = (overhead, per_flop)
    overhead, per_flop = _COST_CACHE[key]
    return lambda flops: overhead + 3 * flops * per_flop


class _Ahead:
    """Timing ahead of a job, in a worker that waits for one (:func:`time_ahead`): the lock
    that a plan's timing and the timing ahead share (both set torch's threads), and whether a
    plan has begun (then nothing more is timed ahead: the job trains)."""

    lock = threading.Lock()
    closed = False


def time_ahead(interactive: bool = True, most: int = 3, every_s: float = 0.5) -> None:
    """Time, ahead of a job, the step-cost fit its plan will most likely ask for, for each
    load level the machine settles at while the worker waits (two windows of its load history
    in a row at the same level, with a core free; at most ``most`` levels): on the CPU, at the
    precision and batch the plan picks by default and the threads its policy gives at that
    load. A plan at a level timed ahead takes the fit, and the timed network where its shape
    is one of them, without timing (:func:`_step_cost`, :func:`_time_steps`). Ends when a plan begins. Not on
    a GPU, where timing takes a fraction of a second and a waiting worker should not hold the
    card. Runs in the caller's thread (a daemon thread of the worker's warm-up)."""
    import torch

    dev = inference.resolve_device("auto")
    if dev.type != "cpu":
        return
    timed: set[int] = set()
    last = None
    while len(timed) < most and not _Ahead.closed:
        time.sleep(every_s)
        level = _load_level()
        steady, last = level >= 0 and level == last, level
        if not steady or level in timed or level > usable_cpus() - 1:
            # no core free: the timing would take its share from the viewer, whose layers
            # then stall (the walk beside two busy processes: opening a scan 0.8-0.9 s
            # against 0.2-0.6 s); the plan times at the click instead
            continue
        with _Ahead.lock:
            if _Ahead.closed:
                return
            before = torch.get_num_threads()
            try:
                busy = recent_busy_cores() or 0.0
                torch.set_num_threads(_thread_policy(dev, interactive, busy))
                # bf16 or fp32, timed (once per process) on a settled machine, as the plan's
                precision = inference.resolve_precision(dev, "auto")
                _step_cost(dev, precision, 8, _TIMED_OUT_CH)  # 8: ShapePlanner.batch on a CPU
            finally:
                torch.set_num_threads(before)
        timed.add(level)


def _sync(dev: Any) -> None:
    import torch

    if getattr(dev, "type", "") == "cuda":
        torch.cuda.synchronize(dev)


def explicit_steps(cfg: ExperimentConfig, what: str) -> dict[str, int]:
    """Steps as the config gives them (no budget): every count must be set."""
    s1 = cfg.stage1
    n = int(cfg.baseline.steps or s1.joint_steps)
    both = s1.modes in ("both", "auto") and s1.halving > 0
    out = {
        "seg": n,
        "pretext": int(s1.pretrain_steps),
        "student": int(cfg.stage2.steps),
        "retrain": int(cfg.stage2.retrain_steps),
        "halving_at": int(round(s1.halving * s1.joint_steps)) if both else 0,
        "eval_every": int(s1.eval_every or max(1, n // 2)),
        "fixed": 1,
    }
    need = {
        "baseline": ["seg"],
        "stage1": ["seg"] + (["pretext"] if s1.modes != "joint" else []),
        "stage2": ["student"],
        "retrain-stage2": ["student"],
        "retrain-quick": ["retrain"],
    }.get(what, ["seg", "student"] + (["pretext"] if s1.modes != "joint" else []))
    if any(not out[k] for k in need):
        raise PlanError(
            "without a time budget every step count must be set (stage1.joint_steps, "
            "stage1.pretrain_steps, stage1.finetune_steps, stage2.steps); or give a budget"
        )
    return out


# -- the budget --------------------------------------------------------------------------------


def unit_step_s(
    u: str, t: dict[str, float], cfg: ExperimentConfig, cached_pretext: Sequence[str] = ()
) -> tuple[float, float]:
    """(seconds per segmentation step, seconds of pre-training per segmentation step) of the
    model ``u``, from the step timings ``t``."""
    s1 = cfg.stage1
    if u == "baseline":
        return t["seg"], 0.0
    mode = _mode_of(u)
    task = ModelId.parse(u).task if mode else None
    if mode == "joint":
        return t["seg"] + t.get(f"task:{task}", t["seg"]), 0.0
    if mode == "pretrain":
        pre = 0.0 if task in cached_pretext else s1.pretrain_ratio * t.get(f"task:{task}", 0)
        return t["seg"], pre
    if u == "all_joint":
        return t["seg"] + sum(t.get(f"task:{x}", t["seg"]) for x in s1.tasks), 0.0
    return t["student"], 0.0


# The stored ensemble maps are predicted without window overlap (SOFT_OVERLAP; the confident
# pixels the student learns from are the same, at 2.25x fewer windows for a patch of half the
# slice), on at most as many unlabelled scans as SOFT_SHARE of the student's time pays for
# (at least SOFT_MIN_SCANS); the ensemble's validation pass likewise (SOFT_EVAL of a validation
# pass with overlap).
SOFT_OVERLAP = 0.5
SOFT_SHARE = 0.15
SOFT_MIN_SCANS = 8
SOFT_EVAL = 0.5


def _guess(plan: Plan, cfg: ExperimentConfig) -> dict[str, float]:
    """Step times from FLOPs at a nominal 50 GFLOP/s (when timing is not wanted: tests)."""
    f = _flops_per_sample(plan.width, plan.depth, plan.patch, 2) * plan.batch_size
    seg = 3 * f / 50e9
    out = {"seg": seg, "fwd": f / 50e9, "eval": 1.0, "soft": 1.0}
    out["student"] = student_step_s(out, cfg)
    for task in cfg.stage1.tasks:
        out[f"task:{task}"] = seg
    return out


def probe_step(plan: Plan, out_ch: int, num_classes: int) -> tuple[Any, Any, Callable[[], None]]:
    """The plan's network on its device, a batch of random data of the plan's shape, and one
    training step of it (what the planner times, and what runs beside it when it times side
    by side)."""
    import torch

    # imported here, when needed: it loads MONAI
    from napari_mtssl.models import build_unet
    from napari_mtssl.training.loop.losses import SegLoss

    dev = torch.device(plan.device)
    b, p = plan.batch_size, plan.patch
    torch.manual_seed(0)
    net = build_unet(1, out_ch, plan.width, depth=plan.depth).to(dev)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    loss_fn = SegLoss()
    x = torch.randn(b, 1, p, p, device=dev)
    y = torch.randint(0, num_classes, (b, p, p), device=dev)

    def step() -> None:
        with inference.autocast(dev, plan.precision):
            loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return net, x, step


def _time_steps(
    plan: Plan, cfg: ExperimentConfig, fp: Fingerprint, what: str = "all"
) -> dict[str, float]:
    """Seconds per step of each kind of model, timed on the plan's device with random data of
    the plan's shape (a few steps each, after a warm-up step). The auxiliary tasks' steps only
    for a run that trains teachers (``what``): a baseline's click waits for no task's timing."""
    import torch

    dev = torch.device(plan.device)
    b = plan.batch_size
    out_ch = 1 if fp.num_classes == 2 and cfg.model.binary_sigmoid else fp.num_classes
    teachers = What.parse(what).trains_teachers
    timer = _StepTimer(dev)
    level = _load_level()
    known = _TIMED_STEPS.get(
        _timed_key(dev, plan.precision, level, b, plan.width, plan.depth, plan.patch)
    )
    if known is not None and dev.type == "cpu" and not teachers:
        # timed already for the shape (by _step_cost: the same network, two classes, this
        # machine, these threads); a GPU times its own, for the step's peak memory
        return _with_derived_timings(dict(known), plan, cfg, fp, timer)
    net, x, seg_step = probe_step(plan, out_ch, fp.num_classes)

    @torch.no_grad()
    def fwd() -> None:
        with inference.autocast(dev, plan.precision):
            net(x)

    t: dict[str, float] = {"seg": timer.peak(seg_step), "fwd": timer.timed(fwd)}
    if teachers:
        t.update(_time_task_steps(plan, cfg, fp, net, timer, t["seg"]))
    return _with_derived_timings(t, plan, cfg, fp, timer)


def _with_derived_timings(
    t: dict[str, float], plan: Plan, cfg: ExperimentConfig, fp: Fingerprint, timer: _StepTimer
) -> dict[str, float]:
    """``t`` (the timed steps) with what follows from them: the student's step, a stored
    soft-label pass, a validation pass, and a joint step's peak GPU memory."""
    b = plan.batch_size
    t["student"] = student_step_s(t, cfg)
    t["soft"] = train_windows(plan, fp, SOFT_OVERLAP) * t["fwd"] / b * 1.2
    t["eval"] = validation_windows(plan, fp, cfg.data.infer_overlap) * t["fwd"] / b * 1.2
    t["eval"] += 0.05 * len(fp.val_shapes)
    if timer.peaks:
        # A joint step holds the segmentation batch's and the task batch's activations at
        # once: their peaks added (the weights and optimiser state counted twice: a margin).
        t["peak_mb"] = timer.peaks[0] + max(timer.peaks[1:], default=0.0)
    return t


class _StepTimer:
    """Seconds per call of a step on ``dev`` (after a warm-up call), with the peak GPU memory
    (MiB) of the steps timed by :meth:`peak` on a GPU."""

    def __init__(self, dev: Any):
        self.dev = dev
        self.peaks: list[float] = []

    def timed(self, fn: Callable[[], None], n: int = 3) -> float:
        fn()
        _sync(self.dev)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(self.dev)
        return (time.perf_counter() - t0) / n

    def peak(self, fn: Callable[[], None], n: int = 3) -> float:
        """:meth:`timed`, recording the step's peak GPU memory on a GPU."""
        import torch

        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)
        s = self.timed(fn, n)
        if self.dev.type == "cuda":
            self.peaks.append(torch.cuda.max_memory_allocated(self.dev) / 2**20)
        return s


def _time_task_steps(
    plan: Plan, cfg: ExperimentConfig, fp: Fingerprint, net: Any, timer: _StepTimer, seg_s: float
) -> dict[str, float]:
    """Seconds per joint step of each of the run's tasks (``task:<name>``), on random
    volumes of the plan's shape; a task that cannot run on them is priced as a segmentation
    step (``seg_s``: the run's own check explains why it cannot run)."""
    import torch

    # imported here, when needed: it loads MONAI, scipy
    from napari_mtssl.tasks import build_task, task_config
    from napari_mtssl.tasks.base import SliceContext

    dev, p = timer.dev, plan.patch
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((max(8, fp.slices[1]), p, p)).astype(np.float32)
    lab = (rng.random(vol.shape) > 0.7).astype(np.int64) * min(1, fp.num_classes - 1)
    ctx = SliceContext(
        volume=vol,
        z=vol.shape[0] // 2,
        labels=lab,
        labelled=np.ones(vol.shape[0], bool),
        num_classes=max(2, fp.num_classes),
        spacing=(fp.slice_spacing, 1.0, 1.0),
    )
    tb = cfg.data.task_batch_size or plan.batch_size
    shaped = task_shape_overrides(cfg.stage1.tasks, cfg.stage1.task_overrides, p, plan.depth)
    t: dict[str, float] = {}
    for name in cfg.stage1.tasks:
        try:
            task = build_task(
                name, net, task_config(name, **shaped.get(name, {})), max(2, fp.num_classes)
            ).to(dev)
            samples = [task.make_sample(ctx, rng) for _ in range(tb)]
        except (ValueError, TypeError):
            t[f"task:{name}"] = seg_s
            continue
        batch = {k: torch.from_numpy(np.stack([s[k] for s in samples])).to(dev) for k in samples[0]}
        topt = torch.optim.AdamW([*net.parameters(), *task.parameters()], 1e-3)

        def task_step(task=task, batch=batch, topt=topt) -> None:
            with inference.autocast(dev, plan.precision):
                loss = task(net, batch)["loss"].float()
            topt.zero_grad()
            loss.backward()
            topt.step()

        t[f"task:{name}"] = timer.peak(task_step, 2)
    return t


# A semi-supervised student step over a baseline step: the same images through the network,
# plus two half batches to read, the copy-paste mixing, the strong view and the masked loss
# (1.01x without the refresh), and the moving average's forward pass over the unlabelled half
# batch that refreshes the pseudo-labels: 1.22-1.26x measured (benchmarks/speed/run.py student,
# ACDC, 1 thread); priced with a margin. Without the refresh, 1.05.
SEMI_STEP = 1.30
SEMI_STEP_FIXED = 1.05


def student_step_s(t: dict[str, float], cfg: ExperimentConfig) -> float:
    """Seconds of one student step from the timed segmentation step and forward pass."""
    s2 = cfg.stage2
    if s2.method == "semi":
        return (SEMI_STEP if s2.refresh > 0 else SEMI_STEP_FIXED) * t["seg"]
    unl = 2.0 if s2.distil_unlabelled else 1.0  # a labelled and an unlabelled batch
    if s2.stored and s2.temperature == 1.0:
        return unl * t["seg"] * 1.05  # the ensemble's maps come with the batch
    teachers = max(1, len(cfg.stage1.tasks))
    return unl * t["seg"] + unl * teachers * t["fwd"]


def train_windows(plan: Plan, fp: Fingerprint, overlap: float) -> int:
    """Sliding windows one model predicts over every training slice (the stored ensemble
    maps): the validation pass scaled by the training scans' share."""
    val = validation_windows(plan, fp, overlap)
    per_scan = val / max(1, len(fp.val_shapes))
    return int(round(per_scan * max(1, fp.n_train)))


def validation_windows(plan: Plan, fp: Fingerprint, overlap: float) -> int:
    """Sliding windows one validation pass predicts (MONAI's window count per slice)."""
    p = plan.patch
    step = max(1, int(p * (1 - overlap)))

    def along(n: float) -> int:
        n = int(round(n))
        return 1 if n <= p else int(math.ceil((n - p) / step)) + 1

    total = 0
    for z, h, w in fp.val_shapes:
        f = 1.0
        if plan.spacing is not None:
            f = float(np.median(fp.spacing)) / plan.spacing[0]
        total += z * along(h * f) * along(w * f)
    return total
