"""The fair comparison users face: the whole method with budget B against the baseline trained
alone with the same budget B, the same labelled patients, the same machine.

For each (L, B, seed): ``fair-method`` (``napari-mtssl train ACDC --labelled L --budget B``,
nothing else set; ``--stage2 paper`` gives ``fair-paper``) and ``fair-baseline`` (the same with
``--what baseline``, shared by both stage-2 variants), one after the other by default. Each result
is the run's report (every model's scores and steps, the ensemble's own validation Dice, the
comparison line) with a ``benchmark`` block: budget, wall time and its share of the budget,
threads, whether the two sides ran at once, the machine's load. Scores are on the 10 validation
patients (20 volumes) of ACDC's ``val`` split. A rerun skips results that exist.

    .venv/bin/python benchmarks/budget/fair.py run --L 3 --budget 20m 60m --seeds 0 1 2
    .venv/bin/python benchmarks/budget/fair.py run --L 3 --budget 60m --seeds 0 --stage2 paper
    .venv/bin/python benchmarks/budget/fair.py run --L 3 --budget 20m --seeds 0 --side-by-side
    .venv/bin/python benchmarks/budget/fair.py summarise     # table into docs/benchmarks.md

``--side-by-side`` runs the method and its baseline alone at once with one thread each (the same
conditions for both sides, half the wall time); the results say so and the table marks them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACDC = Path(os.environ.get("MTSSL_ACDC", ROOT.parent / "shared" / "data" / "acdc"))
WORK = Path(os.environ.get("MTSSL_BENCH_WORK", "/tmp/mtssl_bench")) / "fair"
OUT = Path(os.environ.get("MTSSL_BENCH_RESULTS", ROOT / "benchmarks" / "results" / "fair"))
DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "images" / "fair_comparison.png"
BEGIN, END = "<!-- fair:begin -->", "<!-- fair:end -->"


def result_path(kind: str, labelled: int, budget: str, seed: int) -> Path:
    return OUT / f"{kind}_L{labelled}_{budget}_s{seed}.json"


def _save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def run_one(kind: str, labelled: int, budget: str, seed: int, threads: int, pair: bool) -> None:
    """One side of a pair, in this process (``kind``: fair-method | fair-paper | fair-baseline)."""
    from napari_mtssl import api
    from napari_mtssl.cli import write_report
    from napari_mtssl.training.config import parse_budget

    tag = f"{kind}_L{labelled}_{budget}_s{seed}"
    folder = WORK / tag
    shutil.rmtree(folder, ignore_errors=True)
    ws = api.create_workspace(folder, source=ACDC, labelled=labelled)
    over = {"num_threads": threads} if threads else {}
    if kind == "fair-paper":
        over["stage2__method"] = "paper"
    cfg = api.make_config("quick", budget=budget, seed=seed, **over)
    what = "baseline" if kind == "fair-baseline" else "all"
    load0 = os.getloadavg()
    t0 = time.perf_counter()

    def on_event(ev: dict) -> None:
        if ev.get("type") in ("model_done", "note", "selected"):
            keep = {k: v for k, v in ev.items() if k not in ("dice", "hd95")}
            print(f"[{tag}] {json.dumps(keep, default=str)}", flush=True)

    report = api.run(api.train(ws, cfg, what), on_event)
    wall = time.perf_counter() - t0
    b = parse_budget(budget)
    report["benchmark"] = {
        "kind": kind,
        "L": labelled,
        "budget": budget,
        "budget_s": b,
        "seed": seed,
        "wall_s": round(wall, 1),
        "share_of_budget": round(wall / b, 3),
        "threads": threads or "plan",
        "side_by_side": pair,
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
        "cores": os.cpu_count(),
    }
    if seed == 0:  # overlays of validation patients no model trained on
        write_report(ws, report, WORK / f"report_{tag}", overlays=4)
    _save(result_path(kind, labelled, budget, seed), report)
    shutil.rmtree(folder / "runs", ignore_errors=True)  # weights are not kept


def _side(kind: str, L: int, b: str, s: int, threads: int, pair: bool) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "one", kind, str(L), b, str(s), str(threads)]
    cmd += ["pair"] if pair else []
    print(time.strftime("%H:%M:%S"), "start", kind, L, b, s, flush=True)
    return subprocess.Popen(cmd)


def cmd_run(a: argparse.Namespace) -> int:
    if not (ACDC / "dataset.json").is_file():
        print(f"ACDC not found at {ACDC} (set MTSSL_ACDC)", file=sys.stderr)
        return 2
    method = "fair-paper" if a.stage2 == "paper" else "fair-method"
    for s in a.seeds:
        for b in a.budget:
            for L in a.L:
                todo = [
                    k for k in (method, "fair-baseline") if not result_path(k, L, b, s).is_file()
                ]
                if a.side_by_side:
                    procs = [_side(k, L, b, s, 1, True) for k in todo]
                    rcs = [p.wait() for p in procs]
                else:
                    rcs = [_side(k, L, b, s, 0, False).wait() for k in todo]
                print(time.strftime("%H:%M:%S"), "end", L, b, s, "rc", rcs, flush=True)
    return 0


# -- the table -------------------------------------------------------------------------------------


def _load(kind: str, L: int, b: str, s: int) -> dict | None:
    p = result_path(kind, L, b, s)
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _dice(report: dict | None, model: str) -> float | None:
    m = ((report or {}).get("models") or {}).get(model) or {}
    return m.get("mean_dice")


def _steps(report: dict | None, model: str) -> int | None:
    m = ((report or {}).get("models") or {}).get(model) or {}
    return m.get("steps")


def _f(v: float | None, d: int = 3) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def _best_teacher(report: dict | None) -> tuple[str, float | None]:
    ts = {
        k.removeprefix("teacher:"): v.get("mean_dice")
        for k, v in ((report or {}).get("models") or {}).items()
        if k.startswith("teacher:") and v.get("mean_dice") is not None
    }
    if not ts:
        return "-", None
    k = max(ts, key=ts.__getitem__)
    return k, ts[k]


def rows() -> list[dict]:
    """One row per (L, budget, seed) that has a baseline alone and at least one method run."""
    out = []
    for p in sorted(OUT.glob("fair-baseline_L*_s*.json")):
        base = json.loads(p.read_text())
        bm = base["benchmark"]
        L, b, s = int(bm["L"]), str(bm["budget"]), int(bm["seed"])
        semi, paper = _load("fair-method", L, b, s), _load("fair-paper", L, b, s)
        if semi is None and paper is None:
            continue
        kept = ((semi or {}).get("models", {}).get("student") or {}).get("kept_start")
        name, best = _best_teacher(semi or paper)
        out.append(
            {
                "L": L,
                "budget": b,
                "seed": s,
                "student": _dice(semi, "student"),
                "student_trained": (kept or {}).get("student_dice"),
                "paper": _dice(paper, "student"),
                "ensemble": ((semi or {}).get("ensemble") or {}).get("mean_dice"),
                "best_teacher": (name, best),
                "run_baseline": _dice(semi or paper, "baseline"),
                "alone": _dice(base, "baseline"),
                "wall": (
                    ((semi or paper) or {}).get("benchmark", {}).get("share_of_budget"),
                    bm.get("share_of_budget"),
                ),
                "steps": (
                    _steps(base, "baseline"),
                    _steps(semi or paper, "baseline"),
                    _steps(semi, "student"),
                ),
                "side_by_side": bool(bm.get("side_by_side")),
            }
        )
    return out


def table(rs: list[dict]) -> str:
    lines = []
    for L, b in sorted({(r["L"], r["budget"]) for r in rs}):
        group = [r for r in rs if r["L"] == L and r["budget"] == b]
        lines += [
            f"**L = {L}, {b}**",
            "",
            "| seed | student | (trained) | paper's student | ensemble | best teacher | run's "
            "baseline | baseline alone | student − alone | wall % (method / alone) | steps "
            "(alone / run's baseline / student) |",
            "|" + "---|" * 11,
        ]
        for r in sorted(group, key=lambda r: r["seed"]):
            d = None if r["student"] is None else r["student"] - r["alone"]
            w = r["wall"]
            pct = " / ".join("-" if x is None else f"{100 * x:.0f}" for x in w)
            st = " / ".join("-" if x is None else str(x) for x in r["steps"])
            mark = " (side by side)" if r["side_by_side"] else ""
            lines.append(
                f"| {r['seed']}{mark} | **{_f(r['student'])}** | {_f(r['student_trained'])} | "
                f"{_f(r['paper'])} | {_f(r['ensemble'])} | {r['best_teacher'][0]} "
                f"{_f(r['best_teacher'][1])} | {_f(r['run_baseline'])} | **{_f(r['alone'])}** | "
                f"{'-' if d is None else f'{d:+.3f}'} | {pct} | {st} |"
            )
        if len(group) > 1:

            def ms(key: str, group: list[dict] = group) -> str:
                v = [r[key] for r in group if r[key] is not None]
                if not v:
                    return "-"
                sd = statistics.stdev(v) if len(v) > 1 else 0.0
                return f"{statistics.mean(v):.3f} ± {sd:.3f}"

            lines.append(
                f"| mean | {ms('student')} | | {ms('paper')} | {ms('ensemble')} | | "
                f"{ms('run_baseline')} | {ms('alone')} | | | |"
            )
        lines.append("")
    lines.append(
        "*student*: the model the run keeps (a student that ended below its starting model is "
        "replaced by that model; *(trained)* is then what stage 2 itself reached). Nothing "
        "measured is left out; combinations not in the table were not run."
    )
    return "\n".join(lines)


def plot(rs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["L"], r["budget"]) for r in rs})
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(groups), 3.4))
    for gi, (L, b) in enumerate(groups):
        for r in (r for r in rs if r["L"] == L and r["budget"] == b):
            xs = [gi - 0.15, gi + 0.15]
            if r["student"] is not None:
                ax.plot(xs, [r["alone"], r["student"]], "-o", color="tab:blue", alpha=0.8)
            if r["paper"] is not None:
                ax.plot(xs, [r["alone"], r["paper"]], "--s", color="tab:orange", alpha=0.8)
    ax.set_xticks(range(len(groups)), [f"L = {L}\n{b}" for L, b in groups])
    ax.set_ylabel("mean Dice (ACDC validation)")
    ax.set_title("baseline alone (left) → whole method's student (right)", fontsize=9)
    ax.plot([], [], "-o", color="tab:blue", label="student (default)")
    ax.plot([], [], "--s", color="tab:orange", label="student (paper)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def cmd_summarise(a: argparse.Namespace) -> int:
    rs = rows()
    text = table(rs)
    print(text)
    doc = DOC.read_text()
    if BEGIN in doc and END in doc:
        i, j = doc.index(BEGIN) + len(BEGIN), doc.index(END)
        DOC.write_text(doc[:i] + "\n" + text + "\n" + doc[j:])
    if rs:
        plot(rs)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "one":
        kind, L, b, s, threads = argv[1], int(argv[2]), argv[3], int(argv[4]), int(argv[5])
        run_one(kind, L, b, s, threads, pair=len(argv) > 6)
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the pairs that have no result yet")
    r.add_argument("--L", type=int, nargs="+", default=[3])
    r.add_argument("--budget", nargs="+", default=["20m"])
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--stage2", choices=["semi", "paper"], default="semi")
    r.add_argument("--side-by-side", action="store_true", help="both sides at once, 1 core each")
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("summarise", help="the table into docs/benchmarks.md and the plot")
    s.set_defaults(func=cmd_summarise)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
