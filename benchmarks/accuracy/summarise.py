"""Tables (mean ± std over seeds) from the accuracy reports, into docs/benchmarks.md.

    .venv/bin/python benchmarks/accuracy/summarise.py

Reads ``benchmarks/results/accuracy/L<L>_s<seed>_{all,base2L}.json`` (whatever has finished),
writes ``benchmarks/results/<folder>_summary.csv`` and replaces the part of
``docs/benchmarks.md`` between ``<!-- <section>:begin -->`` and ``<!-- <section>:end -->``
(``--section accuracy_long --results benchmarks/results/accuracy_long`` for the long budget).
Every number is a validation-set score (10 ACDC patients, 20 volumes, 3D Dice per volume).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["right ventricle", "myocardium", "left ventricle"]
TASKS = ["sdm", "rubik", "moco", "vicreg", "slices", "simsiam", "inpaint"]
SECTION = "accuracy"


def load(folder: Path) -> dict[tuple[int, int, str], dict]:
    out = {}
    for f in sorted(folder.glob("L*_s*_*.json")):
        r = json.loads(f.read_text())
        b = r["benchmark"]
        out[(b["L"], b["seed"], b["kind"])] = r
    return out


def ms(values: list[float], digits: int = 3) -> str:
    """``mean ± std`` (sample std; just the value when there is one)."""
    if not values:
        return "–"
    m = statistics.fmean(values)
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _models(runs: dict, L: int) -> list[dict]:
    return [r["models"] for (l_, _, k), r in runs.items() if l_ == L and k == "all"]


def rows_for(runs: dict, L: int) -> tuple[list[tuple[str, dict]], list[int]]:
    """(row name, {seed: model entry}) in the table's order, and the seeds present."""
    seeds = sorted(s for (l_, s, k) in runs if l_ == L and k == "all")
    rows: list[tuple[str, dict]] = []

    def model(name: str, kind: str = "all") -> dict:
        return {
            s: runs[(L, s, kind)]["models"][name]
            for s in seeds
            if (L, s, kind) in runs and name in runs[(L, s, kind)]["models"]
        }

    tasks = [t for t in TASKS if any(f"teacher:{t}" in e for e in _models(runs, L))]
    rows.append((f"baseline, L = {L}", model("baseline")))
    b2 = {
        s: runs[(L, s, "base2L")]["models"]["baseline"]
        for s in sorted(s for (l_, s, k) in runs if l_ == L and k == "base2L")
    }
    rows.append((f"baseline, 2L = {2 * L}", b2))
    for t in tasks:
        rows.append((f"{t}: joint", model(f"{t}:joint")))
        rows.append((f"{t}: pre-train + fine-tune", model(f"{t}:pretrain")))
    for t in tasks:
        rows.append((f"teacher {t} (selected)", model(f"teacher:{t}")))
    if any("all_joint" in e for e in _models(runs, L)):
        rows.append(("all tasks jointly", model("all_joint")))
    rows.append(("student", model("student")))
    return rows, seeds


def best_teacher(run: dict) -> tuple[str, float]:
    """The teacher with the highest validation mean Dice in one run."""
    ts = {k: v["mean_dice"] for k, v in run["models"].items() if k.startswith("teacher:")}
    k = max(ts, key=ts.__getitem__)
    return k.split(":", 1)[1], ts[k]


