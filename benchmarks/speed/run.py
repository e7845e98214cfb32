"""Speed and memory benchmarks; each writes its section of ``benchmarks/results/speed.json``.

    nice -n 10 .venv/bin/python benchmarks/speed/run.py train infer memory
    xvfb-run -a nice -n 10 .venv/bin/python benchmarks/speed/run.py viewer

Sub-benchmarks: ``train`` (1, 2: joint step vs a bare loop, data wait), ``infer`` (3: whole-scan
inference vs a bare forward), ``viewer`` (4: event-loop stalls while training; needs a display),
``memory`` (5: peak RSS of training and of opening a 512 x 512 x 300 volume), ``threads`` (1 vs 2
torch threads per training process: the basis for running two jobs at once), ``stage1`` (stage 1
on ACDC one unit at a time vs two side by side on the local executor, the same plan),
``stage1_budget`` (a budgeted stage 1 priced one at a time vs left to choose side by side), ``gpu``
(stage 1 on one GPU at 1, 2, 4 units at once and the planner's choice; the card's memory per
unit), ``student`` (a student step, default and paper's with stored maps or live teachers, over a
baseline step), ``walk`` (a user's clicks through the docks at 1366 x 768: import, train, stop,
resume, compare, propose, each with its stalls; needs a display and ACDC), ``gil`` (how long
a Compare in a thread of the viewer's process holds that process, first and second of a
session, beside busy processes; needs ACDC), ``warm`` (the stalls of the import and of opening a
scan with the warm-up as it is and as it might be: more imports, or no freeze of what lives;
needs a display and ACDC),
``start`` (from the Train click to the first step through the spare worker, with and without
its load history, beside busy processes; needs ACDC), ``layers`` (what adding, removing and
refilling a napari layer costs the GUI thread, with the collector as napari leaves it and as
the docks do, beside busy processes; needs a display), ``resume`` (a baseline stopped and
resumed beside busy processes: its time against its budget; needs ACDC). Ratios are measured
side by side in one process, repetitions alternating (ABAB). Results
report; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make ``speed`` importable

NAMES = (
    "activity",
    "train",
    "infer",
    "viewer",
    "memory",
    "threads",
    "stage1",
    "stage1_budget",
    "gpu",
    "student",
    "walk",
    "gil",
    "warm",
    "start",
    "layers",
    "resume",
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("_child_"):  # memory.py's measurement children
        from speed import memory, warm

        children = {"_child_read": memory.child_read, "_child_ct": memory.child_ct}
        fn = {**children, "_child_warm": warm.child}[argv[0]]  # warm: one fresh viewer each
        print(json.dumps(fn(argv[1]), default=str))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("names", nargs="*", default=["train", "infer", "memory"], choices=NAMES)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--reps", type=int, default=3, help="ABAB repetitions")
    p.add_argument("--tasks", default="sdm,rubik", help="tasks for the joint-step benchmark")
    p.add_argument("--steps", type=int, default=60, help="steps per joint-step repetition")
    p.add_argument(
        "--load", type=int, default=0, help="viewer: busy processes beside it (other work)"
    )
    p.add_argument(
        "--variants",
        default="now,more",
        help="warm: the warm-ups to compare (now, more: its imports too, thawed: no freeze)",
    )
    p.add_argument("--walk-budget", default="10 min", help="walk: the Tasks tab's budget")
    p.add_argument("--stop-after", type=float, default=60.0, help="walk: stop after (s)")
    p.add_argument(
        "--look", type=float, default=0.0, help="walk: seconds between the run's end and Compare"
    )
    p.add_argument(
        "--to-stop",
        action="store_true",
        help="walk: end after the Stop (import, open, Train, training, Stop: about 2 minutes)",
    )
    p.add_argument(
        "--timings",
        default="kept",
        choices=("kept", "first"),
        help="walk: a later session (timings kept by an earlier one) or the machine's first",
    )
    p.add_argument("--device", default="cuda", help="gpu: cpu for a dry run of the script")
    p.add_argument("--budget", default="10m", help="stage1_budget: the run's time budget")
    p.add_argument("--gpu-tasks", default="sdm,inpaint", help="gpu: the stage-1 tasks")
    p.add_argument("--lanes", default="1,2,4,0", help="gpu: units at once to compare (0: auto)")
    p.add_argument("--max-s", type=float, default=400.0, help="gpu: start no run after this")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))

    from speed import common

    for name in a.names:
        info = common.machine()
        if name == "train":
            from speed import train

            res = train.bench(a.tasks.split(","), steps=a.steps, reps=a.reps, threads=a.threads)
        elif name == "student":
            from speed import student

            res = student.bench(steps=a.steps, reps=a.reps, threads=a.threads)
        elif name == "infer":
            from speed import infer

            res = infer.bench(reps=a.reps, threads=a.threads)
        elif name == "threads":
            from speed import threads

            res = threads.bench()
        elif name == "stage1":
            from speed import stage1

            res = stage1.bench(reps=a.reps, steps=a.steps if a.steps != 60 else 0)
        elif name == "stage1_budget":
            from speed import stage1

            res = stage1.bench_budget(budget=a.budget)
        elif name == "gpu":
            from speed import gpu

            steps = a.steps if a.steps != 60 else 400
            lanes = tuple(int(x) for x in a.lanes.split(","))
            res = gpu.bench(steps, a.gpu_tasks, lanes, a.max_s, a.device)
        elif name == "viewer":
            from speed import viewer

            res = viewer.bench(load=a.load)
        elif name == "activity":
            from speed import activity

            res = activity.bench()
        elif name == "gil":
            from speed import gil

            res = gil.bench(load=a.load or 2)
        elif name == "warm":
            from speed import warm

            res = warm.bench(load=a.load or 2, reps=a.reps, variants=a.variants.split(","))
        elif name == "start":
            from speed import start

            res = start.bench(load=a.load or 2, reps=a.reps)
        elif name == "resume":
            from speed import resume

            res = resume.bench(load=a.load or 2, budget=a.walk_budget, stop_after_s=a.stop_after)
        elif name == "layers":
            from speed import layers

            res = layers.bench(load=a.load or 2, reps=a.reps)
        elif name == "walk":
            from speed import walk

            res = walk.bench(
                load=a.load,
                budget=a.walk_budget,
                stop_after_s=a.stop_after,
                look_s=a.look,
                timings=a.timings,
                to_stop=a.to_stop,
            )
        else:
            from speed import memory

            res = memory.bench()
        info["loadavg_end"] = os.getloadavg()
        res["machine"] = info
        res["command"] = "benchmarks/speed/run.py " + " ".join(argv)
        key = f"viewer_load{a.load}" if name == "viewer" and a.load else name
        key = (
            f"walk_load{a.load}"
            + (f"_look{a.look:g}" if a.look else "")
            + ("_first" if a.timings == "first" else "")
            + ("_to_stop" if a.to_stop else "")
            if name == "walk"
            else key
        )
        key = f"gil_load{a.load or 2}" if name == "gil" else key
        if name == "warm":
            pair = "" if a.variants == "now,more" else "_" + a.variants.replace(",", "_")
            key = f"warm_load{a.load or 2}{pair}"
        key = f"start_load{a.load or 2}" if name == "start" else key
        key = f"layers_gc_load{a.load or 2}" if name == "layers" else key
        key = f"resume_load{a.load or 2}" if name == "resume" else key
        print("saved", common.save(key, res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
