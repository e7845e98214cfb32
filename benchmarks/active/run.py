"""Which slices to correct: every ranking strategy with the simulated annotator on ACDC.

For each seed: ``napari-mtssl simulate`` first trains the initial models on ``L`` labelled
patients and the reference baseline (``--rounds 0``, all cores), then runs the strategies,
``--jobs`` processes side by side, each with its share of the cores, so every strategy
retrains under the same conditions. Scores are on the 10 validation patients (20 volumes) of
ACDC's ``val`` split. Results per seed go to ``benchmarks/results/active/s<seed>/``
(results.json, report.md, the plot); ``--summarise`` writes the table and the plot over seeds
(``docs/images/active_curve.png``) and prints the table for docs/benchmarks.md.

    nohup .venv/bin/python benchmarks/active/run.py --seeds 0 --jobs 2 \\
        > /tmp/mtssl_active/log 2>&1 &
    .venv/bin/python benchmarks/active/run.py --summarise

``--initial WS``: start seed 0 from a workspace already trained with
``napari-mtssl train ACDC --labelled 3 --tasks sdm,inpaint --budget 20m --seed 0 --what all``.
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
WORK = Path(os.environ.get("MTSSL_BENCH_WORK", "/tmp/mtssl_bench")) / "active"
OUT = ROOT / "benchmarks" / "results" / "active"
STRATEGIES = ["disagreement", "entropy", "random", "fg_random", "oracle", "none"]


def _simulate(seed: int, extra: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "napari_mtssl.cli", "simulate", str(ACDC)]
    cmd += ["--out", str(WORK / f"s{seed}"), "--seed", str(seed), *extra]
    print(time.strftime("%H:%M:%S"), " ".join(cmd[3:]), flush=True)
    return subprocess.Popen(cmd, stdout=log.open("a"), stderr=subprocess.STDOUT)


def run_seed(seed: int, strategies: list[str], jobs: int, common: list[str], initial: str | None):
    log = WORK / f"s{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    first = [*common, "--rounds", "0", "--strategy", "none"]
    if initial:
        first += ["--initial", initial]
    if _simulate(seed, first, log).wait() != 0:
        raise SystemExit(f"seed {seed}: the initial models failed; see {log}")
    cores = os.cpu_count() or 1
    groups = [strategies[i::jobs] for i in range(jobs) if strategies[i::jobs]]
    threads = max(1, cores // len(groups))
    procs = []
    for g in groups:
        procs.append(
            _simulate(seed, [*common, "--strategy", ",".join(g), "--threads", str(threads)], log)
        )
        time.sleep(5)
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"seed {seed}: a strategy failed; see {log}")
    # The last process wrote the report with every strategy; keep what the docs need.
    dest = OUT / f"s{seed}"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "report.md", "dice_vs_corrected.png"):
        shutil.copy2(WORK / f"s{seed}" / name, dest / name)
    res = json.loads((dest / "results.json").read_text())
    res["benchmark"] = {"jobs": len(groups), "threads_per_job": threads, "cores": cores}
    (dest / "results.json").write_text(json.dumps(res, indent=1))


def summarise() -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from napari_mtssl.simulate import _curve, slices_to_reach

    seeds = sorted(OUT.glob("s*/results.json"))
    if not seeds:
        return "no results yet"
    runs = [json.loads(p.read_text()) for p in seeds]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharey=True)
    rows = []
    for name in STRATEGIES:
        per = [r["strategies"][name] for r in runs if name in r["strategies"]]
        if not per:
            continue
        k = runs[0]["settings"]["per_round"]
        for ax, key in zip(axes, (None, "stage2")):
            curves = [_curve(st, key, k) for st in per]
            if key is not None:  # stage 2: the start and the end
                curves = [(x[:1] + x[-1:], y[:1] + y[-1:]) for x, y in curves if len(x) > 1]
            if not curves:
                continue
            n = min(len(c[0]) for c in curves)
            xs = curves[0][0][:n]
            ys = np.array([c[1][:n] for c in curves])
            label = name if name != "none" else f"none: retraining only, at round x {k}"
            ls = ":" if name == "none" else "-"
            (line,) = ax.plot(xs, ys.mean(0), marker="o", label=label, ls=ls)
            if len(ys) > 1:
                ax.fill_between(xs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
        ref = [r["reference"]["mean_dice"] for r in runs if r.get("reference")]
        quick = [_curve(st, None)[1] for st in per]
        s2 = [_curve(st, "stage2")[1][-1] for st in per if len(_curve(st, "stage2")[1]) > 1]
        reach = [
            slices_to_reach(st, r["reference"]["mean_dice"])
            for st, r in zip(per, runs)
            if r.get("reference")
        ]
        rows.append((name, quick, s2, reach, ref))
    s = runs[0]["settings"]
    for ax, title in zip(axes, ("after each quick retrain", "full stage 2 after the last round")):
        base = [r["initial"]["baseline"]["mean_dice"] for r in runs if "baseline" in r["initial"]]
        ref = [r["reference"]["mean_dice"] for r in runs if r.get("reference")]
        if base:
            ax.axhline(np.mean(base), color="grey", ls=":", label=f"baseline L={s['labelled']}")
        if ref:
            ax.axhline(np.mean(ref), color="black", ls="--", label=f"baseline L={s['reference']}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("corrected slices")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("student mean Dice, ACDC validation")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"Which slices to correct: L={s['labelled']}, {s['per_round']} a round, "
        f"{len(runs)} seed(s)",
        fontsize=11,
    )
    fig.tight_layout()
    img = ROOT / "docs" / "images" / "active_curve.png"
    fig.savefig(img)
    plt.close(fig)

    def fmt(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        if len(vals) == 1:
            return f"{vals[0]:.3f}"
        return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"

    head = "| strategy | " + " | ".join(f"after {i * s['per_round']}" for i in range(6))
    lines = [head + " | mean of rounds 1-5 | full stage 2 | slices to reach baseline L=7 |"]
    lines.append("|---" * 10 + "|")
    for name, quick, s2, reach, _ in rows:
        cols = [fmt([q[i] for q in quick if len(q) > i]) for i in range(6)]
        mean = fmt([float(np.mean(q[1:6])) for q in quick if len(q) > 5])
        got = ", ".join("not reached" if r is None else str(r) for r in reach) or "-"
        lines.append(f"| {name} | " + " | ".join(cols) + f" | {mean} | {fmt(s2)} | {got} |")
    return "\n".join(lines) + f"\n\nplot: {img.relative_to(ROOT)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--strategies", nargs="+", default=STRATEGIES)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--labelled", type=int, default=3)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--budget", default="20m")
    p.add_argument("--initial", help="a trained workspace for the first seed (see above)")
    p.add_argument("--summarise", action="store_true", help="only the table and the plot")
    a = p.parse_args(argv)
    if not a.summarise:
        if not (ACDC / "dataset.json").is_file():
            print(f"ACDC not found at {ACDC} (set MTSSL_ACDC)", file=sys.stderr)
            return 2
        common = ["--labelled", str(a.labelled), "--per-round", str(a.per_round)]
        common += ["--budget", a.budget, "--quiet"]
        for i, seed in enumerate(a.seeds):
            rounds = ["--rounds", str(a.rounds)]
            run_seed(seed, a.strategies, a.jobs, common + rounds, a.initial if i == 0 else None)
    print(summarise())
    return 0


if __name__ == "__main__":
    sys.exit(main())
