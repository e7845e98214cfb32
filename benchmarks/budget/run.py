"""Accuracy on ACDC within a time budget: the default plan, as a user runs it.

Each job creates a fresh workspace from ``../shared/data/acdc`` with the first ``L`` training
patients labelled (``api.create_workspace(..., labelled=L)``), trains with
``api.make_config("quick", budget=B, seed=s)`` (nothing else set: the plan decides), and writes
the run's report, its plan, the wall time and the machine's load to
``benchmarks/results/budget/<kind>_L<L>_<B>_s<seed>.json``. Scores are on the 10 validation
patients (20 volumes) of the ``val`` split. A rerun skips jobs whose file exists.

Kinds:

* ``baseline``: ``what="baseline"`` (one model takes the whole budget);
* ``method``: ``what="all"`` with three tasks (baseline, each task in both modes with
  successive halving, selection, student), then ``base2L``: the baseline on a workspace with
  ``2L`` labelled patients, with exactly the steps the method's baseline had.
* ``cache``: stage 1 twice on one workspace with the same budget: the second run reuses the
  first one's cached pre-training (``cache_first`` / ``cache_second`` in one result file), so
  the steps, time and Dice the cache buys are measured side by side.
* ``fair``: the comparison a user faces. Per job, the whole method (``what="all"``, the default
  plan: ``api.make_config("quick", budget=B, seed=s)`` and nothing else, ``--tasks`` is ignored)
  then the baseline trained alone with the same budget B (``what="baseline"``), one after the
  other, on the same labelled patients: ``fair-method_L<L>_<B>_s<seed>.json`` (or
  ``fair-paper_...`` with ``--stage2 paper``, which adds ``stage2__method="paper"``) and
  ``fair-baseline_...``. An existing ``fair-baseline`` result is reused, so the default and the
  paper's stage 2 share one baseline alone. Each side records in ``benchmark``: the budget in
  seconds, the wall time and its share of the budget, the threads, the machine's load at the
  start and the end. ``--pair-side-by-side`` runs the two sides at once with one thread each: a
  deviation allowed for speed (the same conditions for both sides, about half the wall time);
  both results say ``"side_by_side": true``.

    nohup nice -n 5 .venv/bin/python benchmarks/budget/run.py baseline --L 7 3 --budget 10m \\
        --seeds 0 1 2 > /tmp/mtssl_bench/budget.log 2>&1 &
    .venv/bin/python benchmarks/budget/run.py method --L 3 --budget 60m --seeds 0 1 2
    .venv/bin/python benchmarks/budget/run.py fair --L 3 --budget 20m --seeds 0 1 2
    .venv/bin/python benchmarks/budget/run.py fair --L 3 7 --budget 60m --seeds 0 1 2
    .venv/bin/python benchmarks/budget/run.py fair --L 3 --budget 60m --seeds 0 1 2 --stage2 paper
    .venv/bin/python benchmarks/budget/run.py fair --L 3 --budget 20m --seeds 0 --pair-side-by-side
    .venv/bin/python benchmarks/budget/summarise.py   # tables and plots into docs/

``--jobs 2`` runs two jobs at once (each then plans for the one core the other leaves free);
the results record it (``jobs``), and docs/benchmarks.md says which figures ran that way. With
``fair``, a job is one pair (its two sides one after the other, or at once, one thread each,
with ``--pair-side-by-side``). ``MTSSL_BENCH_RESULTS`` replaces the results folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACDC = Path(os.environ.get("MTSSL_ACDC", ROOT.parent / "shared" / "data" / "acdc"))
WORK = Path(os.environ.get("MTSSL_BENCH_WORK", "/tmp/mtssl_bench")) / "budget"
OUT = Path(os.environ.get("MTSSL_BENCH_RESULTS", ROOT / "benchmarks" / "results" / "budget"))
TASKS = "sdm,vicreg,inpaint"
FAIR_BASELINE = "fair-baseline"


def result_path(kind: str, labelled: int, budget: str, seed: int) -> Path:
    return OUT / f"{kind}_L{labelled}_{budget}_s{seed}.json"


def _machine() -> dict:
    import torch

    return {
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "loadavg": os.getloadavg(),
    }


def _workspace(tag: str, labelled: int):
    from napari_mtssl import api

    folder = WORK / tag
    shutil.rmtree(folder, ignore_errors=True)
    return api.create_workspace(folder, source=ACDC, labelled=labelled)


def _save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _train(ws, cfg, what: str, log: str) -> tuple[dict, float]:
    from napari_mtssl import api

    t0 = time.perf_counter()

    def on_event(ev) -> None:
        if ev.type in ("model_done", "selected", "halving", "note"):
            keep = {k: v for k, v in ev.to_dict().items() if k not in ("dice",)}
            print(f"[{log}] {json.dumps(keep, default=str)}", flush=True)
        elif ev.type == "plan":
            print(f"[{log}] plan: " + " | ".join(ev.describe), flush=True)

    report = api.run(api.train(ws, cfg, what), on_event)
    return report, round(time.perf_counter() - t0, 1)


def run_one(kind: str, labelled: int, budget: str, seed: int, tasks: str, jobs: int) -> None:
    """One job in this process (``kind`` baseline | method)."""
    from napari_mtssl import api
    from napari_mtssl.cli import write_report

    tag = f"{kind}_L{labelled}_{budget}_s{seed}"
    machine = _machine()
    # Jobs run side by side share the cores from the start: the plan's own policy decides once,
    # when the run starts, and a run that took both cores on a free machine crawls once a second
    # job starts beside it (OpenMP threads oversubscribed; measured: 170 steps in 5 minutes).
    threads = {} if jobs <= 1 else {"num_threads": max(1, (os.cpu_count() or 1) // jobs)}
    if kind == "cache":
        ws = _workspace(tag, labelled)
        cfg = api.make_config("quick", budget=budget, seed=seed, tasks=tasks, **threads)
        first, wall1 = _train(ws, cfg, "stage1", tag + "_first")
        second, wall2 = _train(ws, cfg, "stage1", tag + "_second")
        out = {
            "benchmark": {
                "kind": kind,
                "L": labelled,
                "budget": budget,
                "seed": seed,
                "jobs": jobs,
                "machine": machine,
                "wall_s": [wall1, wall2],
                "loadavg_end": os.getloadavg(),
            },
            "cache_first": first,
            "cache_second": second,
        }
        _save(result_path(kind, labelled, budget, seed), out)
        shutil.rmtree(ws.root, ignore_errors=True)
        return
    if kind == "baseline":
        ws = _workspace(tag, labelled)
        cfg = api.make_config("quick", budget=budget, seed=seed, **threads)
        report, wall = _train(ws, cfg, "baseline", tag)
    else:
        ws = _workspace(tag, labelled)
        cfg = api.make_config("quick", budget=budget, seed=seed, tasks=tasks, **threads)
        report, wall = _train(ws, cfg, "all", tag)
    report["benchmark"] = {
        "kind": kind,
        "L": labelled,
        "budget": budget,
        "seed": seed,
        "wall_s": wall,
        "jobs": jobs,
        "machine": machine,
        "loadavg_end": os.getloadavg(),
    }
    if seed == 0:  # overlays of validation patients the model never saw
        write_report(ws, report, WORK / f"report_{tag}", overlays=4)
    _save(result_path(kind, labelled, budget, seed), report)
    if kind == "method":
        # baseline with 2L labelled patients and exactly the method baseline's steps
        steps = int(report["models"]["baseline"]["steps"])
        ws2 = _workspace(tag + "_2L", 2 * labelled)
        plan = report["plan"]
        cfg2 = api.make_config(  # the same steps and shape, not a budget: equal training
            "quick",
            seed=seed,
            budget_s=0,
            baseline__steps=steps,
            data__patch_size=plan["patch"],
            data__batch_size=plan["batch_size"],
            model__width=plan["width"],
            model__depth=plan["depth"],
        )
        rep2, wall2 = _train(ws2, cfg2, "baseline", tag + "_2L")
        rep2["benchmark"] = {**report["benchmark"], "kind": "base2L", "wall_s": wall2}
        _save(result_path("base2L", labelled, budget, seed), rep2)
        shutil.rmtree(ws2.root, ignore_errors=True)
    shutil.rmtree(ws.root / "runs", ignore_errors=True)  # weights are not kept


# -- fair: the whole method against the baseline trained alone, one budget -----------------------


def fair_method_kind(stage2: str, variant: str = "") -> str:
    """The result kind of the method side: ``fair-method`` (the default stage 2), ``fair-paper``,
    or ``fair-<variant>`` for a named variant (settings given with ``--set``)."""
    if variant:
        return f"fair-{variant}"
    return "fair-paper" if stage2 == "paper" else "fair-method"


def parse_sets(items: list[str] | None) -> dict:
    """``--set stage2__share=0.65`` -> ``{"stage2__share": 0.65}`` (JSON values, else text)."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def fair_overrides(kind: str, jobs: int, pair: bool, cores: int | None = None) -> dict:
    """What ``make_config`` gets besides the budget and the seed: nothing but the threads when
    processes run side by side, and ``stage2__method="paper"`` for the paper's stage 2."""
    cores = cores or os.cpu_count() or 1
    over: dict = {}
    if pair:  # both sides at once: one core each, the same conditions for both
        over["num_threads"] = 1
    elif jobs > 1:
        over["num_threads"] = max(1, cores // jobs)
    if kind == "fair-paper":
        over["stage2__method"] = "paper"
    return over


def fair_pending(
    stage2: str, labelled: int, budget: str, seed: int, variant: str = ""
) -> list[str]:
    """The sides of a pair without a result yet (a baseline alone that exists is reused)."""
    kinds = (fair_method_kind(stage2, variant), FAIR_BASELINE)
    return [k for k in kinds if not result_path(k, labelled, budget, seed).is_file()]


def run_fair_side(
    kind: str,
    labelled: int,
    budget: str,
    seed: int,
    jobs: int,
    pair: bool,
    sets: dict | None = None,
) -> None:
    """One side of a fair pair in this process (``kind``: fair-method | fair-paper |
    fair-baseline | fair-<variant>, the last with the settings ``sets``)."""
    from napari_mtssl import api
    from napari_mtssl.cli import write_report
    from napari_mtssl.training.config import parse_budget
    from napari_mtssl.training.running.pipeline import comparison

    tag = f"{kind}_L{labelled}_{budget}_s{seed}"
    machine = _machine()
    over = fair_overrides(kind, jobs, pair)
    if kind != FAIR_BASELINE:
        over.update(sets or {})
    ws = _workspace(tag, labelled)
    cfg = api.make_config("quick", budget=budget, seed=seed, **over)
    what = "baseline" if kind == FAIR_BASELINE else "all"
    load0 = os.getloadavg()
    report, wall = _train(ws, cfg, what, tag)
    budget_s = parse_budget(budget)
    report["benchmark"] = {
        "kind": kind,
        "L": labelled,
        "budget": budget,
        "budget_s": budget_s,
        "seed": seed,
        "what": what,
        "stage2": None if what == "baseline" else over.get("stage2__method", "semi"),
        "overrides": over,
        "wall_s": wall,
        "share_of_budget": round(wall / budget_s, 3),
        "jobs": jobs,
        "side_by_side": pair,
        "threads": over.get("num_threads", "plan"),
        "machine": machine,
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
    }
    if kind != FAIR_BASELINE:  # the report's line names the baseline alone where measured
        alone = _alone_result(labelled, budget, seed, wait_s=ALONE_WAIT_S if pair else 0)
        comp = comparison(report.get("models") or {}, report.get("ensemble"), alone)
        report["comparison"] = comp or report.get("comparison")
    # every seed: overlays of validation patients no model trained on (after the budget)
    write_report(ws, report, WORK / f"report_{tag}", overlays=4)
    _save(result_path(kind, labelled, budget, seed), report)
    shutil.rmtree(ws.root / "runs", ignore_errors=True)  # weights are not kept


ALONE_WAIT_S = 1200  # side by side, the baseline alone ends about when the method does


def _alone_result(labelled: int, budget: str, seed: int, wait_s: float = 0) -> dict | None:
    """The baseline alone's validation mean Dice for the same L, budget and seed, waiting up
    to ``wait_s`` for the side that runs beside this one; None when it was not measured."""
    from napari_mtssl.training.config import format_budget, parse_budget

    path = result_path(FAIR_BASELINE, labelled, budget, seed)
    end = time.monotonic() + wait_s
    while not path.is_file() and time.monotonic() < end:
        time.sleep(10)
    try:
        base = json.loads(path.read_text())["models"]["baseline"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if base.get("mean_dice") is None:
        return None
    return {"mean_dice": base["mean_dice"], "budget": format_budget(parse_budget(budget))}


def run_fair_pair(
    labelled: int,
    budget: str,
    seed: int,
    jobs: int,
    stage2: str,
    pair: bool,
    variant: str = "",
    sets: list[str] | None = None,
) -> int:
    """One job of kind ``fair``: the method side, then the baseline alone (each in its own
    process, so neither inherits the other's threads or memory); both at once with ``pair``."""
    todo = fair_pending(stage2, labelled, budget, seed, variant)

    def side(kind: str) -> subprocess.Popen:
        cmd = [sys.executable, __file__, "fair", "--L", str(labelled), "--budget", budget]
        cmd += ["--seeds", str(seed), "--jobs", str(jobs), "--side", kind]
        cmd += ["--pair-side-by-side"] if pair else []
        if kind != FAIR_BASELINE:
            cmd += ["--stage2", stage2] + [f"--set={x}" for x in sets or []]
        print(time.strftime("%H:%M:%S"), "start", kind, labelled, budget, seed, flush=True)
        return subprocess.Popen(cmd)

    if pair:
        rcs = [p.wait() for p in [side(k) for k in todo]]
    else:
        rcs = [side(k).wait() for k in todo]
    print(time.strftime("%H:%M:%S"), "end", todo, labelled, budget, seed, "rc", rcs, flush=True)
    return next((rc for rc in rcs if rc), 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("kind", choices=["baseline", "method", "cache", "fair"])
    p.add_argument("--L", type=int, nargs="+", default=[3, 7])
    p.add_argument("--budget", nargs="+", default=["10m"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tasks", default=TASKS)
    p.add_argument("--jobs", type=int, default=1, help="jobs at once (default: one)")
    p.add_argument(
        "--stage2",
        choices=["semi", "paper"],
        default="semi",
        help="fair: the method's stage 2 (semi: the engine's default, nothing set; paper: "
        "stage2__method='paper', results fair-paper_*)",
    )
    p.add_argument(
        "--pair-side-by-side",
        action="store_true",
        help="fair: the method and its baseline alone at once, one thread each (a deviation "
        "for speed: the same conditions for both sides; recorded as side_by_side)",
    )
    p.add_argument(
        "--variant",
        default="",
        help="fair: a named variant of the method side, results fair-<variant>_* (with --set)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="fair, with --variant: a setting of the method side (make_config keyword, e.g. "
        "stage2__share=0.65); recorded in the result's overrides",
    )
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.set and not (a.variant or a.side):
        p.error("--set changes the method: name the variant with --variant")
    if a.side:
        sets = parse_sets(a.set)
        pair = a.pair_side_by_side
        run_fair_side(a.side, a.L[0], a.budget[0], a.seeds[0], a.jobs, pair, sets)
        return 0
    if a.one and a.kind == "fair":
        pair = a.pair_side_by_side
        return run_fair_pair(
            a.L[0], a.budget[0], a.seeds[0], a.jobs, a.stage2, pair, a.variant, a.set
        )
    if a.one:
        run_one(a.kind, a.L[0], a.budget[0], a.seeds[0], a.tasks, a.jobs)
        return 0
    if not (ACDC / "dataset.json").is_file():
        print(f"ACDC not found at {ACDC} (set MTSSL_ACDC)", file=sys.stderr)
        return 2

    def pending(L: int, b: str, s: int) -> bool:
        if a.kind == "fair":
            return bool(fair_pending(a.stage2, L, b, s, a.variant))
        return not result_path(a.kind, L, b, s).is_file()

    queue = [(L, b, s) for s in a.seeds for b in a.budget for L in a.L if pending(L, b, s)]
    running: list[tuple[subprocess.Popen, tuple]] = []
    while queue or running:
        while queue and len(running) < a.jobs:
            L, b, s = queue.pop(0)
            cmd = [sys.executable, __file__, a.kind, "--L", str(L), "--budget", b]
            cmd += ["--seeds", str(s), "--tasks", a.tasks, "--jobs", str(a.jobs), "--one"]
            if a.kind == "fair":
                cmd += ["--stage2", a.stage2]
                cmd += ["--pair-side-by-side"] if a.pair_side_by_side else []
                cmd += ["--variant", a.variant] if a.variant else []
                cmd += [f"--set={x}" for x in a.set or []]
            print(time.strftime("%H:%M:%S"), "start", a.kind, L, b, s, flush=True)
            running.append((subprocess.Popen(cmd), (L, b, s)))
            if a.jobs > 1:
                time.sleep(20)  # the next job plans once this one's load shows
        time.sleep(2)
        for proc, job in list(running):
            if proc.poll() is not None:
                running.remove((proc, job))
                print(time.strftime("%H:%M:%S"), "end", job, "rc", proc.returncode, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
