"""Tables and the Dice-versus-budget plot from ``benchmarks/results/budget/*.json``.

    .venv/bin/python benchmarks/budget/summarise.py

Rewrites the part of docs/benchmarks.md between ``<!-- budget:begin -->`` and
``<!-- budget:end -->`` and draws ``docs/images/dice_vs_budget.png``.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RES = ROOT / "benchmarks" / "results" / "budget"
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "images" / "dice_vs_budget.png"
CLASSES = ("right ventricle", "myocardium", "left ventricle")


def _minutes(budget: str) -> float:
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?", budget)
    if not m:
        return float("nan")
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


def load() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RES.glob("*.json"))]


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def row(name: str, models: list[dict], extra: str = "") -> str:
    cells = [ms([m["dice"][c] for m in models]) for c in CLASSES]
    mean = ms([m["mean_dice"] for m in models])
    steps = ", ".join(str(m["steps"]) for m in models)
    return f"| {name} | {len(models)} | " + " | ".join(cells) + f" | **{mean}** | {steps} |{extra}"


HEAD = (
    "| model | seeds | RV | myocardium | LV | mean Dice | steps (per seed) |\n"
    "|---|---|---|---|---|---|---|"
)


def baseline_tables(runs: list[dict]) -> list[str]:
    out = []
    groups = defaultdict(list)
    for r in runs:
        b = r["benchmark"]
        if b["kind"] == "baseline":
            groups[(b["L"], b["budget"])].append(r)
    for (labelled, budget), rs in sorted(
        groups.items(), key=lambda kv: (-kv[0][0], _minutes(kv[0][1]))
    ):
        if budget != "10m":
            continue
        rs.sort(key=lambda r: r["benchmark"]["seed"])
        target = 0.80 if labelled == 7 else 0.65
        mean = statistics.mean(r["models"]["baseline"]["mean_dice"] for r in rs)
        walls = ", ".join(f"{r['benchmark']['wall_s'] / 60:.1f}" for r in rs)
        p = rs[0]["plan"]
        out += [
            f"**Baseline, L = {labelled}, {budget} budget** (target mean Dice ≥ {target:.2f}: "
            f"{'met' if mean >= target else 'missed'}, {mean:.3f}; wall minutes per seed: "
            f"{walls}; plan of seed 0: {p['patch']} px patches, width {p['width']}, depth "
            f"{p['depth']}, batch {p['batch_size']}, {p['precision']}, {p['threads']} "
            f"thread(s), jobs at once: {rs[0]['benchmark']['jobs']})",
            "",
            HEAD,
            row(f"baseline, L = {labelled}", [r["models"]["baseline"] for r in rs]),
            "",
        ]
    return out


def method_tables(runs: list[dict]) -> list[str]:
    out = []
    by = defaultdict(dict)
    for r in runs:
        b = r["benchmark"]
        if b["kind"] in ("method", "base2L"):
            by[(b["L"], b["budget"])].setdefault(b["kind"], []).append(r)
    for (labelled, budget), kinds in sorted(by.items()):
        meth = sorted(kinds.get("method", []), key=lambda r: r["benchmark"]["seed"])
        if not meth:
            continue
        two = sorted(kinds.get("base2L", []), key=lambda r: r["benchmark"]["seed"])
        walls = ", ".join(f"{r['benchmark']['wall_s'] / 60:.1f}" for r in meth)
        out += [
            f"**The whole method, L = {labelled}, {budget} budget** (tasks "
            f"{', '.join(meth[0]['config']['stage1']['tasks'])}; wall minutes per seed: {walls}; "
            f"jobs at once: {meth[0]['benchmark']['jobs']})",
            "",
            HEAD,
            row(f"baseline, L = {labelled}", [r["models"]["baseline"] for r in meth]),
        ]
        if two:
            out.append(
                row(f"baseline, 2L = {2 * labelled}", [r["models"]["baseline"] for r in two])
            )
        tasks = meth[0]["config"]["stage1"]["tasks"]
        for t in tasks:
            ms_ = [r["models"][f"teacher:{t}"] for r in meth if f"teacher:{t}" in r["models"]]
            modes = "/".join(r["selected"][t]["mode"] for r in meth if t in r["selected"])
            out.append(row(f"teacher {t} ({modes})", ms_))
        out.append(row("**student**", [r["models"]["student"] for r in meth]))
        out.append("")
        st = [r["models"]["student"]["mean_dice"] for r in meth]
        bl = [r["models"]["baseline"]["mean_dice"] for r in meth]
        diff = [a - b for a, b in zip(st, bl)]
        line = (
            f"Student − baseline (L = {labelled}), paired by seed: "
            + ", ".join(f"{d:+.3f}" for d in diff)
            + f" (mean {statistics.mean(diff):+.3f})."
        )
        if two:
            d2 = [a - r["models"]["baseline"]["mean_dice"] for a, r in zip(st, two)]
            line += (
                f" Student − baseline (2L = {2 * labelled}): "
                + ", ".join(f"{d:+.3f}" for d in d2)
                + f" (mean {statistics.mean(d2):+.3f})."
            )
        sav = [r.get("savings", {}) for r in meth]
        line += (
            " Saved by successive halving: "
            + ", ".join(f"{s.get('halving_s', 0) / 60:.1f}" for s in sav)
            + " min per seed."
        )
        out += [line, ""]
        sel = [
            "| seed | "
            + " | ".join(f"{t}: halving (joint / pretrain) → kept" for t in tasks)
            + " |"
        ]
        sel.append("|---|" + "---|" * len(tasks))
        for r in meth:
            cells = []
            for t in tasks:
                s = r["selected"].get(t, {})
                h = s.get("halving") or {}
                d = h.get("dice", {})
                cells.append(
                    f"{d.get('joint', 0):.3f} / {d.get('pretrain', 0):.3f} → {s.get('mode')}"
                    f" ({', '.join(h.get('continued') or [])} went on)"
                )
            sel.append(f"| {r['benchmark']['seed']} | " + " | ".join(cells) + " |")
        out += sel + [""]
    return out


def cache_table(runs: list[dict]) -> list[str]:
    """Stage 1 run twice on one workspace: what reusing the cached pre-training buys."""
    out = []
    for r in runs:
        b = r["benchmark"]
        if b["kind"] != "cache":
            continue
        a, c = r["cache_first"], r["cache_second"]
        tasks = a["config"]["stage1"]["tasks"]
        out += [
            f"**Pre-training cache, stage 1, L = {b['L']}, {b['budget']} budget, seed {b['seed']}**"
            f" (the same workspace twice; wall minutes {b['wall_s'][0] / 60:.1f} and "
            f"{b['wall_s'][1] / 60:.1f})",
            "",
            "| run | pre-training reused | steps per model (N) | pre-training steps | "
            + " | ".join(f"teacher {t}" for t in tasks)
            + " | saved by halving | saved by the cache |",
            "|---|---|---|---|" + "---|" * len(tasks) + "---|---|",
        ]
        for name, rep in (("first", a), ("second", c)):
            reused = [
                t for t in tasks if rep["models"].get(f"{t}:pretrain", {}).get("pretext_cached")
            ]
            st = rep["plan"]["steps"]
            sav = rep.get("savings", {})
            cells = [f"{rep['models'][f'teacher:{t}']['mean_dice']:.3f}" for t in tasks]
            out.append(
                f"| {name} | {', '.join(reused) or 'none'} | {st['seg']} | {st['pretext']} | "
                + " | ".join(cells)
                + f" | {sav.get('halving_s', 0) / 60:.1f} min | "
                f"{sav.get('pretext_cache_s', 0) / 60:.1f} min |"
            )
        out.append("")
    return out


def shapes_table() -> list[str]:
    """The fixed-step shape runs (benchmarks/budget/shapes.py) the planner was tuned on."""
    path = ROOT / "benchmarks" / "results" / "budget_shapes.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = [
        "| run | L | patch | width | steps | minutes (1 core) | RV | myocardium | LV | mean |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["dice"]
        out.append(
            f"| {r['name']} | {r['L']} | {r['patch']} | {r['width']} | {r['steps']} | "
            f"{r['train_s'] / 60:.0f} | "
            + " | ".join(f"{d[c]:.3f}" for c in CLASSES)
            + f" | **{r['mean_dice']:.3f}** |"
        )
    return out + [""]


def postprocess_table(runs: list[dict]) -> list[str]:
    """Validation Dice with and without the largest-component post-processing, per model kind."""
    pairs = defaultdict(list)
    for r in runs:
        b = r["benchmark"]
        if b["kind"] not in ("baseline", "method", "base2L"):
            continue
        for name, m in r["models"].items():
            if "raw_mean_dice" in m:
                kind = "teacher" if name.startswith("teacher:") else name.split(":")[0]
                if ":" in name and not name.startswith("teacher:"):
                    kind = "stage-1 model"
                pairs[kind].append((m["raw_mean_dice"], m["mean_dice"], m.get("postprocess")))
    if not pairs:
        return []
    out = [
        "| models | n | kept it | mean Dice without | with the choice | gain |",
        "|---|---|---|---|---|---|",
    ]
    for kind, ps in sorted(pairs.items()):
        raw = statistics.mean(p[0] for p in ps)
        post = statistics.mean(p[1] for p in ps)
        kept = sum(p[2] == "largest_component" for p in ps)
        out.append(f"| {kind} | {len(ps)} | {kept} | {raw:.3f} | {post:.3f} | {post - raw:+.3f} |")
    return out + [""]


def curve(runs: list[dict]) -> list[str]:
    """Dice versus budget: baseline (kind baseline) and student (kind method), per L."""
    pts = defaultdict(list)
    for r in runs:
        b = r["benchmark"]
        if b["seed"] != 0:
            continue
        if b["kind"] == "baseline":
            pts[("baseline", b["L"])].append(
                (_minutes(b["budget"]), r["models"]["baseline"]["mean_dice"])
            )
        elif b["kind"] == "method":
            pts[("student", b["L"])].append(
                (_minutes(b["budget"]), r["models"]["student"]["mean_dice"])
            )
    if not pts:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"baseline": "--o", "student": "-s"}
    for (kind, labelled), p in sorted(pts.items()):
        p.sort()
        ax.plot([x for x, _ in p], [y for _, y in p], styles[kind], label=f"{kind}, L = {labelled}")
        for x, y in p:
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("time budget of the whole run (minutes, 2 CPU cores)")
    ax.set_ylabel("mean Dice, 20 ACDC validation volumes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("What more minutes buy (seed 0)", fontsize=10)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    lines = [
        "| model | L | "
        + " | ".join(f"{m:g} min" for m in sorted({x for p in pts.values() for x, _ in p}))
        + " |"
    ]
    xs = sorted({x for p in pts.values() for x, _ in p})
    lines.append("|---|---|" + "---|" * len(xs))
    for (kind, labelled), p in sorted(pts.items()):
        d = dict(p)
        lines.append(
            f"| {kind} | {labelled} | "
            + " | ".join(f"{d[x]:.3f}" if x in d else "-" for x in xs)
            + " |"
        )
    return ["![Dice versus budget](images/dice_vs_budget.png)", "", *lines, ""]


def main() -> int:
    runs = load()
    if not runs:
        print(f"no results in {RES}", file=sys.stderr)
        return 1
    md = [*baseline_tables(runs), *method_tables(runs), *cache_table(runs), *curve(runs)]
    extra = {"shapes": shapes_table(), "postprocess": postprocess_table(runs)}
    text = DOC.read_text()
    for key, lines in (("budget", md), *extra.items()):
        a, b = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
        if a in text and b in text:
            text = (
                text[: text.index(a) + len(a)]
                + "\n"
                + "\n".join(lines)
                + "\n"
                + text[text.index(b) :]
            )
        else:
            print("\n".join(lines))
    DOC.write_text(text)
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
