"""Stage 1 on one GPU: one unit at a time vs several side by side, and what a unit costs the card.

    python benchmarks/speed/run.py gpu --steps 400     (where a GPU is; MTSSL_ACDC may name a
                                                        subset of ACDC)

The plan is made once on the GPU (the planner's probe: step timings and the peak memory of the
dearest step), then its steps are fixed, and stage 1 (two tasks x two modes, successive halving
as in the product) trains with ``units_at_once`` = 1, 2 and 4, then 0 (the planner's own choice,
:func:`napari_mtssl.training.planning.lanes.gpu_lanes`). A thread samples the card's free memory every
0.2 s: the most each run took is set beside what ``gpu_lanes`` counts per unit. The CUDA context
of a fresh process (what a worker costs before its tensors) is measured first. Reported: wall
times, their ratios to one at a time, selections and validation Dice per model. Nothing here
asserts a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

_CHILD = """
import sys, time, torch
x = torch.randn(16, 1, 128, 128, device="cuda", requires_grad=True)
w = torch.randn(32, 1, 3, 3, device="cuda", requires_grad=True)
with torch.autocast("cuda", dtype=torch.bfloat16):
    y = torch.nn.functional.conv2d(x, w, padding=1).square().mean()
y.backward()
torch.cuda.synchronize()
print(torch.cuda.memory_reserved() / 2**20, flush=True)
sys.stdin.readline()
"""


def context_mb() -> dict[str, float]:
    """Memory a fresh process takes on the card beyond its tensors (its CUDA context, with
    cuDNN and cuBLAS loaded): the card's free memory before and while a child holds one small
    convolution's worth of tensors, less what the child's allocator reserved."""
    import torch

    free0 = torch.cuda.mem_get_info()[0]
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    reserved = float(child.stdout.readline())
    time.sleep(0.5)
    free1 = torch.cuda.mem_get_info()[0]
    child.communicate("\n", timeout=30)
    taken = (free0 - free1) / 2**20
    return {
        "process_mb": round(taken, 1),
        "tensors_mb": reserved,
        "context_mb": round(taken - reserved, 1),
    }


class _Sampler:
    """The least free memory of the card while a run trains (sampled every 0.2 s)."""

    def __init__(self) -> None:
        import torch

        self.free0 = torch.cuda.mem_get_info()[0]
        self.least = self.free0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import torch

        while not self._stop.wait(0.2):
            self.least = min(self.least, torch.cuda.mem_get_info()[0])

    def used_mb(self) -> float:
        self._stop.set()
        self._thread.join()
        return round((self.free0 - self.least) / 2**20, 1)


def _run(ws, cfg, lanes: int, gpu: bool) -> dict[str, Any]:
    from napari_mtssl import api
    from napari_mtssl.training.running.pipeline import run_training

    c = type(cfg).from_dict(cfg.to_dict())
    c.units_at_once = lanes
    notes: list[str] = []

    def on(e) -> None:
        if e.type == "note" and "at once" in e.message:
            notes.append(e.message)

    sampler = _Sampler() if gpu else None
    t0 = time.perf_counter()
    report = api.run(run_training(ws, c, "stage1"), on)
    wall = time.perf_counter() - t0
    out = {
        "units_at_once": lanes,
        "wall_s": round(wall, 1),
        "card_used_mb": sampler.used_mb() if sampler else None,
        "lanes_note": notes,
        "selected": {t: s["mode"] for t, s in report["selected"].items()},
        "dice": {m: round(v["mean_dice"], 4) for m, v in report["models"].items()},
        "run": report["run"],
    }
    print(json.dumps(out), flush=True)
    return out


def bench(
    steps: int = 400,
    tasks: str = "sdm,inpaint",
    lanes=(1, 2, 4, 0),
    max_s: float = 400.0,
    device: str = "cuda",
) -> dict[str, Any]:
    """``device="cpu"``: a dry run of this script where there is no GPU (no memory figures)."""
    import torch

    from napari_mtssl import api
    from napari_mtssl.training.planning.fingerprint import fingerprint
    from napari_mtssl.training.planning.lanes import ALLOC_SLACK, CUDA_CONTEXT_MB, gpu_lanes
    from napari_mtssl.training.planning.planner import make_plan

    from .common import acdc_workspace

    gpu = device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("the gpu benchmark needs a CUDA GPU (none is visible to torch)")
    t_start = time.perf_counter()
    out: dict[str, Any] = {"device": device}
    if gpu:
        out["gpu"] = torch.cuda.get_device_name()
        try:
            out["context"] = context_mb()
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            out["context"] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
    ws = acdc_workspace(3)
    cfg = api.make_config("quick", budget="10m", device=device, tasks=tasks.split(","))
    plan = make_plan(fingerprint(ws), cfg, "stage1", probe=True)
    fixed = plan.apply(cfg)
    fixed.budget_s = 0.0
    fixed.stage1.joint_steps = fixed.stage1.finetune_steps = fixed.baseline.steps = steps
    fixed.stage1.pretrain_steps = max(1, int(plan.steps["pretext"] * steps / plan.steps["seg"]))
    fixed.stage1.cache_pretext = False  # every run pre-trains (no reuse between runs)
    width = 2 * len(fixed.stage1.tasks)  # each task's two modes start together
    n_lanes, why = gpu_lanes(plan, cfg, width) if gpu else (0, "no GPU: dry run")
    out["plan"] = {
        "patch": plan.patch,
        "width": plan.width,
        "depth": plan.depth,
        "batch": plan.batch_size,
        "precision": plan.precision,
        "threads": plan.threads,
        "steps": steps,
        "pretext_steps": fixed.stage1.pretrain_steps,
        "timings": plan.timings,
        "per_unit_mb": round(plan.timings.get("peak_mb", 0) * ALLOC_SLACK + CUDA_CONTEXT_MB, 1),
        "gpu_lanes": [n_lanes, why],
    }
    print(json.dumps(out["plan"]), flush=True)
    runs = []
    for n in lanes:
        if time.perf_counter() - t_start > max_s:
            runs.append({"units_at_once": n, "skipped": f"over {max_s:.0f} s"})
            continue
        try:
            runs.append(_run(ws, fixed, n, gpu))
        except Exception as exc:  # report and go on: one broken configuration is a result too
            import traceback

            traceback.print_exc()
            runs.append({"units_at_once": n, "error": f"{type(exc).__name__}: {exc}"})
    out["runs"] = runs
    one = next((r["wall_s"] for r in runs if r.get("units_at_once") == 1 and "wall_s" in r), 0)
    out["speedup_vs_one"] = {
        str(r["units_at_once"]): round(one / r["wall_s"], 3) for r in runs if one and "wall_s" in r
    }
    ok = [r for r in runs if "selected" in r]
    out["same_selections"] = all(r["selected"] == ok[0]["selected"] for r in ok)
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}), flush=True)
    return out
