"""Stage 1 one unit at a time vs units side by side (the local executor), on ACDC.

The same plan both ways: the run's shape and step counts are planned once (a 10-minute budget
on this machine), then fixed, and stage 1 (two tasks x two modes, successive halving as in the
product) trains with ``units_at_once=1`` (one unit, every thread of the plan) and with
``units_at_once=2`` (two units, one thread each), alternating A B A B so that a slow spell of
the shared machine does not fall on one side. Reported: the wall time of each run, the ratio,
the selections and every model's validation Dice (L = 3 labelled patients; the 20 validation
volumes of ACDC's val split). Nothing here asserts a timing.
"""

from __future__ import annotations

import time
from typing import Any


def _run(ws, cfg, lanes: int) -> dict[str, Any]:
    from napari_mtssl import api
    from napari_mtssl.training.running.pipeline import run_training

    c = type(cfg).from_dict(cfg.to_dict())
    c.units_at_once = lanes
    t0 = time.perf_counter()
    trained: dict[str, float] = {}
    first: list[float] = []

    def on(e) -> None:
        if e.type == "progress" and not first:
            first.append(time.perf_counter() - t0)
        if e.type == "model_done":
            trained[e.model] = time.perf_counter() - t0

    report = api.run(run_training(ws, c, "stage1"), on)
    wall = time.perf_counter() - t0
    models = report["models"]
    out = {
        "units_at_once": lanes,
        "wall_s": round(wall, 1),
        "training_s": round(wall - first[0], 1),  # from the first step to the report
        "selected": {t: s["mode"] for t, s in report["selected"].items()},
        "dice": {m: round(v["mean_dice"], 4) for m, v in models.items()},
        "steps": {m: v["steps"] for m, v in models.items()},
        "model_done_at_s": {m: round(v, 1) for m, v in trained.items()},
        "run": report["run"],
    }
    print(out, flush=True)
    return out


def bench(reps: int = 2, steps: int = 0, tasks: str = "sdm,inpaint") -> dict[str, Any]:
    from napari_mtssl import api
    from napari_mtssl.training.planning.fingerprint import fingerprint
    from napari_mtssl.training.planning.planner import make_plan

    from .common import acdc_workspace, spread

    ws = acdc_workspace(3)
    cfg = api.make_config("quick", budget="10m", device="cpu", tasks=tasks.split(","))
    plan = make_plan(fingerprint(ws), cfg, "stage1", probe=True)
    fixed = plan.apply(cfg)
    n = steps or int(plan.steps["seg"])
    fixed.budget_s = 0.0
    fixed.stage1.joint_steps = fixed.stage1.finetune_steps = fixed.baseline.steps = n
    fixed.stage1.pretrain_steps = max(1, int(plan.steps["pretext"] * n / plan.steps["seg"]))
    fixed.stage1.cache_pretext = False  # both sides pre-train (no reuse between runs)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(reps):
        for lanes in (1, 2):
            runs[lanes].append(_run(ws, fixed, lanes))
    one = [r["wall_s"] for r in runs[1]]
    two = [r["wall_s"] for r in runs[2]]
    out = {
        "plan": {
            "steps": n,
            "pretext_steps": fixed.stage1.pretrain_steps,
            "patch": plan.patch,
            "width": plan.width,
            "threads": plan.threads,
            "halving_at": int(round(fixed.stage1.halving * n)),
        },
        "one_at_a_time_wall_s": spread(one),
        "two_at_once_wall_s": spread(two),
        "speedup": round(spread(one)["median"] / spread(two)["median"], 3),
        "same_selections": all(r["selected"] == runs[1][0]["selected"] for r in runs[1] + runs[2]),
        "runs": runs,
    }
    print({k: v for k, v in out.items() if k != "runs"}, flush=True)
    return out


def bench_budget(budget: str = "10m", tasks: str = "sdm,inpaint") -> dict[str, Any]:
    """A budgeted stage 1, as users run it: the planner prices the steps one unit at a time
    (``units_at_once = 1``) and, left to choose (``units_at_once = 0``), also side by side,
    keeping what gives more steps. Reported per run: the lanes chosen and why, the steps per
    model, the wall time against the budget, the selections and every model's Dice."""
    from napari_mtssl import api
    from napari_mtssl.training.running.pipeline import run_training

    from .common import acdc_workspace

    ws = acdc_workspace(3)
    runs = {}
    for lanes in (1, 0):
        cfg = api.make_config("quick", budget=budget, device="cpu", tasks=tasks.split(","))
        cfg.stage1.cache_pretext = False  # both sides pre-train (no reuse between runs)
        why: list[str] = []
        notes = []

        def on(e, why=why, notes=notes) -> None:
            if e.type == "plan":
                why.append(e.plan.get("lanes_why", ""))
                why.append(str(e.plan.get("lanes", 1)))
            if e.type == "note":
                notes.append(e.message)

        c = type(cfg).from_dict(cfg.to_dict())
        c.units_at_once = lanes
        t0 = time.perf_counter()
        report = api.run(run_training(ws, c, "stage1"), on)
        wall = time.perf_counter() - t0
        models = report["models"]
        runs[str(lanes)] = {
            "units_at_once": lanes,
            "wall_s": round(wall, 1),
            "budget_s": c.budget_s,
            "lanes_why": why,
            "notes": notes,
            "selected": {t: s["mode"] for t, s in report["selected"].items()},
            "dice": {m: round(v["mean_dice"], 4) for m, v in models.items()},
            "steps": {m: v["steps"] for m, v in models.items()},
            "run": report["run"],
        }
        print(runs[str(lanes)], flush=True)
    return {"budget": budget, "runs": runs}