def tables(runs: dict) -> tuple[str, list[list]]:
    md: list[str] = []
    csv_rows: list[list] = [["L", "row", "n_seeds", *CLASSES, "mean_dice", "mean_dice_std", "hd95"]]
    for L in sorted({k[0] for k in runs}):
        rows, seeds = rows_for(runs, L)
        if not seeds:
            continue
        md.append(f"#### L = {L} labelled patients (seeds: {', '.join(map(str, seeds))})\n")
        md.append("| model | n | RV | myocardium | LV | mean Dice | HD95 (px) |")
        md.append("|---|---|---|---|---|---|---|")
        for name, per in rows:
            vals = list(per.values())
            if not vals:
                md.append(f"| {name} | 0 | – | – | – | – | – |")
                continue
            cls = [ms([v["dice"][c] for v in vals]) for c in CLASSES]
            mean = [v["mean_dice"] for v in vals]
            hd = [v["hd95"] for v in vals if v.get("hd95") is not None]
            bold = "**" if name in ("student", f"baseline, L = {L}") else ""
            md.append(
                f"| {bold}{name}{bold} | {len(vals)} | {' | '.join(cls)} | "
                f"{bold}{ms(mean)}{bold} | {ms(hd, 1)} |"
            )
            csv_rows.append(
                [
                    L,
                    name,
                    len(vals),
                    *[round(statistics.fmean(v["dice"][c] for v in vals), 4) for c in CLASSES],
                    round(statistics.fmean(mean), 4),
                    round(statistics.stdev(mean), 4) if len(mean) > 1 else "",
                    round(statistics.fmean(hd), 2) if hd else "",
                ]
            )
        md.append("")
        # Mode selection per task.
        md.append(
            f"Mode selection at L = {L} (validation mean Dice; wins = seeds where it was kept):\n"
        )
        md.append("| task | joint | pre-train + fine-tune | pre-train kept | gain of the winner |")
        md.append("|---|---|---|---|---|")
        for t in TASKS:
            if not any(t in runs[(L, s, "all")]["selected"] for s in seeds):
                continue
            sel = [runs[(L, s, "all")]["selected"].get(t) for s in seeds]
            sel = [x for x in sel if x]
            if not sel:
                continue
            j = [x["joint"] for x in sel]
            p = [x["pretrain"] for x in sel]
            wins = sum(x["mode"] == "pretrain" for x in sel)
            gain = [abs(a - b) for a, b in zip(j, p)]
            md.append(f"| {t} | {ms(j)} | {ms(p)} | {wins}/{len(sel)} | {ms(gain)} |")
        md.append("")
        # The paper's questions, paired by seed.
        md.append(f"The questions at L = {L}, paired by seed (difference of mean Dice):\n")
        md.append(
            "| seed | baseline L | best teacher (task) | student | baseline 2L | "
            "teacher − baseline | student − best teacher | student − baseline 2L |"
        )
        md.append("|---|---|---|---|---|---|---|---|")
        d1, d2, d3 = [], [], []
        for s in seeds:
            r = runs[(L, s, "all")]["models"]
            base = r["baseline"]["mean_dice"]
            task, bt = best_teacher(runs[(L, s, "all")])
            st = r.get("student", {}).get("mean_dice")
            b2r = runs.get((L, s, "base2L"))
            b2 = b2r["models"]["baseline"]["mean_dice"] if b2r else None
            d1.append(bt - base)
            if st is not None:
                d2.append(st - bt)
            if st is not None and b2 is not None:
                d3.append(st - b2)

            def f(x):
                return "–" if x is None else f"{x:.3f}"

            md.append(
                f"| {s} | {f(base)} | {bt:.3f} ({task}) | {f(st)} | {f(b2)} | {bt - base:+.3f} | "
                f"{'–' if st is None else f'{st - bt:+.3f}'} | "
                f"{'–' if st is None or b2 is None else f'{st - b2:+.3f}'} |"
            )
        md.append(f"| mean ± std | | | | | {ms(d1)} | {ms(d2)} | {ms(d3)} |")
        md.append("")
        # Cost per model (CPU seconds as measured, one thread per run, two runs at once).
        sec: dict[str, list[float]] = defaultdict(list)
        wait, busy = 0.0, 0.0
        for s in seeds:
            rep = runs[(L, s, "all")]
            for k, v in rep["models"].items():
                if not k.startswith("teacher:"):
                    sec[
                        "joint"
                        if k.endswith(":joint")
                        else "pretrain"
                        if k.endswith(":pretrain")
                        else k
                    ].append(v["seconds"])
            for w, e in rep["benchmark"]["data_wait"].values():
                wait += w
                busy += e
        md.append(
            f"Training time per model at L = {L} (seconds, mean over tasks and seeds; one "
            "torch thread, two runs sharing the 2 cores): "
            + ", ".join(f"{k} {statistics.fmean(v):.0f}" for k, v in sec.items())
            + f"; whole run {ms([runs[(L, s, 'all')]['seconds'] for s in seeds], 0)} s. "
            f"Time waiting for batches: {100 * wait / busy:.1f}% of training time.\n"
        )
    return "\n".join(md), csv_rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--section", default=SECTION, help="marker name in the doc")
    a = p.parse_args(argv)
    begin, end = f"<!-- {a.section}:begin -->", f"<!-- {a.section}:end -->"
    runs = load(a.results)
    if not runs:
        print(f"no reports in {a.results}", file=sys.stderr)
        return 2
    text, rows = tables(runs)
    with open(a.results.parent / f"{a.results.name}_summary.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    if a.doc.is_file():
        doc = a.doc.read_text()
        if begin in doc and end in doc:
            head, rest = doc.split(begin, 1)
            _, tail = rest.split(end, 1)
            tmp = a.doc.with_suffix(".md.tmp")
            tmp.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
            os.replace(tmp, a.doc)
            print(f"updated {a.doc}")
            return 0
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
