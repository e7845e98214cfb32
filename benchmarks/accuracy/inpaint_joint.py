"""Why does joint-mode ``inpaint`` (and "all tasks jointly") end at Dice 0? A small probe.

Trains joint-mode ``inpaint`` on the quick budget (L = 3, seed 0, as in the sweep) with the
task weight lambda = 1 (the sweep's setting) and 0.1, and with lambda = 1 without gradient
clipping, and reports the validation Dice and the last smoothed losses of each term.

    nice -n 10 .venv/bin/python benchmarks/accuracy/inpaint_joint.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    from run import ACDC, OVERRIDES

    from napari_mtssl import api
    from napari_mtssl.training import stages
    from napari_mtssl.training.data import StudyData

    torch.set_num_threads(1)
    folder = Path("/tmp/mtssl_bench/probe_ws_L3")
    ws = (
        api.open_workspace(folder)
        if (folder / "workspace.json").is_file()
        else api.create_workspace(folder, source=ACDC, labelled=3)
    )
    out = {}
    for name, extra in {
        "lambda 1": {},
        "lambda 0.1": {"stage1__lambda_": {"inpaint": 0.1}},
        "lambda 1, no grad clip": {"optim__grad_clip": 0.0},
    }.items():
        cfg = api.make_config("quick", tasks=["inpaint"], seed=0, **{**OVERRIDES, **extra})
        study = StudyData.from_workspace(ws, cfg.data, cfg.seed)
        gen = stages.joint("inpaint", study, cfg, torch.device("cpu"), None)
        res = api.run(gen)
        out[name] = {"val_dice": res["val_dice"], "losses": res["losses"]}
        print(name, out[name], flush=True)
    dest = ROOT / "benchmarks" / "results" / "inpaint_joint.json"
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
