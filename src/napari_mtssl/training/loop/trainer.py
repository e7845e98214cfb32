"""The small loop every model trains through, as a generator.

A unit (:class:`UnitSpec`) is a network, a list of loss terms (:mod:`.terms`) and a number of
steps. :func:`train_unit` knows only that: it collects the terms' modules into one optimiser,
opens the batch streams they read, and each step adds ``weight * loss`` over the terms. Around
the step sit its hooks: the resumable checkpoint (:class:`_Checkpoint`), validation, progress
events, and the stop / pause / deadline checks.

It yields ``progress`` events and returns its result; it checks ``stop()`` between steps and,
when asked, saves a resumable checkpoint (safetensors + JSON) and returns ``{"stopped": True}``.
Calling it again with the same unit name and checkpoint folder resumes at the saved step.
Every step re-seeds its random sources from ``(seed, step)``, so a resumed run reproduces an
uninterrupted one on the CPU.

The loss of one step (each term draws its own batch, METHOD.md)::

    seg_weight * l_seg(seg batch)                             # baseline, joint, fine-tune
  + sum_i lambda_i * l_i(task i batch)                         # joint, all-jointly, pretrain
  + alpha * l_kd(seg batch [+ unlabelled batch], teachers)    # student (seg_weight = 1 - alpha)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_mtssl.events import Events, Note, Progress, Resumed
from napari_mtssl.ids import Stage
from napari_mtssl.training.config import ExperimentConfig
from napari_mtssl.training.data.slices import BatchStream, ScanData, StudyData, augment_with_soft
from napari_mtssl.training.loop import checkpoints
from napari_mtssl.training.loop.metrics import summarise, volume_scores
from napari_mtssl.training.loop.pace import Pace
from napari_mtssl.training.loop.terms import SegForward, Term
from napari_mtssl.training.prediction import inference, postprocess
from napari_mtssl.training.prediction.inference import (
    BF16_FASTER,
    autocast,
    resolve_precision,
    sliding_window_probs,
)

__all__ = ["UnitSpec", "train_unit", "evaluate", "score_predictions", "step_seed"]

StopFn = Callable[[], bool]


class Interrupted(Exception):
    """A stop request arrived during a validation pass."""


def step_seed(seed: int, stream: int, step: int) -> list[int]:
    """Entropy for the generator of one stream at one step (see module docstring)."""
    return [int(seed) & 0xFFFFFFFF, int(stream), int(step)]


@dataclass
class UnitSpec:
    """One model's training: the loss terms it learns from and for how long."""

    name: str  # the unit's (and checkpoint's) name, e.g. "sdm:joint"
    stage: Stage  # (a plain string is read as its Stage)
    steps: int
    terms: list[Term]
    task_label: str | None = None  # for events: the task (or "all")
    mode: str | None = None  # for events: "joint" | "pretrain" | "finetune" | None
    model: str | None = None  # for events: the model name the unit produces
    evaluate: bool = True  # validation Dice during training (not for pre-training)
    eval_every: int = 0  # validation every N steps and at the end; 0: halfway and at the end
    # > 0: keep an exponential moving average of the weights with this decay (Mean Teacher);
    # validation scores it and the unit's model is the average.
    ema: float = 0.0
    lr_scale: float = 1.0  # the peak learning rate as a share of optim.lr (a warm start's)

    def __post_init__(self) -> None:
        self.stage = Stage(self.stage)


def _lr(cfg: ExperimentConfig, step: int, total: int, scale: float = 1.0) -> float:
    o = cfg.optim
    peak = o.lr * scale
    if o.warmup_steps and step < o.warmup_steps:
        return peak * (step + 1) / o.warmup_steps
    if not o.cosine:
        return peak
    t = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def evaluate(
    net: torch.nn.Module,
    scans: Sequence[ScanData],
    study: StudyData,
    device: torch.device,
    *,
    hd95: bool = False,
    **predict: Any,
) -> dict[str, Any]:
    """Validation scores in each scan's own geometry, on its labelled slices (3D per volume):
    the label maps of :func:`predict_labelled` (``predict``: its ``precision``, ``overlap``,
    ``batch_size`` and ``stop``), scored by :func:`score_predictions`.

    Both the raw masks and the masks keeping only the largest foreground component are scored;
    the post-processing is kept (``postprocess``) only when it raises the mean Dice, nnU-Net's
    rule, and the scores returned are those of the kept variant (``raw_mean_dice``: without).
    """
    preds, truths = predict_labelled(net, scans, study, device, **predict)
    return score_predictions(preds, truths, study, hd95=hd95)


