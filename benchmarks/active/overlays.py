"""The students of the strategy benchmark over validation slices nobody trained on.

For a seed's simulation folder: ground truth, the initial student and each strategy's student
after its last quick retrain, side by side on the same slices, cropped to the heart, with each
mask's Dice on that slice (RV orange, myocardium green, LV red, as in the reports):

    .venv/bin/python benchmarks/active/overlays.py /tmp/mtssl_bench/active/s0 \\
        --slice patient028_frame01:5 --slice patient085_frame02:7
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "images" / "acdc"
STRATEGIES = ["disagreement", "entropy", "random", "fg_random", "oracle", "none"]


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_mtssl import api
    from napari_mtssl.cli import _crop, _slice_dice

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("folder", type=Path, help="a simulation folder (napari-mtssl simulate --out)")
    p.add_argument("--slice", action="append", required=True, help="CASE:Z of a validation scan")
    a = p.parse_args(argv)
    initial = api.open_workspace(a.folder / "initial")
    wss = {"initial student": initial}
    for s in STRATEGIES:
        if (a.folder / s / "workspace" / "workspace.json").is_file():
            wss[f"{s}, final student"] = api.open_workspace(a.folder / s / "workspace")
    names = {initial.record(sid).name: sid for sid in initial.scan_ids("val")}
    nc = max(2, int(initial.num_classes))
    OUT.mkdir(parents=True, exist_ok=True)
    for spec in a.slice:
        case, _, z_text = spec.partition(":")
        sid, z = names[case], int(z_text)
        scan, truth = initial.load_scan(sid), initial.labels(sid)
        preds = {
            t: api.predict(w, scan, model="student", device="cpu").labels for t, w in wss.items()
        }
        panels = [("ground truth", truth), *preds.items()]
        ys, xs = _crop(truth[z], *(m[z] for m in preds.values()))
        cols = 4
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.6 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (title, mask) in zip(axes.flat, panels):
            ax.imshow(scan.array[z][ys, xs], cmap="gray")
            m = np.ma.masked_equal(mask[z][ys, xs], 0)
            ax.imshow(m, cmap="tab10", vmin=0, vmax=max(9, nc), alpha=0.45, interpolation="nearest")
            if mask is not truth:
                title = f"{title}\nslice Dice {_slice_dice(truth[z], mask[z], nc):.2f}"
            ax.set_title(title, fontsize=9)
        fig.suptitle(
            f"{case} slice {z}: each strategy's final student "
            "(after its corrected slices and a full stage 2)",
            fontsize=10,
        )
        fig.tight_layout()
        path = OUT / f"active_{case}_z{z}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
