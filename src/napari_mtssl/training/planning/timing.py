"""Seconds per training step on this machine: what the planner prices a run with.

A step's cost before the network is chosen (:func:`step_cost`: a fixed overhead plus the
network's FLOPs at the device's speed, fitted to two timed sizes of a small U-Net), timed ahead
of a job in a waiting worker (:func:`time_ahead`); the plan's own steps timed on its device
(:func:`time_steps`: segmentation, each task, a forward pass) and what follows from them (the
student's step, a stored soft-label pass, a validation pass); and the seconds per segmentation
step of each model of a run (:func:`unit_step_s`).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from napari_mtssl.ids import ModelId, What
from napari_mtssl.training import kept_timings
from napari_mtssl.training.config import ExperimentConfig
from napari_mtssl.training.loop.pace import recent_busy_cores
from napari_mtssl.training.planning.fingerprint import Fingerprint
from napari_mtssl.training.planning.machine import load_level, thread_policy, usable_cpus
from napari_mtssl.training.planning.plan import Plan, mode_of, task_shape_overrides
from napari_mtssl.training.prediction import inference

__all__ = [
    "TimingAhead",
    "flops_per_sample",
    "step_cost",
    "StepCost",
    "time_ahead",
    "has_fit",
    "untimed_cost",
    "untimed_timings",
    "UNTIMED_BOUND",
    "UNTIMED_GUESS",
    "unit_step_s",
    "nominal_timings",
    "probe_step",
    "time_steps",
    "student_step_s",
    "train_windows",
    "validation_windows",
    "SOFT_OVERLAP",
    "SOFT_SHARE",
    "SOFT_MIN_SCANS",
    "SOFT_EVAL",
]


# -- a step's cost, from the network's FLOPs ---------------------------------------------------


def flops_per_sample(width: int, depth: int, patch: int, out_channels: int) -> float:
    """Forward FLOPs of the U-Net for one ``patch`` x ``patch`` sample (counted once per
    width and depth at a small size, then scaled by area: every layer is convolutional)."""
    return _flops_small(width, depth, out_channels) * (patch / _small_side(depth)) ** 2


def _small_side(depth: int) -> int:
    # 2 x 2 pixels at the bottleneck: an instance norm needs more than one pixel
    return 2 ** (depth + 1)


_FLOPS_CACHE: dict[tuple[int, int, int], float] = {}


def _flops_small(width: int, depth: int, out_channels: int) -> float:
    key = (width, depth, out_channels)
    if key not in _FLOPS_CACHE:
        _FLOPS_CACHE[key] = _count_flops(width, depth, out_channels)
    return _FLOPS_CACHE[key]


def _count_flops(width: int, depth: int, out_channels: int) -> float:
    """By hooks on one small forward pass (5-70 ms; torch's FlopCounterMode first costs 1.2 s
    a process, 3 s at the click of a job beside two busy processes: .models.forward_flops)."""
    # imported here, when needed: it loads MONAI
    from napari_mtssl.models import build_unet, forward_flops

    net = build_unet(1, out_channels, width, depth=depth)
    side = _small_side(depth)
    return forward_flops(net, (1, 1, side, side))


_COST_CACHE: dict[tuple, tuple[float, float]] = {}
KEPT_FITS: set[tuple] = set()  # the keys of the fits taken from an earlier session
# The fit is timed with a two-class head whatever the run's classes: the head is a 1 x 1
# convolution, under 1 % of a step's FLOPs, so one fit serves every study (and can be timed
# ahead of the job, before its study is known: time_ahead).
_TIMED_OUT_CH = 2
_FIT_PATCHES = (64, 128)  # the two sizes of the fit's network


# Seconds of a training step and of a forward pass of the networks step_cost timed, by
# (device, precision, threads, load level, batch, width, depth, patch): a CPU plan of one of
# those shapes at that level takes them instead of timing its network again (time_steps).
_TIMED_STEPS: dict[tuple, dict[str, float]] = {}


def _timed_key(
    dev: Any, precision: str, level: int, batch: int, width: int, depth: int, patch: int
):
    return (str(dev), precision, torch.get_num_threads(), level, batch, width, depth, patch)


def step_cost(dev: Any, precision: str, batch: int, out_ch: int) -> StepCost:
    """``flops -> seconds`` of one training step on ``dev``: a fixed overhead plus FLOPs at
    the device's speed, both fitted to two timed sizes of a width-16 U-Net (64 and 128 px)
    trained as the run trains (its loss on random labels). Small steps are dominated by the
    overhead, large ones by the arithmetic. ``out_ch`` is the caller's (its FLOPs are counted
    with it); the fit is the same for every head."""
    level = load_level()  # once: the fit and its two networks are kept at the same level
    key = (str(dev), precision, torch.get_num_threads(), level, batch)
    if key not in _COST_CACHE:
        _take_kept_fit(key)
    if key not in _COST_CACHE:
        # imported here, when needed: it loads MONAI
        from napari_mtssl.models import build_unet
        from napari_mtssl.training.loop.losses import SegLoss

        torch.manual_seed(0)
        net = build_unet(1, _TIMED_OUT_CH, 16, depth=4).to(dev)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        loss_fn, timer = SegLoss(), _StepTimer(dev)
        pts = []
        for p in _FIT_PATCHES:
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
            pts.append((3 * flops_per_sample(16, 4, p, _TIMED_OUT_CH) * batch, seconds["seg"]))
        (f1, t1), (f2, t2) = pts
        per_flop = max((t2 - t1) / max(f2 - f1, 1.0), 1e-15)
        overhead = max(0.0, t1 - per_flop * f1)
        _COST_CACHE[key] = (overhead, per_flop)
        _keep_fit(key)
    overhead, per_flop = _COST_CACHE[key]
    return StepCost(overhead, per_flop, kept=key in KEPT_FITS)


def has_fit(dev: Any, precision: str, batch: int) -> bool:
    """Whether :func:`step_cost` for these would take a fit without timing (made by this
    process, or kept by an earlier session at this load level and these threads)."""
    key = (str(dev), precision, torch.get_num_threads(), load_level(), batch)
    if key not in _COST_CACHE:
        _take_kept_fit(key)
    return key in _COST_CACHE


# -- a run that starts before anything is timed ------------------------------------------------
# A short baseline on a small CPU gets the cheapest shape whatever its step costs (its budget
# leaves no wider network or larger patch its GOOD_STEPS even on a fast CPU), so its plan need
# not time the machine at the click (the step-cost fit and bf16: 4-5 s beside two busy
# processes, 7-11 s in the walks): .shape.shape_plan prices its candidates at UNTIMED_BOUND
# FLOP/s a thread, and where that still leaves the cheapest shape, the run starts on it at once
# and times its own steps (its pace recounts them in its first window). UNTIMED_BOUND: 2.5x
# the fastest step measured (a width-16 U-Net at 128 px, batch 8, 14.9 GFLOP a step, bf16 on
# one idle core of an Intel Xeon with AMX: 0.19-0.29 s, 51-78 GFLOP/s). UNTIMED_GUESS: the step
# count's guess until then (the same core beside two busy processes: 1.22 s, 12 GFLOP/s).
UNTIMED_BOUND = 2e11
UNTIMED_GUESS = 2.5e10


def untimed_cost(threads: int, flops_per_thread: float = UNTIMED_BOUND) -> StepCost:
    """``flops -> seconds`` of a step at ``flops_per_thread`` FLOP/s on each of ``threads``
    threads and no overhead: the bound (or, with UNTIMED_GUESS, the guess) of an untimed plan."""
    return StepCost(0.0, 1.0 / (flops_per_thread * max(1, int(threads))))


def untimed_timings(plan: Plan, cfg: ExperimentConfig, fp: Fingerprint) -> dict[str, float]:
    """The step timings of a plan that timed nothing (``plan.untimed``), guessed at
    UNTIMED_GUESS FLOP/s a thread: the run's pace replaces them with its own steps' times."""
    f = flops_per_sample(plan.width, plan.depth, plan.patch, 2) * plan.batch_size
    cost = untimed_cost(max(plan.threads, 1), UNTIMED_GUESS)
    t = {"seg": cost(f), "fwd": cost(f) / 3}
    return _with_derived_timings(t, plan, cfg, fp, _StepTimer(torch.device(plan.device)))


@dataclasses.dataclass(frozen=True)
class StepCost:
    """``flops -> seconds`` of one training step (:func:`step_cost`); ``kept``: the fit was
    timed by an earlier session on this machine, not by this process."""

    overhead: float
    per_flop: float
    kept: bool = False

    def __call__(self, flops: float) -> float:
        return self.overhead + 3 * flops * self.per_flop


# The fit is kept between sessions (:mod:`..kept_timings`) for a CPU at a known load level: the
# next session's first plan at that level takes it instead of timing at the click (4-5 s beside
# two busy processes). Not at level -1 (a process without a load history does not know the load
# it timed under), nor on a GPU (its timing takes a fraction of a second).


def _kept_key(key: tuple) -> str | None:
    dev, precision, threads, level, batch = key
    if not str(dev).startswith("cpu") or level < 0:
        return None
    return f"step_cost|{dev}|{precision}|threads={threads}|level={level}|batch={batch}"


def _keep_fit(key: tuple) -> None:
    name = _kept_key(key)
    if name is None:
        return
    dev, precision, _, level, batch = key
    steps = {
        str(p): _TIMED_STEPS[_timed_key(dev, precision, level, batch, 16, 4, p)]
        for p in _FIT_PATCHES
    }
    overhead, per_flop = _COST_CACHE[key]
    kept_timings.put(name, {"overhead": overhead, "per_flop": per_flop, "steps": steps})


def _take_kept_fit(key: tuple) -> None:
    """The fit kept by an earlier session for ``key``, with its two timed networks, if any."""
    name = _kept_key(key)
    kept = kept_timings.get(name) if name else None
    if kept is None:
        return
    dev, precision, _, level, batch = key
    try:
        fit = (float(kept["overhead"]), float(kept["per_flop"]))
        steps = {
            p: {
                "seg": float(kept["steps"][str(p)]["seg"]),
                "fwd": float(kept["steps"][str(p)]["fwd"]),
            }
            for p in _FIT_PATCHES
        }
    except (KeyError, TypeError, ValueError):
        return  # written by other code: timed again
    if not all(
        math.isfinite(v) and v >= 0
        for v in (*fit, *(t for s in steps.values() for t in s.values()))
    ):
        return
    for p, seconds in steps.items():
        _TIMED_STEPS[_timed_key(dev, precision, level, batch, 16, 4, p)] = seconds
    _COST_CACHE[key] = fit
    KEPT_FITS.add(key)


# -- timing ahead of a job ---------------------------------------------------------------------


class TimingAhead:
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
    is one of them, without timing (:func:`step_cost`, :func:`time_steps`). Ends when a plan
    begins. Not on a GPU, where timing takes a fraction of a second and a waiting worker should
    not hold the card. Runs in the caller's thread (a daemon thread of the worker's warm-up)."""
    dev = inference.resolve_device("auto")
    if dev.type != "cpu":
        return
    timed: set[int] = set()
    last = None
    while len(timed) < most and not TimingAhead.closed:
        time.sleep(every_s)
        level = load_level()
        steady, last = level >= 0 and level == last, level
        if not steady or level in timed or level > usable_cpus() - 1:
            # no core free: the timing would take its share from the viewer, whose layers
            # then stall (the walk beside two busy processes: opening a scan 0.8-0.9 s
            # against 0.2-0.6 s); the plan times at the click instead
            continue
        with TimingAhead.lock:
            if TimingAhead.closed:
                return
            before = torch.get_num_threads()
            try:
                busy = recent_busy_cores() or 0.0
                torch.set_num_threads(thread_policy(dev, interactive, busy))
                # bf16 or fp32, timed (once per process) on a settled machine, as the plan's
                precision = inference.resolve_precision(dev, "auto")
                step_cost(dev, precision, 8, _TIMED_OUT_CH)  # 8: .shape.ShapePlanner.batch on a CPU
            finally:
                torch.set_num_threads(before)
        timed.add(level)


