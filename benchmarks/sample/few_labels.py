"""How much few labels hurt on the built-in varied study: baselines trained side by side with the
same budget on 1, 2 and 8 labelled scans of it (one thread each, sharing the machine's cores
alike), scored on its 2 validation scans.

    .venv/bin/python benchmarks/sample/few_labels.py             # about 3 minutes
    .venv/bin/python benchmarks/sample/few_labels.py --budget 5m --labelled 1 8

Writes ``benchmarks/results/sample_few_labels.json``: per count, the mean Dice, each class's
Dice and the steps trained.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("MTSSL_BENCH_RESULTS", ROOT / "benchmarks" / "results"))

ONE = """
import json, sys
from napari_mtssl import api
from napari_mtssl.sample import make_sample_study
from napari_mtssl.workspace import importing
labelled, budget, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
study = make_sample_study(n_scans=12, n_labelled=10, varied=True)  # 10 training, 2 validation
ws = importing.import_study(folder, study, labelled, n_val=2)
cfg = api.make_config("quick", budget=budget, num_threads=1, device="cpu")
res = api.run(api.train(ws, cfg, what="baseline"))
m = res["models"]["baseline"]
print(json.dumps({"labelled": labelled, "mean_dice": m["mean_dice"], "steps": m["steps"],
                  "dice": m.get("dice")}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="2m")
    ap.add_argument("--labelled", type=int, nargs="+", default=[1, 2, 8])
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mtssl_few_labels_"))
    procs = {}
    for n in args.labelled:
        procs[n] = subprocess.Popen(
            [sys.executable, "-c", ONE, str(n), args.budget, str(work / f"ws{n}")],
            stdout=subprocess.PIPE,
            text=True,
        )
    rows = []
    for n, p in procs.items():
        out, _ = p.communicate()
        if p.returncode:
            print(f"{n} labelled: failed (exit {p.returncode})", file=sys.stderr)
            continue
        rows.append(json.loads(out.strip().splitlines()[-1]))
    shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        print(
            f"{r['labelled']} labelled scan(s): mean Dice {r['mean_dice']:.3f} ({r['steps']} steps)"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"budget": args.budget, "cores": os.cpu_count(), "runs": rows}
    (OUT / "sample_few_labels.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0 if len(rows) == len(procs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
