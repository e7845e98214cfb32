"""The generic step loop every model goes through, as a generator.

``train_unit`` yields ``progress`` events and returns its result; it checks ``stop()`` between
steps and, when asked, saves a resumable checkpoint (safetensors + JSON) and returns
``{"stopped": True}``. Calling it again with the same unit name and checkpoint folder resumes at
the saved step. Every step re-seeds its random sources from ``(seed, step)``, so a resumed run
reproduces an uninterrupted one on the CPU.

Loss of one step (each term draws its own batch, METHOD.md)::

    seg_weight * l_seg(seg batch)                             # baseline, joint, fine-tune
  + sum_i lambda_i * l_i(task i batch)                         # joint, all-jointly, pretrain
  + alpha * l_kd(seg batch [+ unlabelled batch], teachers)    # student (seg_weight = 1 - alpha)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoints, postprocess
from .config import ExperimentConfig
from .data import BatchStream, ScanData, StudyData, augment
from .inference import autocast, resolve_precision, sliding_window_probs
from .losses import SegLoss, class_probs, feature_nce_loss, kd_loss
from .metrics import summarise, volume_scores

__all__ = ["TaskTerm", "Distillation", "UnitSpec", "train_unit", "evaluate", "step_seed"]

StopFn = Callable[[], bool]


def step_seed(seed: int, stream: int, step: int) -> list[int]:
    """Entropy for the generator of one stream at one step (see module docstring)."""
    return [int(seed) & 0xFFFFFFFF, int(stream), int(step)]


@dataclass
class TaskTerm:
    task: Any  # AuxTask (a module with its heads)
    weight: float = 1.0


@dataclass
class Distillation:
    teachers: Sequence[torch.nn.Module]
    alpha: float = 0.5
    temperature: float = 1.0
    unlabelled: bool = True
    feature: bool = False
    feature_weight: float = 0.1


@dataclass
class UnitSpec:
    """One model's training: what it learns from and for how long."""

    name: str  # the unit's (and checkpoint's) name, e.g. "sdm:joint"
    stage: str  # "baseline" | "stage1" | "all_joint" | "stage2" | "retrain"
    steps: int
    seg_weight: float = 1.0  # 0: no segmentation term (pre-training)
    tasks: list[TaskTerm] = field(default_factory=list)
    distil: Distillation | None = None
    task_label: str | None = None  # for events: the task (or "all")
    mode: str | None = None  # for events: "joint" | "pretrain" | "finetune" | None
    model: str | None = None  # for events: the model name the unit produces
    evaluate: bool = True  # validation Dice during training (not for pre-training)