@torch.no_grad()
def predict_labelled(
    net: torch.nn.Module,
    scans: Sequence[ScanData],
    study: StudyData,
    device: torch.device,
    *,
    precision: str = "fp32",
    overlap: float = 0.5,
    batch_size: int = 16,
    stop: StopFn | None = None,
) -> tuple[list[np.ndarray], list[ScanData]]:
    """The label maps of the scans that have labels, in each scan's own grid, and those scans
    (what :func:`evaluate` scores): sliding-window prediction at the planned grid, mapped back
    as :func:`predict_scan` does. ``stop()`` is asked between slabs of windows: when it answers
    True, :class:`Interrupted` is raised (a stop request never waits for a whole pass)."""
    preds, truths = [], []
    for s in scans:
        if s.labels_native is None:
            continue
        z, (h, w) = s.n_slices, s.slice_map.native
        pred = np.empty((z, h, w), np.uint8)
        for z0, p in sliding_window_probs(
            net,
            s.image,
            study.patch,
            device,
            overlap=overlap,
            precision=precision,
            batch_size=batch_size,
        ):
            if stop is not None and stop():
                raise Interrupted("validation stopped")
            native = s.slice_map.to_native(s.unpad(p)).numpy()
            pred[z0 : z0 + native.shape[1]] = native.argmax(0)  # numpy: 9x faster, see inference
        preds.append(pred)
        truths.append(s)
    return preds, truths


def score_predictions(
    preds: Sequence[np.ndarray], truths: Sequence[ScanData], study: StudyData, *, hd95: bool
) -> dict[str, Any]:
    """Scores of label maps in each scan's own grid against its labelled slices, raw and with
    only the largest foreground component kept; the variant kept is the one with the higher
    mean Dice (nnU-Net's rule), ``raw_mean_dice`` the score without it."""

    def scores(variant: str, with_hd95: bool) -> dict[str, Any]:
        per = [
            volume_scores(
                postprocess.apply(p, variant),
                s.labels_native,
                study.num_classes,
                s.spacing,
                slices=np.flatnonzero(s.labelled),
                hd95=with_hd95,
            )
            for p, s in zip(preds, truths)
        ]
        return summarise(per, study.label_names, study.num_classes)

    raw = scores("none", False)
    post = scores("largest_component", False)
    better = (
        post["mean_dice"] is not None
        and raw["mean_dice"] is not None
        and post["mean_dice"] > raw["mean_dice"] + 1e-4
    )
    variant = "largest_component" if better else "none"
    out = scores(variant, True) if hd95 else (post if better else raw)
    out["postprocess"] = variant
    out["raw_mean_dice"] = raw["mean_dice"]
    return out


class _Streams:
    """The unit's batch streams, each a pure function of (seed, stream, step) prepared ahead in
    a thread: the shared segmentation batch (stream 1) and unlabelled batch (stream 2) when a
    term reads them, and each term's own streams."""

    def __init__(
        self,
        spec: UnitSpec,
        study: StudyData,
        cfg: ExperimentConfig,
        start: int,
        pin: bool,
        end: int | None = None,
    ):
        dc, seed = cfg.data, cfg.seed
        self.unlabelled = any(t.reads_unlabelled for t in spec.terms)
        self.features = any(t.reads_features for t in spec.terms)
        soft = any(t.reads_soft for t in spec.terms)
        makers: dict[str, tuple[int, Callable]] = {}
        if any(t.reads_seg for t in spec.terms):
            lab = study.labelled_slices()
            if not lab:
                raise ValueError("no labelled training slices to train segmentation on")
            makers["seg"] = (
                1,
                lambda step, rng: study.seg_batch(
                    lab, dc.batch_size, rng, dc.fg_oversample, soft=soft
                ),
            )
            unl = study.unlabelled_slices() if self.unlabelled else []
            if soft:  # only slices whose ensemble maps are stored
                unl = [(i, z) for i, z in unl if study.train[i].soft is not None]
            if unl:
                makers["unl"] = (
                    2,
                    lambda step, rng: study.seg_batch(unl, dc.batch_size, rng, 0.0, soft=soft),
                )
        for t in spec.terms:
            makers.update(t.streams(study, dc.task_batch_size or dc.batch_size, dc.use_unlabelled))

        def seeded(stream: int, make: Callable) -> Callable[[int], dict]:
            return lambda step: make(step, np.random.default_rng(step_seed(seed, stream, step)))

        self.streams = {
            k: BatchStream(seeded(n, make), start, end or spec.steps, dc.prefetch, pin)
            for k, (n, make) in makers.items()
        }

    @property
    def wait_s(self) -> float:
        return sum(s.wait_s for s in self.streams.values())

    def close(self) -> None:
        for s in self.streams.values():
            s.close()


