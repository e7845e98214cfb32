"""The shape of a run (the second step of a plan, :mod:`.plan`): in-plane spacing, patch,
network width and depth, batch, normalisation per modality, precision and threads, each with
its reason.

A candidate ladder is priced with the network's FLOPs and the device's measured speed
(:func:`.timing.step_cost`): the planner keeps the finest resolution whose patch covers most of
a slice and gives every model enough steps, then spends what is left on a wider network.
:class:`ShapePlanner` decides in small steps a subclass may replace; :func:`shape_plan` writes
the :class:`~.plan.Plan` (no steps yet within a budget: :func:`.planner.allocate` shares it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from napari_mtssl.ids import What
from napari_mtssl.training.config import ExperimentConfig
from napari_mtssl.training.data.preprocess import NormSpec
from napari_mtssl.training.loop.pace import recent_busy_cores
from napari_mtssl.training.planning.fingerprint import Fingerprint
from napari_mtssl.training.planning.machine import (
    busy_cores,
    thread_policy,
    threads_max,
    threads_reason,
)
from napari_mtssl.training.planning.plan import (
    MIN_STEPS,
    MIN_STEPS_SHORTENED,
    Plan,
    PlanError,
    explicit_steps,
    mode_of,
    model_units,
)
from napari_mtssl.training.planning.timing import (
    UNTIMED_BOUND,
    UNTIMED_GUESS,
    TimingAhead,
    flops_per_sample,
    has_fit,
    step_cost,
    untimed_cost,
)
from napari_mtssl.training.prediction import inference

__all__ = ["ShapePlanner", "shape_plan", "GOOD_STEPS", "COVERAGE"]

# Segmentation steps per model below which the planner keeps the cheapest shape that covers
# enough of a slice rather than a larger patch or a wider network (below MIN_STEPS, .plan, it
# refuses the budget). Measured on ACDC (docs/benchmarks.md, "Choosing the plan"): at L = 7,
# for the same 20 minutes of one core, 128 px patches with 4300 steps reached 0.835 mean Dice,
# 96 px with 6500 steps 0.830, 160 px with 3000 0.803.
GOOD_STEPS = 4000
COVERAGE = 0.5  # a patch should span at least this share of the median slice's longer side
MAX_COARSEN = 4.0  # never resample coarser than four times the median spacing
CPU_WIDTHS = (16, 24, 32)
GPU_WIDTHS = (32, 48)
CPU_PATCH_MAX = 256
GPU_PATCH_MAX = 512
TASK_COST_GUESS = 1.0  # a task step costs about one segmentation step (before timing)


def shape_plan(
    fp: Fingerprint,
    cfg: ExperimentConfig,
    what: What = What.ALL,
    *,
    device: Any = None,
    probe: bool = True,
    interactive: bool = False,
    fixed: Plan | None = None,
    planner: type[ShapePlanner] | None = None,
    quick_start: bool = False,
) -> Plan:
    """Shape the run for ``fp`` on ``device``: spacing, patch, network, batch, precision and
    threads, each with its reason; the steps only where ``cfg`` gives them (no budget).
    :func:`.planner.make_plan` then shares a budget across the models.

    ``quick_start``: a run started by a click, whose first step should come at once. Where
    timing cannot change its shape (:func:`_untimed_shaper`: a short CPU baseline with nothing
    timed kept), nothing is timed: the plan is ``untimed``, and the run times its own steps.

    ``interactive``: the job shares the machine with a viewer, so one core is left free.
    ``fixed``: a plan whose data shape must be kept (stage 2 and retraining reuse the teachers'
    spacing, patch and network); only the steps are planned again.
    ``planner``: a :class:`ShapePlanner` subclass whose steps decide the shape differently.
    """
    with TimingAhead.lock:  # a timing ahead in progress ends first; none begins after this plan
        TimingAhead.closed = True
        return _shape_plan(fp, cfg, what, device, probe, interactive, fixed, planner, quick_start)


def _shape_plan(
    fp: Fingerprint,
    cfg: ExperimentConfig,
    what: What,
    device: Any,
    probe: bool,
    interactive: bool,
    fixed: Plan | None,
    planner: type[ShapePlanner] | None,
    quick_start: bool = False,
) -> Plan:
    dev = (
        device
        if isinstance(device, torch.device)
        else inference.resolve_device(device or cfg.device)
    )
    m = cfg.model
    overridden = _overridden(cfg)
    reasons: list[str] = []
    warnings = list(fp.notes)
    busy = _busy(dev, cfg, interactive)
    threads = cfg.num_threads or thread_policy(dev, interactive, busy or 0.0)
    if dev.type == "cpu":
        torch.set_num_threads(threads)
        if not cfg.num_threads:
            reasons.append(threads_reason(threads, interactive, busy))
    out_ch = 1 if fp.num_classes == 2 and m.binary_sigmoid else fp.num_classes
    bound = None
    if quick_start and probe and fixed is None:
        bound = _untimed_shaper(fp, cfg, what, dev, out_ch, planner, threads, interactive)
    precision, untimed, why = _precision(dev, cfg, bound)
    reasons += why
    norms, nreasons = _norms(fp, cfg)
    reasons += nreasons

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
        cost = untimed_cost(threads, UNTIMED_GUESS) if untimed else None
        shaper = (planner or ShapePlanner)(
            fp, cfg, what, dev, precision, out_ch, probe=probe, cost=cost
        )
        plan = shaper.plan(threads, precision, norms, reasons)
        if untimed:
            plan.untimed = True
            plan.reasons.insert(2, untimed_reason(threads))
        plan.overridden = overridden
        plan.warnings = warnings + plan.warnings
        plan.fingerprint = fp.to_dict()
    plan.models = model_units(what, cfg)
    plan.what = str(What.parse(what))
    plan.threads_max = threads_max(dev, interactive) if not cfg.num_threads else 0
    if cfg.budget_s <= 0:
        plan.steps = explicit_steps(cfg, what)
    return plan


def _busy(dev: Any, cfg: ExperimentConfig, interactive: bool) -> float | None:
    """The cores other programs keep busy, for the threads: measured for each plan (a process
    that plans again later, a script's second run or a retrain, must see the machine as it is
    then). Not measured where it cannot change them (a GPU, threads asked for, or one thread
    at most: a job from napari on two cores), which would take 1.3 s of the click's wait where
    the spare worker has no quiet history yet: the history's figure or None then."""
    if dev.type != "cpu" or cfg.num_threads:
        return 0.0
    if threads_max(dev, interactive) <= 1:
        return recent_busy_cores()
    return busy_cores()


