"""The paper's claim on real cardiac MRI (ACDC): every row of the issue's accuracy table.

For each labelled-patient count ``L`` and seed this trains, on a workspace built from
``/work/shared/data/acdc`` with ``api.create_workspace(folder, source=acdc, labelled=L)``:

* ``all``: the baseline, every task in joint and pre-train mode, the selected teachers, all
  tasks jointly and the student (one run of the engine, ``what="all"``);
* ``base2L``: the baseline alone on a workspace with ``2L`` labelled patients (same budget).

Which patients are labelled: the first ``L`` patients of the dataset's ``train`` split in the
order ``dataset.json`` lists them (``api.create_workspace``); the seed changes initial weights,
batches and augmentation, not the labelled patients. Scores are on the 10 validation patients
(20 volumes) of the ``val`` split, which is the only data any choice (teacher mode) looks at.

Each finished run's report is written to ``<out>/L<L>_s<seed>_<kind>.json`` as soon as it ends,
so an interrupted sweep keeps what it finished; a rerun skips jobs whose file exists.

    nohup nice -n 10 .venv/bin/python benchmarks/accuracy/run.py --L 3 7 --seeds 0 1 2 \
        --jobs 2 > /tmp/mtssl_bench/acc.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACDC = Path(os.environ.get("MTSSL_ACDC", ROOT.parent / "shared" / "data" / "acdc"))
TASKS = ["sdm", "rubik", "moco", "vicreg", "slices", "simsiam", "inpaint"]
# The budget every row shares: the "quick" profile (64 px, U-Net width 8, batch 8, 150 joint /
# 100 pre-train + 150 fine-tune / 150 student steps) with validation only at the end of each
# model (the intermediate curve is display only), one torch thread per process.
OVERRIDES: dict = {"stage1__eval_every": 150, "num_threads": 1}
# "long": 4x every step budget of "quick" (600 joint / 400 + 600 / 600 student), for the tasks
# chosen on the validation scores of the quick sweep; "all tasks jointly" is left out (cost).
LONG: dict = {
    "stage1__joint_steps": 600,
    "stage1__pretrain_steps": 400,
    "stage1__finetune_steps": 600,
    "stage1__eval_every": 600,
    "stage2__steps": 600,
    "all_joint": False,
}
BUDGET = {"quick": {}, "long": LONG}


def config(seed: int, budget: str = "quick", tasks: list[str] | None = None):
    from napari_mtssl import api

    extra = {**OVERRIDES, **BUDGET[budget]}
    return api.make_config("quick", tasks=tasks or TASKS, seed=seed, **extra)


def workspace(work: Path, labelled: int, seed: int, kind: str):
    """A private workspace per job (two jobs never share a workspace lock)."""
    from napari_mtssl import api

    folder = work / f"ws_{kind}_L{labelled}_s{seed}"
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    return api.create_workspace(folder, source=ACDC, labelled=labelled)


def run_one(
    labelled: int,
    seed: int,
    kind: str,
    out: Path,
    work: Path,
    budget: str = "quick",
    tasks: list[str] | None = None,
) -> None:
    """One job in this process: train and write its report."""
    import torch

    from napari_mtssl import api

    torch.set_num_threads(1)
    n = labelled if kind == "all" else 2 * labelled
    ws = workspace(work, n, seed, f"{budget}_{kind}")
    cfg = config(seed, budget, tasks)
    what = "all" if kind == "all" else "baseline"
    t0 = time.perf_counter()
    waits: dict[str, list[float]] = {}

    def on_event(ev: dict) -> None:
        if ev.get("type") == "progress" and ev["step"] == ev["total"]:
            waits[ev["model"] + ":" + str(ev.get("mode"))] = [
                ev["data_wait_s"],
                ev["elapsed_s"],
            ]
        if ev.get("type") in ("model_done", "selected"):
            print(f"[L{labelled} s{seed} {kind}] {json.dumps(ev)}", flush=True)

    report = api.run(api.train(ws, cfg, what), on_event)
    report["benchmark"] = {
        "labelled_patients": n,
        "L": labelled,
        "seed": seed,
        "kind": kind,
        "budget": budget,
        "wall_s": round(time.perf_counter() - t0, 1),
        "data_wait": waits,
        "labelled_selection": "first N patients of dataset.json's train split",
        "host_load_end": os.getloadavg(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"L{labelled}_s{seed}_{kind}.json"
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, dest)
    import shutil

    shutil.rmtree(ws.root, ignore_errors=True)  # checkpoints are not kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--L", type=int, nargs="+", default=[3, 7])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy")
    p.add_argument("--work", type=Path, default=Path("/tmp/mtssl_bench/acc"))
    p.add_argument("--budget", choices=sorted(BUDGET), default="quick")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    p.add_argument("--one", nargs=3, metavar=("L", "SEED", "KIND"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        tasks = [t for t in a.tasks.split(",") if t]
        run_one(int(a.one[0]), int(a.one[1]), a.one[2], a.out, a.work, a.budget, tasks)
        return 0
    if not (ACDC / "dataset.json").is_file():
        print(f"ACDC not found at {ACDC} (set MTSSL_ACDC)", file=sys.stderr)
        return 2
    # Priority: L=3 for every seed before L=7; the cheap 2L baseline right after its L run.
    queue = [(L, s, k) for L in a.L for s in a.seeds for k in ("all", "base2L")]
    queue = [q for q in queue if not (a.out / f"L{q[0]}_s{q[1]}_{q[2]}.json").is_file()]
    running: list[tuple[subprocess.Popen, tuple]] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    while queue or running:
        while queue and len(running) < a.jobs:
            job = queue.pop(0)
            cmd = [sys.executable, __file__, "--out", str(a.out), "--work", str(a.work)]
            cmd += ["--budget", a.budget, "--tasks", a.tasks]
            cmd += ["--one", *map(str, job)]
            print(time.strftime("%H:%M:%S"), "start", job, flush=True)
            running.append((subprocess.Popen(cmd, env=env), job))
        time.sleep(2)
        for proc, job in list(running):
            if proc.poll() is not None:
                running.remove((proc, job))
                print(time.strftime("%H:%M:%S"), "end", job, "rc", proc.returncode, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