class _Inputs:
    """One step's inputs for the terms (:class:`.terms.StepInputs`): the shared segmentation
    forward, computed at the first term that reads it, and the terms' own batches."""

    def __init__(self, net, streams: _Streams, cfg: ExperimentConfig, gen, device, average=None,
                 progress: float = 0.0):  # fmt: skip
        self.net, self._s, self.cfg, self.gen, self._device = net, streams, cfg, gen, device
        self.average, self.progress = average, progress
        self._fwd: SegForward | None = None

    def _augmented(self, key: str, labels: bool):
        b = self.batch(key)
        soft = b["soft"].float() / 255.0 if "soft" in b else None
        return augment_with_soft(
            b["image"], b["label"] if labels else None, soft, self.cfg.data, self.gen
        )

    def batch(self, key: str) -> dict[str, torch.Tensor]:
        b = self._s.streams[key].get()
        return {k: v.to(self._device, non_blocking=True) for k, v in b.items()}

    def seg(self) -> SegForward:
        if self._fwd is None:
            x, y, soft = self._augmented("seg", True)
            xin = x
            if "unl" in self._s.streams:
                u, _, su = self._augmented("unl", False)
                xin = torch.cat([x, u], 0)
                soft = None if soft is None or su is None else torch.cat([soft, su], 0)
            feats = None
            if self._s.features:
                feats = self.net.encode(xin)
                logits = self.net.seg_head(self.net.decode(feats))
            else:
                logits = self.net(xin)
            self._fwd = SegForward(xin, logits, y, x.shape[0], feats, soft)
        return self._fwd


class _Checkpoint:
    """The unit's resumable checkpoint: restored at the start, saved every
    ``cfg.checkpoint_every_s`` (a crash loses at most that) and when the unit stops or pauses."""

    def __init__(self, ckpt_dir, name: str, modules: dict, opt, scaler, every_s: float):
        self.dir, self.name, self.every_s = ckpt_dir, name, every_s
        self.modules, self.opt, self.scaler = modules, opt, scaler
        self.last = time.monotonic()

    def restore(self) -> tuple[int, float, float | None]:
        """(step, seconds trained, last validation Dice) of a saved state, or a fresh start."""
        if self.dir is None or not checkpoints.state_exists(self.dir, self.name):
            return 0, 0.0, None
        info = checkpoints.load_state(
            self.dir, self.name, modules=self.modules, optimizer=self.opt, scaler=self.scaler
        )
        extra = info["extra"]
        return info["step"], float(extra.get("elapsed_s", 0.0)), extra.get("val_dice")

    def save(self, step: int, elapsed_s: float, val_dice: float | None) -> None:
        if self.dir is not None:
            checkpoints.save_state(
                self.dir,
                self.name,
                modules=self.modules,
                optimizer=self.opt,
                scaler=self.scaler,
                step=step,
                extra={"elapsed_s": elapsed_s, "val_dice": val_dice},
            )
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every_s

    def remove(self) -> None:
        if self.dir is not None:
            checkpoints.remove_state(self.dir, self.name)