def _precision(
    dev: Any, cfg: ExperimentConfig, bound: ShapePlanner | None
) -> tuple[str, bool, list[str]]:
    """The run's precision, whether it plans untimed, and the reason for the precision. With
    an untimed shaper (``bound``) and no fit kept for its batch at the precision it would take
    (a kept fit prices the shape as quickly, and truly), untimed: the precision without timing
    (:func:`.inference.untimed_precision`); else as timed or asked."""
    auto_cpu = cfg.optim.precision == "auto" and dev.type == "cpu"
    if bound is not None:
        precision, why = (
            inference.untimed_precision()
            if auto_cpu
            else (inference.resolve_precision(dev, cfg.optim.precision), "")
        )
        if not has_fit(dev, precision, bound.batch()):
            return precision, True, [why] if why else []
    precision = inference.resolve_precision(dev, cfg.optim.precision)
    if not auto_cpu:
        return precision, False, []
    sp = inference.cpu_bf16_speedup()
    why = (
        f"{precision}: a training step under bf16 autocast ran {sp:.2f}x the speed of fp32 "
        "on this CPU" + ("" if precision == "bf16" else " (not faster, so fp32)")
    )
    return precision, False, [why]


def _untimed_shaper(
    fp: Fingerprint,
    cfg: ExperimentConfig,
    what: What,
    dev: Any,
    out_ch: int,
    planner: type[ShapePlanner] | None,
    threads: int,
    interactive: bool,
) -> ShapePlanner | None:
    """A shaper that prices every candidate at the bound of a fast CPU (UNTIMED_BOUND FLOP/s on
    each thread the run may grow to), where that still leaves the run's budget the cheapest
    shape: then no timing could choose another (a slower machine only affords less), and the
    run may start untimed. None where it may not: not a budgeted baseline on a CPU (a run with
    teachers or a student is priced by its tasks' and its ensemble's timings too), or a budget
    that a fast CPU would spend on a wider network or a larger patch."""
    if dev.type != "cpu" or cfg.budget_s <= 0 or What.parse(what) != What.BASELINE:
        return None
    most = max(threads, threads_max(dev, interactive))
    bound = (planner or ShapePlanner)(fp, cfg, what, dev, "", out_ch, cost=untimed_cost(most))
    sp, _ = bound.spacing()
    s_side = bound.side if sp == 0 else bound.side * bound.base / sp
    patches = bound.patches(s_side)
    chosen = bound.network(patches)[:2]
    cheapest = (bound.network(patches[:1])[0], bound.widths()[0])  # the patch rounded alike
    return bound if chosen == cheapest else None


