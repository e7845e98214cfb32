"""Benchmarks 1 and 2: a stage-1 joint step of the engine against a bare PyTorch loop.

Both train the same network (same seed) with the same task head on the same batches (the
engine's own pure batch builders, seeded by ``(seed, stream, step)``), the same augmentation,
Dice + CE loss, AdamW and gradient clipping. The bare loop gets its batches pre-built outside the
timed region; the engine builds them in its background prefetch threads while it trains, and
adds its per-step bookkeeping (lr schedule, re-seeding, finite-loss check, progress events).
The ratio ``bare time / engine time`` is the engine's throughput relative to the bare loop.

Repetitions alternate engine and bare (ABAB...) so a change of the host's load hits both.
Time waiting for batches is the engine's own ``data_wait_s`` over the timed steps.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch


def _engine(study, cfg, task_name: str, steps: int, warmup: int) -> dict[str, float]:
    from napari_mtssl.training.loop import stages
    from napari_mtssl.training.loop.terms import build_term
    from napari_mtssl.training.loop.trainer import UnitSpec, train_unit

    net = stages.new_net(cfg, study.num_classes)
    task = stages.new_task(task_name, net, cfg, study.num_classes)
    terms = [build_term("seg"), build_term("task", task=task)]
    spec = UnitSpec("bench", "stage1", steps, terms, evaluate=False)
    marks: dict[int, tuple[float, float]] = {}
    for ev in train_unit(spec, net, study, cfg, torch.device("cpu")):
        marks[ev.step] = (time.perf_counter(), ev.data_wait_s)
    (t0, w0), (t1, w1) = marks[warmup], marks[steps]
    n = steps - warmup
    return {"step_s": (t1 - t0) / n, "wait_s": (w1 - w0) / n}


def _bare(study, cfg, task_name: str, steps: int, warmup: int) -> dict[str, float]:
    from napari_mtssl.training.data.slices import augment
    from napari_mtssl.training.loop import stages
    from napari_mtssl.training.loop.losses import SegLoss
    from napari_mtssl.training.loop.trainer import step_seed
    from napari_mtssl.training.prediction.inference import autocast

    dc, seed = cfg.data, cfg.seed
    net = stages.new_net(cfg, study.num_classes)
    task = stages.new_task(task_name, net, cfg, study.num_classes)
    lab = study.labelled_slices()
    pool = study.task_pool(task, dc.use_unlabelled)
    batches = []
    for s in range(steps):
        rng = np.random.default_rng(step_seed(seed, 1, s))
        sb = study.seg_batch(lab, dc.batch_size, rng, dc.fg_oversample)
        tb = study.task_batch(
            task, pool, dc.batch_size, np.random.default_rng(step_seed(seed, 10, s))
        )
        batches.append(
            (
                {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sb.items()},
                {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tb.items()},
            )
        )
    net.train()
    task.train()
    params = [p for m in (net, task) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    seg_loss = SegLoss()
    gen = torch.Generator().manual_seed(seed)
    t0 = 0.0
    for s, (sb, tb) in enumerate(batches):
        if s == warmup:
            t0 = time.perf_counter()
        with autocast(torch.device("cpu"), cfg.optim.precision):
            x, y = augment(sb["image"], sb["label"], dc, gen)
            loss = seg_loss(net(x), y) + task(net, tb)["loss"].float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        task.after_step(net)
    return {"step_s": (time.perf_counter() - t0) / (steps - warmup)}


def bench(
    tasks: list[str], steps: int = 60, warmup: int = 10, reps: int = 3, threads: int = 1
) -> dict[str, Any]:
    from napari_mtssl import api
    from napari_mtssl.training.data.slices import StudyData
    from napari_mtssl.training.planning.fingerprint import fingerprint
    from napari_mtssl.training.planning.planner import make_plan

    from .common import acdc_workspace, spread

    torch.set_num_threads(threads)
    ws = acdc_workspace(3)
    cfg = api.make_config("quick", budget="1h", tasks=tasks, num_threads=threads)
    plan = make_plan(fingerprint(ws), cfg, "stage1", allocate_steps=False)
    cfg = plan.apply(cfg)
    study = StudyData.from_workspace(ws, plan.preprocessing(), plan.patch)
    out: dict[str, Any] = {
        "config": {
            "plan": "the default plan for ACDC (1 h budget)",
            "patch": plan.patch,
            "depth": plan.depth,
            "precision": cfg.optim.precision,
            "width": cfg.model.width,
            "batch_size": cfg.data.batch_size,
            "prefetch": cfg.data.prefetch,
            "steps_timed": steps - warmup,
            "reps": reps,
            "threads": threads,
            "data": "ACDC, 3 labelled patients",
        }
    }
    for name in tasks:
        eng, bare, ratio, wait = [], [], [], []
        for _ in range(reps):  # ABAB: engine, bare, engine, bare, ...
            e = _engine(study, cfg, name, steps, warmup)
            b = _bare(study, cfg, name, steps, warmup)
            eng.append(e["step_s"])
            bare.append(b["step_s"])
            ratio.append(b["step_s"] / e["step_s"])
            wait.append(e["wait_s"] / e["step_s"])
        out[name] = {
            "engine_step_s": spread(eng),
            "bare_step_s": spread(bare),
            "throughput_ratio": spread(ratio),
            "engine_steps_per_s": round(1 / spread(eng)["median"], 2),
            "data_wait_fraction": spread(wait),
        }
        print(name, out[name], flush=True)
    return out