# -- the plan's steps, timed on its device -----------------------------------------------------


def probe_step(plan: Plan, out_ch: int, num_classes: int) -> tuple[Any, Any, Callable[[], None]]:
    """The plan's network on its device, a batch of random data of the plan's shape, and one
    training step of it (what the planner times, and what runs beside it when it times side
    by side)."""
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


def time_steps(
    plan: Plan, cfg: ExperimentConfig, fp: Fingerprint, what: What = What.ALL
) -> dict[str, float]:
    """Seconds per step of each kind of model, timed on the plan's device with random data of
    the plan's shape (a few steps each, after a warm-up step). The auxiliary tasks' steps only
    for a run that trains teachers (``what``): a baseline's click waits for no task's timing."""
    dev = torch.device(plan.device)
    b = plan.batch_size
    out_ch = 1 if fp.num_classes == 2 and cfg.model.binary_sigmoid else fp.num_classes
    teachers = What.parse(what).trains_teachers
    if plan.untimed:
        return untimed_timings(plan, cfg, fp)
    timer = _StepTimer(dev)
    level = load_level()
    known = _TIMED_STEPS.get(
        _timed_key(dev, plan.precision, level, b, plan.width, plan.depth, plan.patch)
    )
    if known is not None and dev.type == "cpu" and not teachers:
        # timed already for the shape (by step_cost: the same network, two classes, this
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
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)
        s = self.timed(fn, n)
        if self.dev.type == "cuda":
            self.peaks.append(torch.cuda.max_memory_allocated(self.dev) / 2**20)
        return s