def _lr(cfg: ExperimentConfig, step: int, total: int) -> float:
    o = cfg.optim
    if o.warmup_steps and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if not o.cosine:
        return o.lr
    t = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
    return o.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def evaluate(
    net: torch.nn.Module,
    scans: Sequence[ScanData],
    study: StudyData,
    device: torch.device,
    *,
    precision: str = "fp32",
    overlap: float = 0.5,
    hd95: bool = False,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Validation scores in each scan's own geometry, on its labelled slices (3D per volume):
    sliding-window prediction at the planned grid, mapped back as :func:`predict_scan` does.

    Both the raw masks and the masks keeping only the largest foreground component are scored;
    the post-processing is kept (``postprocess``) only when it raises the mean Dice, nnU-Net's
    rule, and the scores returned are those of the kept variant (``raw_mean_dice``: without).
    """
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
            native = s.slice_map.to_native(s.unpad(p)).numpy()
            pred[z0 : z0 + native.shape[1]] = native.argmax(0)  # numpy: 9x faster, see inference
        preds.append(pred)
        truths.append(s)

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
) -> Generator[dict, None, dict]:
    """Train ``net`` (and the task heads of ``spec``) for ``spec.steps`` steps.

    ``pause_at``: stop at that step with a resumable checkpoint and the validation scores
    (successive halving: calling again with the same ``ckpt_dir`` goes on from there).
    ``deadline`` (``time.monotonic()``): past it the unit ends where it is, as finished, so a
    run on a machine that slowed down still ends within its budget.
    """
    stop = stop or (lambda: False)
    seed = cfg.seed
    dc = cfg.data
    seg_loss = SegLoss()
    tasks = [t.task.to(device).train() for t in spec.tasks]
    net.to(device).train()
    distil = spec.distil
    proj: torch.nn.ModuleDict | None = None
    if distil is not None:
        for t in distil.teachers:
            t.to(device).eval()
            for p in t.parameters():
                p.requires_grad_(False)
        if distil.feature:
            d = net.encoder_channels[-1]
            proj = torch.nn.ModuleDict(
                {
                    "student": torch.nn.Linear(d, 128),
                    **{
                        f"t{i}": torch.nn.Linear(t.encoder_channels[-1], 128)
                        for i, t in enumerate(distil.teachers)
                    },
                }
            ).to(device)

    modules: dict[str, torch.nn.Module] = {"net": net}
    for i, t in enumerate(tasks):
        modules[f"task{i}"] = t
    if proj is not None:
        modules["proj"] = proj
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    precision = resolve_precision(device, cfg.optim.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    start, elapsed0, last_val = 0, 0.0, None
    if ckpt_dir is not None and checkpoints.state_exists(ckpt_dir, spec.name):
        info = checkpoints.load_state(
            ckpt_dir, spec.name, modules=modules, optimizer=opt, scaler=scaler
        )
        start = info["step"]
        elapsed0 = float(info["extra"].get("elapsed_s", 0.0))
        last_val = info["extra"].get("val_dice")
        yield {"type": "resumed", "model": spec.model or spec.name, "step": start}

    # -- batch streams ------------------------------------------------------------------------
    lab_pool = study.labelled_slices()
    bsz = dc.batch_size
    tbsz = dc.task_batch_size or dc.batch_size
    pin = device.type == "cuda"
    streams: dict[str, BatchStream] = {}

    def seg_maker(stream: int, pool: list[tuple[int, int]], fg: float):
        def make(step: int) -> dict[str, np.ndarray]:
            rng = np.random.default_rng(step_seed(seed, stream, step))
            return study.seg_batch(pool, bsz, rng, fg)

        return make

    need_seg = spec.seg_weight > 0 or distil is not None
    if need_seg:
        if not lab_pool:
            raise ValueError("no labelled training slices to train segmentation on")
        streams["seg"] = BatchStream(
            seg_maker(1, lab_pool, dc.fg_oversample), start, spec.steps, dc.prefetch, pin
        )
    if distil is not None and distil.alpha > 0 and distil.unlabelled:
        unl = study.unlabelled_slices()
        if unl:
            streams["unl"] = BatchStream(
                seg_maker(2, unl, 0.0), start, spec.steps, dc.prefetch, pin
            )
    for i, t in enumerate(tasks):
        pool = study.task_pool(t, dc.use_unlabelled)
        if not pool:
            for s in streams.values():
                s.close()
            raise ValueError(f"task {t.name}: no slice of the training data can serve as a sample")

        def task_make(step: int, t=t, pool=pool, i=i) -> dict[str, np.ndarray]:
            rng = np.random.default_rng(step_seed(seed, 10 + i, step))
            return study.task_batch(t, pool, tbsz, rng)

        streams[f"task{i}"] = BatchStream(task_make, start, spec.steps, dc.prefetch, pin)

    t0 = time.perf_counter()
    final_scores: dict[str, Any] | None = None
    losses_avg: dict[str, float] = {}
    result: dict[str, Any]
    ended_early = False
    last_save = time.monotonic()

    def save(step: int) -> None:
        if ckpt_dir is not None:
            checkpoints.save_state(
                ckpt_dir,
                spec.name,
                modules=modules,
                optimizer=opt,
                scaler=scaler,
                step=step,
                extra={"elapsed_s": elapsed0 + time.perf_counter() - t0, "val_dice": last_val},
            )

    def scores(hd95: bool) -> dict[str, Any]:
        out = evaluate(
            net,
            study.val,
            study,
            device,
            precision=precision,
            overlap=dc.infer_overlap,
            hd95=hd95,
        )
        net.train()
        return out

    try:
        step = start
        while step < spec.steps:
            if stop():
                save(step)
                return {"stopped": True, "step": step, "name": spec.name}
            if pause_at is not None and step >= pause_at:
                m = scores(hd95=True) if spec.evaluate and study.val else None
                save(step)
                return {
                    "stopped": False,
                    "paused": True,
                    "steps": step,
                    "seconds": elapsed0 + time.perf_counter() - t0,
                    "metrics": m,
                    "val_dice": None if m is None else m["mean_dice"],
                    "losses": losses_avg,
                }
            if deadline is not None and step > start and time.monotonic() > deadline:
                ended_early = True
                break
            if time.monotonic() - last_save >= cfg.checkpoint_every_s and step > start:
                save(step)  # a crash (kill -9, power cut) loses at most this interval
                last_save = time.monotonic()
            torch.manual_seed((seed * 1_000_003 + step) % (2**63))
            gen = torch.Generator().manual_seed((seed * 7_919 + step * 104_729) % (2**63))
            lr = _lr(cfg, step, spec.steps)
            for g in opt.param_groups:
                g["lr"] = lr
            parts: dict[str, torch.Tensor] = {}
            total = torch.zeros((), device=device)
            with autocast(device, precision):
                if need_seg:
                    b = streams["seg"].get()
                    x = b["image"].to(device, non_blocking=True)
                    y = b["label"].to(device, non_blocking=True)
                    x, y = augment(x, y, dc, gen)
                    n_lab = x.shape[0]
                    xin = x
                    if "unl" in streams:
                        u = streams["unl"].get()["image"].to(device, non_blocking=True)
                        u, _ = augment(u, None, dc, gen)
                        xin = torch.cat([x, u], 0)
                    if distil is not None and distil.feature and proj is not None:
                        feats = net.encode(xin)
                        logits = net.seg_head(net.decode(feats))
                    else:
                        feats = None
                        logits = net(xin) if (distil is not None or spec.seg_weight > 0) else None
                    if spec.seg_weight > 0:
                        ls = seg_loss(logits[:n_lab], y)
                        parts["seg"] = ls
                        total = total + spec.seg_weight * ls
                    if distil is not None and distil.alpha > 0:
                        kd_in = xin if distil.unlabelled else x
                        kd_logits = logits if distil.unlabelled else logits[:n_lab]
                        with torch.no_grad():
                            tl = [t(kd_in).float() for t in distil.teachers]
                            ens = torch.stack([class_probs(v) for v in tl]).mean(0)
                            ens_t = (
                                ens
                                if distil.temperature == 1.0
                                else torch.stack(
                                    [class_probs(v, distil.temperature) for v in tl]
                                ).mean(0)
                            )
                        kd = kd_loss(kd_logits, ens, distil.temperature, ens_t)
                        parts["kd"] = kd["loss"]
                        total = total + distil.alpha * kd["loss"]
                        if feats is not None and proj is not None:
                            sv = proj["student"](feats[-1].float().mean((2, 3)))
                            fl = 0.0
                            for i, t in enumerate(distil.teachers):
                                with torch.no_grad():
                                    tf = t.encode(kd_in)[-1].float().mean((2, 3))
                                fl = fl + feature_nce_loss(sv, proj[f"t{i}"](tf))
                            fl = fl / len(distil.teachers)
                            parts["feat"] = fl
                            total = total + distil.feature_weight * fl
                for i, (term, task) in enumerate(zip(spec.tasks, tasks)):
                    tb = {
                        k: v.to(device, non_blocking=True)
                        for k, v in streams[f"task{i}"].get().items()
                    }
                    out = task(net, tb)
                    parts[task.name] = out["loss"]
                    total = total + term.weight * out["loss"].float()
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if cfg.optim.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            for task in tasks:
                task.after_step(net)
            step += 1
            vals = {k: float(v.detach()) for k, v in parts.items()}
            vals["total"] = float(total.detach())
            if not all(math.isfinite(v) for v in vals.values()):
                raise FloatingPointError(
                    f"{spec.name}: the loss became {vals} at step {step}; lower optim.lr"
                )
            for k, v in vals.items():
                losses_avg[k] = v if k not in losses_avg else 0.9 * losses_avg[k] + 0.1 * v
            every = cfg.stage1.eval_every or max(1, spec.steps // 2)
            if spec.evaluate and study.val and (step % every == 0 or step == spec.steps):
                # The last validation is the model's report (with HD95), so the pipeline
                # does not evaluate the same network again.
                final = step == spec.steps
                got = scores(hd95=final)
                last_val = got["mean_dice"]
                if final:
                    final_scores = got
            elapsed = elapsed0 + time.perf_counter() - t0
            done = step - start
            rate = (time.perf_counter() - t0) / max(1, done)
            yield {
                "type": "progress",
                "stage": spec.stage,
                "task": spec.task_label,
                "mode": spec.mode,
                "model": spec.model or spec.name,
                "step": step,
                "total": spec.steps,
                "losses": {k: round(v, 5) for k, v in losses_avg.items()},
                "lr": lr,
                "val_dice": last_val,
                "eta_s": rate * (spec.steps - step),
                "elapsed_s": elapsed,
                "data_wait_s": sum(s.wait_s for s in streams.values()),
            }
        if ended_early and spec.evaluate and study.val:
            final_scores = scores(hd95=True)
            last_val = final_scores["mean_dice"]
        result = {
            "stopped": False,
            "ended_early": ended_early,
            "steps": step,
            "seconds": elapsed0 + time.perf_counter() - t0,
            "losses": losses_avg,
            "val_dice": last_val,
            "metrics": final_scores,
            "data_wait_s": sum(s.wait_s for s in streams.values()),
        }
    finally:
        for s in streams.values():
            s.close()
    if ckpt_dir is not None:
        checkpoints.remove_state(ckpt_dir, spec.name)
    net.eval()
    return result
