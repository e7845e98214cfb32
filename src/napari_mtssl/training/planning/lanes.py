"""How many units of a run train at once, and what that buys within a time budget.

Units side by side share the machine: on a CPU each gets a share of the cores, on a GPU a share
of its time and memory. How many (:func:`lanes_for`): one per thread of the plan on a CPU; on a
GPU as many as its free memory holds (:func:`gpu_lanes`); never more than the units that can
start together. Whether a budgeted run should (:func:`price_side_by_side`): the planner times
the steps again while ``lanes - 1`` other processes train beside the timing one (each with its
share of the threads), lays the run's units out on the lanes as the scheduler will (the longest
chain of work first; a task's two halving rungs, then the continuation of the dearer mode; the
student alone at the end), and finds the most steps per model whose wall time fits the budget.
The run trains side by side only when that gives ``SIDE_GAIN`` more steps than one at a time.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from napari_mtssl.ids import ModelId, What
from napari_mtssl.training.config import ExperimentConfig
from napari_mtssl.training.planning.fingerprint import Fingerprint
from napari_mtssl.training.planning.machine import usable_cpus
from napari_mtssl.training.planning.plan import EVALS, Plan, mode_of, model_units
from napari_mtssl.training.planning.timing import probe_step, time_steps, unit_step_s

__all__ = ["gpu_lanes", "lanes_for", "start_width", "price_side_by_side", "makespan", "SIDE_GAIN"]

# Side by side must give this many more steps per model than one at a time to be chosen: the
# timing of a few steps is noisy, and one unit at a time is simpler to follow in the dock.
SIDE_GAIN = 1.1
START_S = 120.0  # the most a process that trains beside the timing one may take to start


def start_width(what: What, cfg: ExperimentConfig) -> int:
    """How many of the models a new run of ``what`` trains can start together (all but the
    student, which waits for its teachers)."""
    return sum(1 for u in model_units(what, cfg) if not u.startswith("student"))


def lanes_for(plan: Plan, cfg: ExperimentConfig, width: int) -> tuple[int, str]:
    """Units that could train at once on the plan's device, and why, when ``width`` of them can
    start together: the config's ``units_at_once``, else one per CPU thread of the plan, or
    what the GPU's memory holds; never more than ``width`` (a single unit trains in the run's
    own process). Only the local executor runs units side by side on this machine."""
    if cfg.executor != "local" or width < 2:
        return 1, ""
    if cfg.units_at_once:
        return min(int(cfg.units_at_once), width), "units_at_once"
    if plan.device.startswith("cuda"):
        return gpu_lanes(plan, cfg, width)
    if plan.device != "cpu":
        return 1, ""
    return max(1, min(int(plan.threads), width)), "one per CPU thread of the plan"


# GPU lanes. Each worker process holds a CUDA context (torch's kernels, cuDNN and cuBLAS
# handles) besides its tensors, and torch's caching allocator reserves more than the peak of
# the live tensors. Measured on an H100 (docs/benchmarks.md, "Stage 1 on one GPU"): a fresh
# process's context took 634 MiB; a stage-1 unit took 1.3 to 1.45 GiB of the card in all,
# against the 1.8 GiB counted here (a margin for larger validation windows).
CUDA_CONTEXT_MB = 650.0
ALLOC_SLACK = 1.5  # reserved / peak allocated, with room for a validation pass
GPU_RESERVE = 0.1  # of the card, left to the viewer and to other programs
# There, 4 units at once trained a 4-task stage 1 1.87x sooner than one at a time, 8 at once
# 1.78x: the GPU, not its memory, was the limit.
GPU_MAX_LANES = 4


def gpu_lanes(plan: Plan, cfg: ExperimentConfig, width: int) -> tuple[int, str]:
    """How many units train side by side on the plan's GPU, and why: as many as its free
    memory holds (each unit's measured peak, with the allocator's slack and a CUDA context
    per process), at most ``width`` (the units that can start together), one CPU core each
    with one left to the viewer, and at most ``GPU_MAX_LANES``."""
    dev = torch.device(plan.device)
    fp = Fingerprint.from_dict(plan.fingerprint)
    need = plan.timings.get("peak_mb") or time_steps(plan, cfg, fp).get("peak_mb", 0.0)
    torch.cuda.empty_cache()  # the probe's cached blocks are not the run's
    free, total = (x / 2**20 for x in torch.cuda.mem_get_info(dev))
    per_unit = need * ALLOC_SLACK + CUDA_CONTEXT_MB
    room = free - GPU_RESERVE * total
    by_memory = max(1, int(room // per_unit))
    by_cpu = max(1, usable_cpus() - 1)
    lanes = max(1, min(width, by_memory, by_cpu, GPU_MAX_LANES))
    why = (
        f"on the GPU, about {per_unit / 1024:.1f} GiB each "
        f"({need:.0f} MiB measured peak), {max(0.0, room) / 1024:.1f} GiB free beyond "
        f"{GPU_RESERVE:.0%} of the card kept for other programs (room for {by_memory}); "
        f"{width} unit(s) can start together, {by_cpu} CPU core(s) to feed them, "
        f"at most {GPU_MAX_LANES}"
    )
    return lanes, why


# -- pricing side by side ----------------------------------------------------------------------


@dataclass
class Job:
    """A stretch of one model's training as the scheduler runs it: seconds = a * N + b for N
    segmentation steps per model."""

    id: str
    a: float
    b: float
    deps: tuple[str, ...] = ()

    def seconds(self, n: int) -> float:
        return self.a * n + self.b


def jobs(
    units: Sequence[str],
    step_s: Callable[[str], tuple[float, float]],
    t_eval: float,
    cfg: ExperimentConfig,
) -> list[Job]:
    """The units the scheduler trains side by side (the student is not among them: it trains
    alone, after its teachers). With successive halving, each mode trains to its rung, then the
    dearer mode goes on (the leader is not known yet: a safe estimate)."""
    s1 = cfg.stage1
    both = s1.modes in ("both", "auto") and s1.halving > 0
    h = s1.halving if both else 1.0
    out: list[Job] = []
    for u in units:
        if u.startswith("student"):
            continue
        seg, pre = step_s(u)
        if both and mode_of(u):
            other = str(ModelId.parse(u).other_mode())
            oseg = step_s(other)[0]
            out.append(Job(f"{u}@rung", h * seg + pre, t_eval))
            if seg > oseg or (seg == oseg and mode_of(u) == "joint"):
                out.append(Job(u, (1 - h) * seg, EVALS * t_eval, (f"{u}@rung", f"{other}@rung")))
        else:
            out.append(Job(u, seg + pre, EVALS * t_eval))
    return out


def makespan(work: Sequence[Job], n: int, lanes: int) -> dict[str, float]:
    """When each job ends if ``lanes`` run them as the scheduler does: whenever a lane is free,
    the ready job with the longest chain of work behind it starts."""
    cost = {j.id: j.seconds(n) for j in work}
    chain: dict[str, float] = {}
    for j in reversed(work):  # a job's dependents come after it
        after = [chain[k.id] for k in work if j.id in k.deps and k.id in chain]
        chain[j.id] = cost[j.id] + max(after, default=0.0)
    free = [0.0] * max(1, lanes)
    ends: dict[str, float] = {}
    pending = list(work)
    while pending:
        lane = min(range(len(free)), key=free.__getitem__)
        now = free[lane]
        ready = [j for j in pending if all(ends.get(d, math.inf) <= now for d in j.deps)]
        if not ready:  # wait for the next dependency to end
            free[lane] = min(e for e in ends.values() if e > now)
            continue
        job = max(ready, key=lambda j: chain[j.id])
        pending.remove(job)
        ends[job.id] = now + cost[job.id]
        free[lane] = ends[job.id]
    return ends


@dataclass
class SideBySide:
    """What pricing side by side found: the most steps per model that fit, and the numbers
    behind it (for the plan's description and the re-budgeting of a slow run)."""

    steps: int
    lanes: int
    step_alone: float
    step_side: float
    work: list[Job]
    student_s: tuple[float, float]  # (a, b): the student's seconds = a * N + b, alone

    def why(self, n_alone: int, chosen: bool) -> str:
        """The comparison behind the choice (the plan's description and the run's note put
        "N units at once" or "one unit at a time" before it)."""
        if chosen:
            what = f"{self.steps} steps per model in the budget, against {n_alone} one at a time"
        else:
            what = (
                f"{n_alone} steps per model, against {self.steps} with {self.lanes} at once "
                f"(less than {SIDE_GAIN:g}x more)"
            )
        return (
            f"{what}; a segmentation step timed at {self.step_alone * 1000:.0f} ms alone, "
            f"{self.step_side * 1000:.0f} ms beside {self.lanes - 1} other unit(s)"
        )

    def estimate(self, n: int) -> dict[str, float]:
        """Seconds per model side by side, and the run's wall time ("total")."""
        out: dict[str, float] = {}
        for j in self.work:
            model = j.id.removesuffix("@rung")
            out[model] = round(out.get(model, 0.0) + j.seconds(n), 1)
        ends = makespan(self.work, n, self.lanes)
        a, b = self.student_s
        if a or b:
            out["student"] = round(a * n + b, 1)
        out["total"] = round(max(ends.values(), default=0.0) + a * n + b, 1)
        return out


def price_side_by_side(
    cfg: ExperimentConfig,
    what: What,
    t: dict[str, float],
    lanes: int,
    room_s: float,
    cached_pretext: Sequence[str] = (),
    with_student: bool = True,
) -> SideBySide | None:
    """The most steps per model whose wall time fits ``room_s`` with ``lanes`` units at once,
    from the steps timed side by side (``side:*`` in ``t``; None without them).
    ``with_student=False``: the student's time was set aside already (its share)."""
    side = {k.removeprefix("side:"): v for k, v in t.items() if k.startswith("side:")}
    if not side:
        return None
    units = model_units(what, cfg)
    work = jobs(units, lambda u: unit_step_s(u, side, cfg, cached_pretext), side["eval"], cfg)
    student = [u for u in units if u.startswith("student")] if with_student else []
    sa = len(student) * t.get("student", 0.0)
    sb = len(student) * EVALS * t.get("eval", 0.0)

    def wall(n: int) -> float:
        ends = makespan(work, n, lanes)
        return max(ends.values(), default=0.0) + sa * n + sb

    lo, hi = 0, 1
    while wall(hi) <= room_s and hi < 10**7:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if wall(mid) <= room_s else (lo, mid)
    return SideBySide(lo, lanes, t["seg"], side["seg"], work, (sa, sb))


def _busy(plan: dict, threads: int, ready: Any, stop: Any) -> None:
    """A process that trains the plan's network on random data until ``stop`` (the load
    beside the timing process)."""
    p = Plan.from_dict(plan)
    if p.device == "cpu":
        torch.set_num_threads(threads)
    classes = int(Fingerprint.from_dict(p.fingerprint).num_classes)
    _, _, step = probe_step(p, classes, classes)
    ready.set()
    while not stop.is_set():
        step()


def time_side_by_side(plan: Plan, cfg: ExperimentConfig, fp: Fingerprint, lanes: int) -> dict:
    """The plan's step timings taken while ``lanes - 1`` other processes train the same
    network beside this one, each process with its share of the plan's threads.
    RuntimeError when one of them could not start (it ended, or was not training after
    ``START_S``)."""

    each = max(1, int(plan.threads) // lanes)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    ready = [ctx.Event() for _ in range(lanes - 1)]
    procs = [
        ctx.Process(target=_busy, args=(plan.to_dict(), each, r, stop), daemon=True) for r in ready
    ]
    for p in procs:
        p.start()
    threads = torch.get_num_threads()
    try:
        until = time.monotonic() + START_S
        for p, r in zip(procs, ready, strict=True):
            while not r.wait(0.25):
                if not p.is_alive() or time.monotonic() > until:
                    raise RuntimeError(
                        f"a process to time the steps beside could not start (exit code "
                        f"{p.exitcode})"
                    )
        if plan.device == "cpu":
            torch.set_num_threads(each)
        return time_steps(plan, cfg, fp)
    finally:
        torch.set_num_threads(threads)
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
