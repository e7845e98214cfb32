"""A budgeted run on a machine that other work shares: does it adapt while it trains?

Three baseline runs of the default plan with the same budget (10 minutes unless ``--budget``),
one after the other, on ACDC with 3 labelled patients (``../shared/data/acdc``), each as a user
starts it (``api.make_config("quick", budget=B)``: the plan chooses the threads):

* ``alone``: nothing else runs;
* ``joined``: a CPU-bound process (a single-threaded matrix-multiply loop: a second job) starts
  beside it 20 s after the run started;
* ``left``: that process already runs while the run plans, and ends 60 s after the run's first
  training step.

Each scenario runs in a process of its own, as a user's run would: nothing a process measures
once (the busy cores, bf16's speed-up) carries from one scenario to the next. Each writes
``benchmarks/results/busy/<scenario>.json``: the steps, the wall time and its share
of the budget, the validation Dice, the plan's threads and steps, and the notes the run gave
(the pace's re-counts and thread moves). Targets (docs/benchmarks.md): ``joined`` ends within
105 % of its budget with at least 45 % of ``alone``'s steps; ``left`` uses at least 90 % of its
budget and reaches at least 90 % of ``alone``'s steps. Run it on an otherwise quiet machine::

    .venv/bin/python benchmarks/busy/run.py            # about 35 minutes
    .venv/bin/python benchmarks/busy/run.py --budget 3m --scenarios alone joined
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACDC = Path(os.environ.get("MTSSL_ACDC", ROOT.parent / "shared" / "data" / "acdc"))
WORK = Path(os.environ.get("MTSSL_BENCH_WORK", "/tmp/mtssl_bench")) / "busy"
OUT = Path(os.environ.get("MTSSL_BENCH_RESULTS", ROOT / "benchmarks" / "results")) / "busy"
SCENARIOS = ("alone", "joined", "left")


def _load(stop) -> None:
    """A second job: one core of matrix multiplies until ``stop`` is set."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a.T / 512)


class Load:
    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_load, args=(self._stop,), daemon=True)
        self.started = self.ended = None

    def start(self) -> None:
        self._proc.start()
        self.started = time.time()

    def end(self) -> None:
        if self._proc.is_alive():
            self._stop.set()
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
            self.ended = time.time()


def _warm(ws) -> None:
    """The preprocessed volumes cached before the first run, so that no scenario pays for it."""
    from napari_mtssl import api
    from napari_mtssl.training.data.slices import StudyData
    from napari_mtssl.training.planning.fingerprint import fingerprint
    from napari_mtssl.training.planning.planner import make_plan

    cfg = api.make_config("quick")
    plan = make_plan(fingerprint(ws), cfg, "baseline", allocate_steps=False)
    StudyData.from_workspace(ws, plan.preprocessing(), plan.patch)


def run(scenario: str, budget: str, labelled: int, seed: int) -> dict:
    from napari_mtssl import api
    from napari_mtssl.training.config import parse_budget
    from napari_mtssl.workspace import Workspace

    folder = WORK / "ws"
    if not folder.exists():
        _warm(api.create_workspace(folder, source=ACDC, labelled=labelled))
    ws = Workspace.open(folder)
    load = Load()
    notes: list[dict] = []
    first_step: list[float] = []
    t0 = time.time()
    if scenario == "left":
        load.start()
        time.sleep(2)  # the plan must see it
    elif scenario == "joined":
        threading.Timer(20.0, load.start).start()

    def on_event(ev) -> None:
        if ev.type == "progress" and not first_step:
            first_step.append(time.time())
            if scenario == "left":
                threading.Timer(60.0, load.end).start()
        elif ev.type == "note":
            notes.append({"t": round(time.time() - t0, 1), "message": ev.message})
            print(f"[{scenario}] {ev.message}", flush=True)
        elif ev.type == "plan":
            print(f"[{scenario}] plan: " + " | ".join(ev.describe[:2]), flush=True)

    cfg = api.make_config("quick", budget=budget, seed=seed)
    try:
        report = api.run(api.train(ws, cfg, "baseline"), on_event)
    finally:
        load.end()
    wall = time.time() - t0
    m = report["models"]["baseline"]
    out = {
        "scenario": scenario,
        "budget": budget,
        "budget_s": parse_budget(budget),
        "wall_s": round(wall, 1),
        "share_of_budget": round(wall / parse_budget(budget), 3),
        "steps": m["steps"],
        "mean_dice": m["mean_dice"],
        "plan_threads": report["plan"]["threads"],
        "plan_steps": report["plan"]["steps"].get("seg"),
        "load_started_s": None if load.started is None else round(load.started - t0, 1),
        "load_ended_s": None if load.ended is None else round(load.ended - t0, 1),
        "first_step_s": round(first_step[0] - t0, 1) if first_step else None,
        "notes": notes,
        "cores": os.cpu_count(),
        "labelled": labelled,
        "seed": seed,
    }
    shutil.rmtree(ws.root / "runs", ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="10m")
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    p.add_argument("--L", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one scenario
    a = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if a.one:
        (s,) = a.scenarios
        result = run(s, a.budget, a.L, a.seed)
        path = OUT / f"{s}_{a.budget}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)
        return 0
    shutil.rmtree(WORK / "ws", ignore_errors=True)
    results = {}
    for s in a.scenarios:
        print(time.strftime("%H:%M:%S"), "start", s, flush=True)
        cmd = [sys.executable, __file__, "--one", "--scenarios", s, "--budget", a.budget,
               "--L", str(a.L), "--seed", str(a.seed)]  # fmt: skip
        subprocess.run(cmd, check=True)
        results[s] = json.loads((OUT / f"{s}_{a.budget}.json").read_text())
        r = results[s]
        print(time.strftime("%H:%M:%S"), s, f"steps {r['steps']} wall {r['share_of_budget']:.0%}"
              f" Dice {r['mean_dice']:.3f}", flush=True)  # fmt: skip
    if "alone" in results:
        base = results["alone"]["steps"]
        for s, r in results.items():
            print(f"{s}: {r['steps'] / base:.0%} of alone's steps, {r['share_of_budget']:.0%} "
                  "of the budget")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