UNTIMED_REASON_START = "nothing timed at the click"


def untimed_reason(threads: int) -> str:
    """The reason an untimed plan gives for its step costs."""
    return UNTIMED_REASON_START + (
        ": at this budget no wider network or larger patch would "
        f"get {GOOD_STEPS} steps even on a fast CPU ({UNTIMED_BOUND / 1e9:.0f} GFLOP/s a "
        "thread), so the cheapest shape trains at once; the step count is a guess "
        f"({UNTIMED_GUESS / 1e9:.0f} GFLOP/s on {threads} thread(s)) until the run has timed "
        "its own steps, in its first 15 s, and a budget that gives fewer than "
        f"{MIN_STEPS_SHORTENED} steps (half the {MIN_STEPS} a plan asks for) is refused then"
    )


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
    is refused by :func:`.planner.allocate` with what fits instead.
    """

    def __init__(
        self,
        fp: Fingerprint,
        cfg: ExperimentConfig,
        what: What,
        dev: Any,
        precision: str,
        out_ch: int,
        *,
        probe: bool = True,
        cost: Callable[[float], float] | None = None,
    ):
        """``cost``: ``flops -> seconds`` of a step, given (an untimed plan's bound or guess);
        else timed (:func:`.timing.step_cost`) or, with ``probe`` False, nominal."""
        self.fp, self.cfg, self.dev, self.out_ch = fp, cfg, dev, out_ch
        self.gpu = dev.type == "cuda"
        self.base = float(np.median(fp.spacing))  # mm
        self.side = max(fp.size)  # the longer in-plane side of the median scan, voxels at base
        if cost is None:
            cost = step_cost(dev, precision, self.batch(), out_ch) if probe else _nominal_cost
        self._cost = cost
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
        flops = flops_per_sample(width, self.depth(patch), patch, self.out_ch) * self.batch()
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
        if getattr(self._cost, "kept", False):
            reasons.insert(
                2,
                "step costs from a timing an earlier session made on this machine at the same "
                "load (kept for two weeks), not timed again",
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
        mode = mode_of(u)
        if u == "baseline" or mode == "pretrain":
            w += 1.0 + (cfg.stage1.pretrain_ratio * TASK_COST_GUESS if mode else 0.0)
        elif mode == "joint":
            w += 1.0 + TASK_COST_GUESS
        elif u == "all_joint":
            w += 1.0 + TASK_COST_GUESS * len(cfg.stage1.tasks)
        else:  # student: its batch + an unlabelled one, and the teachers' forward passes
            w += 2.0 + 0.7 * max(1, len(cfg.stage1.tasks))
    return max(w, 1.0)


def _ceil_to(x: float, m: int) -> int:
    return int(math.ceil(x / m) * m)


def _depth_for(patch: int) -> int:
    """Poolings until the bottleneck is 8 to 16 pixels (nnU-Net stops at 4 to 8 for larger
    networks; a CPU budget favours the cheaper, shallower end)."""
    return int(np.clip(math.floor(math.log2(max(patch, 16) / 8)), 3, 6))
