"""Which shape a time budget should buy: a baseline at fixed steps, patch size and width.

The planner's constants (``training/planning/shape.py``: ``COVERAGE``, ``GOOD_STEPS``) come from these
runs: the same baseline on ACDC at L labelled patients, native resolution (1 mm, the data's
spacing), one torch thread, bf16, with a patch size, network width and step count chosen so
that each run takes about the same time (20 minutes of one core, two runs side by side).
Validation on the 10 validation patients. Each run appends one line to
``benchmarks/results/budget_shapes.jsonl``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/budget/shapes.py p128w16 7 4300 128 16 8 1
    # name  L  steps  patch  width  batch  threads  [section__field=value ...]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACDC = Path(os.environ.get("MTSSL_ACDC", ROOT.parent / "shared" / "data" / "acdc"))
WORK = Path(os.environ.get("MTSSL_BENCH_WORK", "/tmp/mtssl_bench")) / "shapes"
OUT = ROOT / "benchmarks" / "results" / "budget_shapes.jsonl"


def main(argv: list[str]) -> int:
    import torch

    from napari_mtssl import api
    from napari_mtssl.training.config import profile
    from napari_mtssl.training.data.preprocess import Preprocessing
    from napari_mtssl.training.data.slices import StudyData
    from napari_mtssl.training.loop import stages
    from napari_mtssl.workspace import Workspace

    name, labelled, steps, patch, width, batch, threads = argv[:7]
    labelled, steps, patch, width, batch, threads = map(
        int, (labelled, steps, patch, width, batch, threads)
    )
    extra = dict(a.split("=", 1) for a in argv[7:])
    torch.set_num_threads(threads)
    folder = WORK / f"ws_L{labelled}"
    if (folder / "workspace.json").is_file():
        ws = Workspace.open(folder)
    else:
        ws = api.create_workspace(folder, source=ACDC, labelled=labelled)
    over = {
        "data__patch_size": patch,
        "model__width": width,
        "data__batch_size": batch,
        "baseline__steps": steps,
        "stage1__joint_steps": steps,
        "stage1__eval_every": steps,
        "optim__precision": "bf16",
        "model__depth": int(extra.pop("depth", 4)),
    }
    for k, v in extra.items():
        try:
            v = json.loads(v)
        except ValueError:
            pass
        over[k] = v
    cfg = profile("tiny", **over)
    t0 = time.time()
    study = StudyData.from_workspace(ws, Preprocessing(spacing=(1.0, 1.0)), patch)
    t1 = time.time()
    res = api.run(stages.baseline(study, cfg, torch.device("cpu"), None))
    m = res["metrics"]
    out = {
        "name": name,
        "L": labelled,
        "steps": steps,
        "patch": patch,
        "width": width,
        "batch": batch,
        "threads": threads,
        "extra": extra,
        "prep_s": round(t1 - t0, 1),
        "train_s": round(res["seconds"], 1),
        "mean_dice": m["mean_dice"],
        "dice": m["dice"],
    }
    print(json.dumps(out))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "a") as f:
        f.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