class _Optimiser:
    """The unit's trainable modules (the network's and each term's) under one AdamW, with the
    precision and the loss scaler of the device."""

    def __init__(self, spec: UnitSpec, net: torch.nn.Module, cfg: ExperimentConfig, device):
        self.modules = {"net": net.to(device).train()}
        for term in spec.terms:
            self.modules.update(term.to(device).modules())
        self.params = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            self.params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
        )
        self.precision = resolve_precision(device, cfg.optim.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")


class _Validation:
    """Validation Dice every ``spec.eval_every`` steps (default: halfway) and at the end.

    The end moves while a unit trains (its pace re-counts its steps), so a pass falls at a
    multiple of ``every`` only where at least ``every`` steps are left after it: a count grown
    past the planned one does not validate at the planned end and again at the new one. The
    last pass's label maps are kept until the next step (:meth:`forget`), so a unit that ends
    just after it adds HD95 to those instead of predicting the same model again; held no
    longer, they add nothing to the pass's own peak of memory."""

    def __init__(self, spec: UnitSpec, net, study: StudyData, cfg, device, precision: str):
        self.on = spec.evaluate and bool(study.val)
        self.every = spec.eval_every or max(1, spec.steps // 2)
        self.net, self.study, self.cfg, self.device = net, study, cfg, device
        self.precision = precision
        self._last: tuple[int, list, list] | None = None  # (step, label maps, their scans)

    def due(self, step: int, total: int) -> bool:
        periodic = step % self.every == 0 and step + self.every <= total
        return self.on and (periodic or step == total)

    def scores(
        self, hd95: bool, stop: StopFn | None = None, step: int | None = None
    ) -> dict[str, Any]:
        """The scores of the model now (``step``: the step it is at, which a later call at the
        same step reuses the label maps of)."""
        if step is None or self._last is None or self._last[0] != step:
            preds, truths = predict_labelled(
                self.net,
                self.study.val,
                self.study,
                self.device,
                precision=self.precision,
                overlap=self.cfg.data.infer_overlap,
                stop=stop,
            )
            self.net.train()
            self._last = None if step is None else (step, preds, truths)
        else:
            _, preds, truths = self._last
        return score_predictions(preds, truths, self.study, hd95=hd95)

    def forget(self) -> None:
        """The model moved on (a step was taken): the last pass's maps are not its own."""
        self._last = None


class _Average:
    """An exponential moving average of the network's weights (Mean Teacher, Tarvainen &
    Valpola 2017) when ``decay`` > 0: what validation scores and what the unit keeps. A steadier
    model than the last step's weights for the same steps, at the cost of one weight copy."""

    def __init__(self, net: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.net = net
        self.copy = None
        if self.decay > 0:
            self.copy = copy.deepcopy(net)
            for p in self.copy.parameters():
                p.requires_grad_(False)

    @property
    def model(self) -> torch.nn.Module:
        return self.net if self.copy is None else self.copy

    def modules(self) -> dict[str, torch.nn.Module]:
        return {} if self.copy is None else {"ema": self.copy}

    @torch.no_grad()
    def update(self) -> None:
        if self.copy is None:
            return
        for pe, p in zip(self.copy.parameters(), self.net.parameters()):
            pe.lerp_(p.detach(), 1.0 - self.decay)
        for be, b in zip(self.copy.buffers(), self.net.buffers()):
            be.copy_(b)

    def into(self, net: torch.nn.Module) -> None:
        """The unit's model becomes the average."""
        if self.copy is not None:
            net.load_state_dict(self.copy.state_dict())


def _step(spec: UnitSpec, net, streams: _Streams, o: _Optimiser, cfg, device, step: int,
          average: torch.nn.Module | None = None, total: int | None = None):  # fmt: skip
    """One optimiser step over the terms; returns each term's loss and the total, and the
    learning rate. Every random source is seeded from (seed, step). ``total``: the unit's
    step count now (its pace may have changed it), for the schedule."""
    total = total or spec.steps
    torch.manual_seed((cfg.seed * 1_000_003 + step) % (2**63))
    gen = torch.Generator().manual_seed((cfg.seed * 7_919 + step * 104_729) % (2**63))
    lr = _lr(cfg, step, total, spec.lr_scale)
    for g in o.opt.param_groups:
        g["lr"] = lr
    inputs = _Inputs(net, streams, cfg, gen, device, average, step / max(1, total))
    parts: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=device)
    with autocast(device, o.precision):
        for term in spec.terms:
            loss = term.loss(inputs)
            parts[term.name] = loss
            total = total + term.weight * loss
    o.opt.zero_grad(set_to_none=True)
    o.scaler.scale(total).backward()
    if cfg.optim.grad_clip > 0:
        o.scaler.unscale_(o.opt)
        torch.nn.utils.clip_grad_norm_(o.params, cfg.optim.grad_clip)
    o.scaler.step(o.opt)
    o.scaler.update()
    for term in spec.terms:
        term.after_step(net)
    vals = {k: float(v.detach()) for k, v in parts.items()}
    vals["total"] = float(total.detach())
    if not all(math.isfinite(v) for v in vals.values()):
        raise FloatingPointError(
            f"{spec.name}: the loss became {vals} at step {step + 1}; lower optim.lr"
        )
    return vals, lr


def train_unit(
    spec: UnitSpec,
    net: torch.nn.Module,
    study: StudyData,
    cfg: ExperimentConfig,
    device: torch.device,
    *,
    ckpt_dir: str | Path | None = None,
    stop: StopFn | None = None,
    pause_at: int | None = None,
    deadline: float | None = None,
    grow: float = 1.0,
    threads_max: int = 0,
    aim_s: float = 0.0,
    probe_at: int | None = None,
    recheck_precision: bool = False,
    val_guess: tuple[float, float] | None = None,
    floor: int = 0,
) -> Events[dict]:
    """Train ``net`` (and the modules of ``spec``'s terms) for ``spec.steps`` steps.

    ``pause_at``: stop at that step with a resumable checkpoint and the validation scores
    (successive halving: calling again with the same ``ckpt_dir`` goes on from there).
    ``deadline`` (``time.monotonic()``): the unit ends by then, final validation included: its
    step count is re-timed while it trains so that it ends by ``deadline + aim_s`` (``aim_s``
    <= 0: a run aims at its budget and keeps the rest as slack; :class:`.pace.Pace`: fewer
    steps when the machine slows down, up to ``grow`` x more when it speeds up;
    ``threads_max`` > 0 fits the threads to the free cores), and a step that would leave too
    little time for the final validation (as last timed) before ``deadline`` is not taken: the
    unit ends where it is, as finished. ``probe_at``: validate at that step as well, the
    result's ``probe`` (``{"step", "dice"}``: the baseline at the teachers' rung).
    ``recheck_precision``: fp32 was chosen on a CPU because bf16 did not time faster, perhaps
    on a busy machine; once the machine is quiet (``threads_max`` > 0), bf16 is timed again
    and taken if it is faster (the result's ``precision`` says which the unit ended with).
    ``val_guess``: (seconds of a validation pass, seconds of a forward batch) as the plan timed
    them: the time kept for the final validation until the unit has timed a pass of its own,
    scaled by a forward batch timed now and then while it trains.
    ``floor``: the fewest steps the budget must fit, checked at the first window of a unit
    that starts afresh (an untimed plan; :class:`.pace.TooFewSteps` where it fits fewer).
    """
    o = _Optimiser(spec, net, cfg, device)
    avg = _Average(net, spec.ema)
    kept = {**o.modules, **avg.modules()}
    ckpt = _Checkpoint(ckpt_dir, spec.name, kept, o.opt, o.scaler, cfg.checkpoint_every_s)
    start, elapsed0, val = ckpt.restore()
    if start:
        yield Resumed(spec.model or spec.name, start)
    check = _Validation(spec, avg.model, study, cfg, device, o.precision)
    t0 = time.perf_counter()

    def seconds() -> float:  # training time of the unit, earlier sessions included
        return elapsed0 + time.perf_counter() - t0

    recheck = _precision_recheck(o, check) if recheck_precision and o.precision == "fp32" else None
    time_fwd = _forward_timer(check, study, cfg, device) if val_guess else None
    pace = _pace(spec, device, pause_at, deadline, aim_s, grow, threads_max, recheck, val_guess,
                 time_fwd, 0 if start else floor)  # fmt: skip
    streams = _Streams(spec, study, cfg, start, device.type == "cuda", end=pace.cap)

    def progress(step: int, ema: dict, lr: float, val: float | None) -> dict:
        return _progress(spec, step, start, ema, lr, val, elapsed0, t0, streams.wait_s,
                         pace.total)  # fmt: skip

    parts = _Parts(o, avg, ckpt, check, pace, streams, seconds, progress)
    pace.start(start)
    try:
        result = yield from _loop(spec, net, cfg, device, parts, start, val, stop=stop,
                                  pause_at=pause_at, deadline=deadline, probe_at=probe_at)  # fmt: skip
    finally:
        streams.close()
    if result.get("stopped") or result.get("paused"):
        return result  # resumable from its checkpoint
    avg.into(net)
    ckpt.remove()
    net.eval()
    return result


@dataclass
class _Parts:
    """What a unit's loop works with (:func:`train_unit` makes them)."""

    o: _Optimiser
    avg: _Average
    ckpt: _Checkpoint
    check: _Validation
    pace: Pace
    streams: _Streams
    seconds: Callable[[], float]  # the unit's training time, earlier sessions included
    progress: Callable[..., dict]  # (step, losses, lr, val) -> the Progress event


def _loop(
    spec: UnitSpec,
    net: torch.nn.Module,
    cfg: ExperimentConfig,
    device: torch.device,
    p: _Parts,
    start: int,
    val: float | None,
    *,
    stop: StopFn | None,
    pause_at: int | None,
    deadline: float | None,
    probe_at: int | None,
) -> Events[dict]:
    """The steps of a unit from ``start`` (see :func:`train_unit`); returns its result:
    stopped (saved, resumable), paused at ``pause_at``, or finished (maybe ended early by
    ``deadline``)."""
    ema: dict[str, float] = {}
    final, step, ended_early, probe = None, start, False, None
    step_s = 0.0  # how long the last step took: the next one is not begun if it could not end
    stopped = {"stopped": True, "name": spec.name}
    while step < p.pace.total:
        elapsed = p.seconds()
        if stop is not None and stop():
            p.ckpt.save(step, elapsed, val)
            return {**stopped, "step": step}
        if pause_at is not None and step >= pause_at:
            return _paused(p.check, p.ckpt, step, p.seconds, val, ema)
        if deadline is not None and step > start and _too_late(p.pace, deadline, step_s):
            ended_early = True
            break
        if step > start and p.ckpt.due():
            p.ckpt.save(step, elapsed, val)
        t_step = time.monotonic()
        vals, lr = _step(spec, net, p.streams, p.o, cfg, device, step, p.avg.copy, p.pace.total)
        step_s = time.monotonic() - t_step
        p.check.forget()
        p.avg.update()
        step += 1
        _smooth(ema, vals)
        note = p.pace.tick(step)
        if note:
            yield Note(f"{spec.model or spec.name}: {note}")
        if _validation_due(p.check, step, p.pace.total, probe_at):
            got = _validate(p.check, p.pace, step, stop)
            if got is None:  # stopped mid-validation: saved at this step, resumable
                p.ckpt.save(step, p.seconds(), val)
                return {**stopped, "step": step}
            val, final = got["mean_dice"], got if step == p.pace.total else final
            if step == probe_at:
                probe = {"step": step, "dice": val}
        yield p.progress(step, ema, lr, val)
    if ended_early and p.check.on:  # the maps of a pass at this very step are reused
        final = p.check.scores(hd95=True, step=step)
        val = final["mean_dice"]
    return {"stopped": False, "ended_early": ended_early, "steps": step, "val_dice": val,
            "seconds": p.seconds(), "losses": ema, "metrics": final, "precision": p.o.precision,
            "data_wait_s": p.streams.wait_s, "probe": probe}  # fmt: skip


def _pace(
    spec: UnitSpec,
    device: torch.device,
    pause_at: int | None,
    deadline: float | None,
    aim_s: float,
    grow: float,
    threads_max: int,
    recheck: Callable[[], str | None] | None = None,
    val_guess: tuple[float, float] | None = None,
    time_fwd: Callable[[], float] | None = None,
    floor: int = 0,
) -> Pace:
    """The unit's step count, kept so that it ends by ``deadline + aim_s`` where it has one;
    adaptive (more steps when the machine speeds up, threads fitted to the free cores) on a
    CPU, for a unit that does not pause at a rung."""
    adaptive = pause_at is None and device.type == "cpu"
    return Pace(
        spec.steps,
        deadline + aim_s if pause_at is None and deadline is not None else None,
        grow=grow if adaptive else 1.0,
        threads_max=threads_max if adaptive else 0,
        recheck=recheck if adaptive else None,
        val_guess=val_guess,
        time_fwd=time_fwd,
        floor=floor if deadline is not None else 0,
    )


def _forward_timer(check: _Validation, study: StudyData, cfg, device) -> Callable[[], float]:
    """Seconds of one forward batch of the model validation scores (the plan's shape, no
    gradient, the unit's precision), as the plan timed one: how much slower a validation pass
    will run now. Zeros in, so no random source is drawn."""
    x = torch.zeros(cfg.data.batch_size, 1, study.patch, study.patch, device=device)

    def seconds() -> float:
        t = time.perf_counter()
        check.net.eval()
        with torch.no_grad(), autocast(device, check.precision):
            check.net(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        check.net.train()
        return time.perf_counter() - t

    return seconds


def _precision_recheck(o: _Optimiser, check: _Validation) -> Callable[[], str | None]:
    """Time bf16 against fp32 again (the machine is quiet now) and switch the unit's steps and
    validation to bf16 where it is faster: autocast changes only how a step computes, the
    weights and the optimiser stay fp32, so the switch can happen between two steps."""

    def recheck() -> str | None:
        speedup = inference.quiet_bf16_speedup()
        if speedup <= BF16_FASTER:
            return None
        o.precision = check.precision = "bf16"
        return (
            f"the machine is quieter than when the run was planned: a bf16 step now runs "
            f"{speedup:.2f}x the speed of fp32, so the steps use bf16 from here"
        )

    return recheck


def _validation_due(check: _Validation, step: int, total: int, probe_at: int | None) -> bool:
    """Validate after ``step``: every ``eval_every`` steps and at the last one (with HD95: the
    report), and at ``probe_at`` (the baseline at the teachers' rung)."""
    return check.due(step, total) or (check.on and step == probe_at and step < total)


def _too_late(pace: Pace, deadline: float, step_s: float = 0.0) -> bool:
    """Whether a step now, as long as the last one (``step_s``), would leave too little time
    before ``deadline`` for the final validation (as last timed)."""
    now = time.monotonic()
    return now + step_s > deadline - pace.reserve_s(now)


def _smooth(ema: dict[str, float], vals: dict[str, float]) -> None:
    """The losses' moving average (0.9), in place."""
    for k, v in vals.items():
        ema[k] = v if k not in ema else 0.9 * ema[k] + 0.1 * v


def _paused(check, ckpt, step: int, seconds: Callable[[], float], val, ema) -> dict:
    """Pause at ``step`` (successive halving's rung): validate, save a resumable checkpoint,
    and return the scores."""
    m = check.scores(hd95=True) if check.on else None
    ckpt.save(step, seconds(), val)
    v = None if m is None else m["mean_dice"]
    return {"stopped": False, "paused": True, "steps": step, "metrics": m,
            "seconds": seconds(), "val_dice": v, "losses": ema}  # fmt: skip


def _validate(check, pace: Pace, step: int, stop: StopFn | None) -> dict[str, Any] | None:
    """The validation scores at ``step`` (with HD95 at the last step; the time it took is
    told to ``pace``), or None where a stop request interrupted it."""
    tv = time.perf_counter()
    try:
        got = check.scores(hd95=step == pace.total, stop=stop, step=step)
    except Interrupted:
        return None
    pace.validated(time.perf_counter() - tv)
    return got


def _progress(spec, step, start, ema, lr, val, elapsed0, t0, wait_s, total=None) -> Progress:
    took = time.perf_counter() - t0
    total = total or spec.steps
    return Progress(
        model=spec.model or spec.name,
        step=step,
        total=total,
        stage=spec.stage.value,
        task=spec.task_label,
        mode=spec.mode,
        losses={k: round(v, 5) for k, v in ema.items()},
        lr=lr,
        val_dice=val,
        eta_s=took / max(1, step - start) * (total - step),
        elapsed_s=elapsed0 + took,
        data_wait_s=wait_s,
    )