def _sync(dev: Any) -> None:
    if getattr(dev, "type", "") == "cuda":
        torch.cuda.synchronize(dev)


def _time_task_steps(
    plan: Plan, cfg: ExperimentConfig, fp: Fingerprint, net: Any, timer: _StepTimer, seg_s: float
) -> dict[str, float]:
    """Seconds per joint step of each of the run's tasks (``task:<name>``), on random
    volumes of the plan's shape; a task that cannot run on them is priced as a segmentation
    step (``seg_s``: the run's own check explains why it cannot run)."""
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


def nominal_timings(plan: Plan, cfg: ExperimentConfig) -> dict[str, float]:
    """Step times from FLOPs at a nominal 50 GFLOP/s (when timing is not wanted: tests)."""
    f = flops_per_sample(plan.width, plan.depth, plan.patch, 2) * plan.batch_size
    seg = 3 * f / 50e9
    out = {"seg": seg, "fwd": f / 50e9, "eval": 1.0, "soft": 1.0}
    out["student"] = student_step_s(out, cfg)
    for task in cfg.stage1.tasks:
        out[f"task:{task}"] = seg
    return out


# -- seconds per model, from the timed steps ---------------------------------------------------


def unit_step_s(
    u: str, t: dict[str, float], cfg: ExperimentConfig, cached_pretext: Sequence[str] = ()
) -> tuple[float, float]:
    """(seconds per segmentation step, seconds of pre-training per segmentation step) of the
    model ``u``, from the step timings ``t``."""
    s1 = cfg.stage1
    if u == "baseline":
        return t["seg"], 0.0
    mode = mode_of(u)
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
