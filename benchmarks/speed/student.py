"""The student's step against a baseline step, side by side (ABAB on the same data).

Four units of the engine, each timed over the same steps after a warm-up, in alternation so a
change of the host's load hits all of them:

* ``baseline``: segmentation loss only (the step every budget is compared with);
* ``semi``: the default student (copy-paste self-training on the stored ensemble maps);
* ``paper_stored``: the paper's distillation reading the stored maps;
* ``paper_live``: the paper's distillation running both teachers on every batch (as before the
  maps were stored).

The ensemble maps are computed once before timing (two networks of the plan's shape, on 12
unlabelled scans); their cost is what the planner prices as the student's fixed time, and is
reported apart (``maps_s``).
"""

from __future__ import annotations

import time
from typing import Any

import torch


def _unit(study, cfg, kind: str, teachers, steps: int, warmup: int) -> float:
    from napari_mtssl.training.config import ExperimentConfig
    from napari_mtssl.training.loop import stages
    from napari_mtssl.training.loop.terms import build_term
    from napari_mtssl.training.loop.trainer import UnitSpec, train_unit

    c = ExperimentConfig.from_dict(cfg.to_dict())
    net = stages.new_net(c, study.num_classes)
    if kind == "baseline":
        terms = [build_term("seg")]
        ema = 0.0
    elif kind == "semi":
        terms = stages.semi_terms(c)
        ema = c.stage2.ema
    else:
        c.stage2.method, c.stage2.stored = "paper", kind == "paper_stored"
        terms = stages.distillation_terms(teachers, net, c)
        ema = 0.0
    spec = UnitSpec(f"bench-{kind}", "stage2", steps, terms, evaluate=False, ema=ema)
    marks: dict[int, float] = {}
    for ev in train_unit(spec, net, study, c, torch.device("cpu")):
        marks[ev.step] = time.perf_counter()
    return (marks[steps] - marks[warmup]) / (steps - warmup)


def bench(steps: int = 60, warmup: int = 10, reps: int = 3, threads: int = 1) -> dict[str, Any]:
    from napari_mtssl import api
    from napari_mtssl.training.data.slices import StudyData
    from napari_mtssl.training.loop import soft_labels, stages
    from napari_mtssl.training.planning.fingerprint import fingerprint
    from napari_mtssl.training.planning.planner import make_plan

    from .common import acdc_workspace, spread

    torch.set_num_threads(threads)
    ws = acdc_workspace(3)
    cfg = api.make_config("quick", budget="1h", num_threads=threads)
    plan = make_plan(fingerprint(ws), cfg, "all", allocate_steps=False)
    cfg = plan.apply(cfg)
    study = StudyData.from_workspace(ws, plan.preprocessing(), plan.patch)
    teachers = []
    for seed in (1, 2):
        cfg.seed = seed
        teachers.append(stages.new_net(cfg, study.num_classes).eval())
    cfg.seed = 0
    scans = soft_labels.choose_scans(study, 12, True, 0)
    t0 = time.perf_counter()
    gen = soft_labels.attach(
        study,
        teachers,
        ["bench-a", "bench-b"],
        torch.device("cpu"),
        None,  # in memory: the timing must not depend on an earlier run's cache
        overlap=cfg.data.infer_overlap,
        precision=cfg.optim.precision,
        scans=scans,
    )
    for _ in gen:
        pass
    maps_s = time.perf_counter() - t0
    kinds = ("baseline", "semi", "paper_stored", "paper_live")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(reps):
        for k in kinds:
            times[k].append(_unit(study, cfg, k, teachers, steps, warmup))
            print(k, round(times[k][-1], 4), flush=True)
    out: dict[str, Any] = {
        "config": {
            "plan": "the default plan for ACDC (1 h budget)",
            "patch": plan.patch,
            "width": cfg.model.width,
            "batch_size": cfg.data.batch_size,
            "precision": cfg.optim.precision,
            "steps_timed": steps - warmup,
            "reps": reps,
            "threads": threads,
            "maps": f"2 networks over {len(scans)} scans",
        },
        "maps_s": round(maps_s, 1),
    }
    for k in kinds:
        out[k] = {"step_s": spread(times[k])}
        if k != "baseline":
            ratio = [a / b for a, b in zip(times[k], times["baseline"])]
            out[k]["over_baseline"] = spread(ratio)
    print(out, flush=True)
    return out
