"""``napari-mtssl train | predict | evaluate | simulate | demo``: the engine from a shell, over :mod:`api`.

Errors users can cause (bad arguments, unreadable files, no labels) end with one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from napari_mtssl import api, events

__all__ = ["main", "build_parser", "write_report"]


class CliError(Exception):
    """A problem to print as one line (exit status 2)."""


# -- progress --------------------------------------------------------------------------------


class Progress:
    """A one-line progress display on stderr (redrawn with ``\\r`` on a terminal, else every
    few seconds as plain lines), so no progress-bar dependency is needed."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.quiet = quiet
        self._last = 0.0
        self._open = False

    def __call__(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        e = events.parse(event)
        if isinstance(e, events.Progress):
            self._progress(e)
            return
        if isinstance(e, events.Status):  # transient: redrawn on a terminal, left out of logs
            if self.tty:
                self.stream.write("\r" + e.message[:110].ljust(110))
                self._open = True
                self.stream.flush()
            return
        self._newline()
        line = self._line(e)
        if line:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _progress(self, e: events.Progress) -> None:
        now = time.monotonic()
        if now - self._last < (0.1 if self.tty else 5) and e.step != e.total:
            return
        self._last = now
        frac = e.step / max(1, e.total)
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        line = f"{e.model:<16} [{bar}] {e.step}/{e.total}"
        if e.run_budget_s:
            line += f"  run {(e.run_elapsed_s or 0) / 60:.1f}/{e.run_budget_s / 60:.0f} min"
        if e.loss is not None:
            line += f"  loss {e.loss:.3f}"
        if e.val_dice is not None:
            line += f"  val dice {e.val_dice:.3f}"
        line += f"  eta {e.eta_s or 0:.0f}s"
        if self.tty:
            self.stream.write("\r" + line[:110].ljust(110))
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    @staticmethod
    def _line(e: events.Event) -> str:
        if isinstance(e, events.ModelDone):
            md = "n/a" if e.mean_dice is None else f"{e.mean_dice:.3f}"
            return f"done {e.model}: mean Dice {md} ({e.seconds:.0f}s)"
        if isinstance(e, events.Selected):
            return f"teacher for {e.task}: {e.mode} mode"
        if isinstance(e, events.Halving):
            return (
                f"{e.task} after {e.at_steps} steps: joint {_fmt(e.dice.get('joint'))}, "
                f"pretrain {_fmt(e.dice.get('pretrain'))}; {e.reason}"
            )
        if isinstance(e, events.PlanMade):
            return (
                "plan:\n" + "\n".join(f"  {x}" for x in e.describe) + "\n" + plan_steps_text(e.plan)
            )
        if isinstance(e, events.Note):
            return f"note: {e.message}"
        if isinstance(e, events.Start):
            d = e.data
            return (
                f"run {e.run} on {e.device}: {len(d.get('train_scans', []))} training "
                f"scans ({d.get('labelled_slices', 0)} labelled slices), "
                f"{len(d.get('val_scans', []))} validation scans; models: {', '.join(e.plan)}"
            )
        return ""

    def _newline(self) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False


# -- report ----------------------------------------------------------------------------------


def plan_steps_text(plan: dict[str, Any]) -> str:
    """The per-model steps and time estimates of a plan, as indented lines."""
    from napari_mtssl.training.plan import Plan

    if not plan:
        return ""
    p = Plan.from_dict(plan)
    rows = p.step_table()
    if not rows:
        return ""
    w = max(len(r[0]) for r in rows)
    lines = [f"  {m:<{w}}  {n:>18} steps  ~{t}" for m, n, t in rows]
    return "\n".join(lines)


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def report_table(report: dict[str, Any]) -> str:
    """Markdown table: one row per model, per-class Dice, mean, HD95, mode, steps, seconds."""
    models = report.get("models", {})
    classes: list[str] = []
    for m in models.values():
        for c in m.get("dice", {}):
            if c not in classes:
                classes.append(c)
    head = ["model", *classes, "mean Dice", "HD95 (mm)", "mode", "steps", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in sorted(models, key=api._model_key):
        m = models[name]
        row = [name, *(_fmt(m.get("dice", {}).get(c)) for c in classes)]
        row += [
            _fmt(m.get("mean_dice")),
            _fmt(m.get("hd95"), 2),
            _fmt(m.get("mode")),
            _fmt(m.get("steps")),
            _fmt(m.get("seconds"), 1),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_report(ws: Any, report: dict[str, Any], out: Path, overlays: int = 3) -> None:
    """``out/report.json``, ``out/report.md`` and PNG overlays in ``out/report/``."""
    from napari_mtssl._atomic import atomic_write_json, atomic_write_text

    atomic_write_json(out / "report.json", report)
    pngs = []
    try:
        pngs = _overlays(ws, report, out / "report", overlays)
    except Exception as exc:  # noqa: BLE001 - pictures are a bonus; the numbers are the report
        print(f"note: could not draw overlays ({exc})", file=sys.stderr)
    sel = report.get("selected", {})
    budget = report.get("budget", {})
    spent = f"{report.get('seconds', 0):.0f} s"
    if budget.get("budget_s"):
        spent += f" of a {budget['budget_s'] / 60:.0f} min budget"
    md = [
        "# napari-mtssl report",
        "",
        f"Run `{report.get('run')}` ({report.get('what')}) on {report.get('device')}, {spent}.",
        "",
        "Scores on the validation scans "
        f"({report.get('data', {}).get('val_source', 'val')}): 3D Dice per class per volume, "
        "averaged; HD95 in mm.",
        "",
        report_table(report),
        "",
    ]
    comp = report.get("comparison") or {}
    if comp.get("line"):
        md += [f"**{comp['line'][0].upper()}{comp['line'][1:]}.**", ""]
    if sel:
        md += ["## Teacher selection (validation mean foreground Dice)", ""]
        md += ["| task | joint | pretrain | kept | steps (joint / pretrain) |"]
        md += ["|---|---|---|---|---|"]
        for t, s in sel.items():
            st = s.get("steps", {})
            md.append(
                f"| {t} | {_fmt(s.get('joint'))} | {_fmt(s.get('pretrain'))} | {s['mode']} | "
                f"{_fmt(st.get('joint'))} / {_fmt(st.get('pretrain'))} |"
            )
        md.append("")
        halv = {t: s["halving"] for t, s in sel.items() if s.get("halving")}
        if halv:
            md += [
                "Successive halving: both modes trained the first "
                f"{next(iter(halv.values()))['at_steps']} steps; "
                + "; ".join(
                    f"{t}: joint {_fmt(h['dice'].get('joint'))}, pretrain "
                    f"{_fmt(h['dice'].get('pretrain'))}, went on: {', '.join(h['continued'])}"
                    for t, h in halv.items()
                ),
                "",
            ]
    post = {
        k: v
        for k, v in report.get("models", {}).items()
        if v.get("postprocess") not in (None, "none")
    }
    if post:
        md += [
            "Post-processing: keeping only the largest connected foreground component raised the "
            "validation Dice of "
            + ", ".join(
                f"{k} ({_fmt(v.get('raw_mean_dice'))} → {_fmt(v.get('mean_dice'))})"
                for k, v in sorted(post.items(), key=lambda kv: api._model_key(kv[0]))
            )
            + "; their predictions apply it (nnU-Net's rule, decided on the validation scans).",
            "",
        ]
    sav = report.get("savings") or {}
    if any(sav.values()):
        md += [
            f"Saved by successive halving: about {sav.get('halving_s', 0):.0f} s; by reusing "
            f"cached pre-training: about {sav.get('pretext_cache_s', 0):.0f} s.",
            "",
        ]
    plan = report.get("plan")
    if plan:
        from napari_mtssl.training.plan import Plan

        p = Plan.from_dict(plan)
        md += ["## The plan", "", *p.describe(), ""]
        md += ["| model | steps | estimated |", "|---|---|---|"]
        md += [f"| {m} | {n} | {t} |" for m, n, t in p.step_table()]
        md.append("")
    notes = report.get("data", {}).get("notes", [])
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if pngs:
        md += ["## Validation slices", ""]
        md += [f"![{p.stem}](report/{p.name})" for p in pngs]
        md.append("")
    atomic_write_text(out / "report.md", "\n".join(md))


def _crop(*masks: Any) -> tuple[slice, slice]:
    """The part of a slice worth looking at: the foreground of all masks with a margin of
    35 % of its size each side (at least 24 px), or the whole slice when there is none."""
    import numpy as np

    fg = np.logical_or.reduce([np.asarray(m) > 0 for m in masks])
    if not fg.any():
        return slice(None), slice(None)
    out = []
    for axis in (1, 0):
        idx = np.flatnonzero(fg.any(axis=axis))
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        pad = max(24, int(0.35 * (hi - lo)))
        out.append(slice(max(0, lo - pad), min(fg.shape[1 - axis], hi + pad)))
    return out[0], out[1]


def _slice_dice(truth: Any, pred: Any, num_classes: int) -> float:
    """Mean Dice over the foreground classes present in either mask of one slice."""
    import numpy as np

    from napari_mtssl.training.metrics import dice_per_class

    present = [c for c in range(1, num_classes) if (truth == c).any() or (pred == c).any()]
    scores = dice_per_class(pred, truth, num_classes)
    return float(np.mean([scores[c - 1] for c in present])) if present else 1.0


def _overlay_models(report: dict[str, Any]) -> dict[str, str]:
    """The models the overlays show, in the report's order, each with its panel title: a teacher
    is the model of its selected mode, so the two share one panel ("teacher:sdm = sdm:pretrain")."""
    models = sorted(report.get("models", {}), key=api._model_key)
    shown: dict[str, str] = {}
    same: set[str] = set()
    for name in models:
        entry = report["models"][name]
        if name.startswith("teacher:") and entry.get("task") and entry.get("mode"):
            twin = f"{entry['task']}:{entry['mode']}"
            if twin in report["models"]:
                shown[name] = f"{name} = {twin}"
                same.add(twin)
                continue
        shown[name] = name
    return {name: title for name, title in shown.items() if name not in same}


def _overlays(ws: Any, report: dict[str, Any], folder: Path, n: int) -> list[Path]:
    """Per validation scan: the middle labelled slices, ground truth and every model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = _overlay_models(report)
    val = [s for s in ws.scan_ids("val") if ws.labelled_slices(s)]
    if not val:
        val = [s for s in ws.scan_ids("train") if ws.labelled_slices(s)]
    if not models or not val:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    nc = max(2, int(ws.num_classes))
    for sid in val[:n]:
        scan = ws.load_scan(sid)
        truth = ws.labels(sid)
        lab = ws.labelled_slices(sid)
        z = lab[len(lab) // 2]
        preds = {m: api.predict(ws, scan, model=m, device="cpu").labels for m in models}
        panels = [("ground truth", truth), *preds.items()]
        ys, xs = _crop(truth[z], *(p[z] for p in preds.values()))
        cols = min(4, len(panels))
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(3.0 * cols, 3.4 * rows), squeeze=False, layout="constrained"
        )
        img = scan.array[z][ys, xs]
        for ax in axes.flat:
            ax.axis("off")
        for ax, (title, mask) in zip(axes.flat, panels):
            ax.imshow(img, cmap="gray")
            m = np.ma.masked_equal(mask[z][ys, xs], 0)
            ax.imshow(m, cmap="tab10", vmin=0, vmax=max(9, nc), alpha=0.45, interpolation="nearest")
            if mask is not truth:
                shown = models[title]
                title = f"{shown}\nslice Dice {_slice_dice(truth[z], mask[z], nc):.2f}"
            ax.set_title(title, fontsize=9)
        fig.suptitle(f"{ws.record(sid).name} slice {z}", fontsize=9)
        path = folder / f"{sid}_z{z}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append(path)
    return out


# -- commands --------------------------------------------------------------------------------


_DATASET_PARTS = {"imagesTr", "imagesTs", "labelsTr", "labelsTs"}


def _read_as_folder(path: Path) -> Path | None:
    """The folder a reader takes whole when given ``path``: a dataset's image or label folder,
    a dataset's own folder, or a DICOM series; a new file there would be read as data."""
    parent = path.parent
    if parent.name in _DATASET_PARTS or (parent / "dataset.json").is_file():
        return parent
    if path.suffix.lower() in (".dcm", ".ima") or path.suffix == "":
        return parent  # a DICOM slice: its folder is the series
    return None


def output_path(
    out: str,
    *,
    force: bool = False,
    inputs: tuple[str | Path, ...] = (),
    workspace: Any = None,
) -> Path:
    """``out`` checked before anything is computed: never an input, never inside an input
    folder or the workspace, never an existing file unless ``force``."""
    p = Path(out).expanduser()
    rp = p.resolve()
    for i in inputs:
        ri = Path(i).expanduser().resolve()
        if rp == ri:
            raise CliError(f"{out}: is an input of this command; choose another --out")
        folder = ri if ri.is_dir() else _read_as_folder(ri)
        if folder is not None and rp.is_relative_to(folder):
            raise CliError(
                f"{out}: is inside the input folder {folder}; outputs never go into an input folder, "
                "choose another --out"
            )
    if workspace is not None:
        root = Path(workspace.root).resolve()
        if rp == root or rp.is_relative_to(root):
            raise CliError(
                f"{out}: is inside the workspace {root}, whose files it manages itself; "
                "choose a path outside it"
            )
    from napari_mtssl.export import check_output  # no optional dependency is imported

    return check_output(p, force=force)


def _open_or_create(data: str, out: str | None, labelled: int | None):
    from napari_mtssl.workspace import Workspace

    data_p = Path(data)
    if (data_p / "workspace.json").is_file():
        if labelled is not None:
            raise CliError(f"{data}: --labelled applies to datasets, not to an existing workspace")
        return Workspace.open(data_p), data_p
    if data != "sample" and not data_p.exists():
        raise CliError(f"{data}: no such dataset folder or workspace")
    if out is None:
        raise CliError("--out WORKSPACE is required when DATA is a dataset folder")
    out_p = Path(out)
    if (out_p / "workspace.json").is_file():
        raise CliError(f"{out}: a workspace already exists there; choose a new --out folder")
    return api.create_workspace(out_p, source=data, labelled=labelled), out_p


def _config(args: argparse.Namespace):
    over: dict[str, Any] = {"seed": args.seed, "device": args.device}
    if args.tasks:
        over["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if getattr(args, "threads", 0):
        over["num_threads"] = args.threads
    if getattr(args, "budget", None):
        over["budget"] = args.budget
    if getattr(args, "all_joint", False):
        over["all_joint"] = True
    if getattr(args, "stage2", None):
        over["stage2__method"] = args.stage2
    if getattr(args, "executor", None):
        over.update(executor=args.executor, units_at_once=args.units_at_once)
        if args.address:
            if args.executor != "ray":
                raise CliError("--address is the Ray cluster's: use it with --executor ray")
            over["ray_address"] = args.address
    if getattr(args, "units_at_once", 0) < 0:
        raise CliError("--units-at-once must be 0 (as many as fit) or more")
    cfg = api.make_config(args.profile, **over)
    if args.steps_scale != 1.0:
        if args.steps_scale <= 0:
            raise CliError("--steps-scale must be positive")
        cfg = cfg.scaled(args.steps_scale)
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    if args.labelled is not None and args.labelled < 1:
        raise CliError("--labelled must be at least 1 (training needs labelled scans)")
    cfg = _config(args)
    ws, out = _open_or_create(args.data, args.out, args.labelled)
    progress = Progress(quiet=args.quiet)
    report = api.run(api.train(ws, cfg, what=args.what), progress)
    progress._newline()
    if report.get("stopped"):
        raise CliError("training stopped before the end")
    write_report(ws, report, out)
    print(report_table(report))
    print(f"\nreport: {out / 'report.md'}  ({report.get('seconds', 0):.0f} s)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Go on with a stopped, interrupted (killed) or failed run: its own plan and config, what
    is left of its budget; finished models are kept, the unit in progress continues from its
    last checkpoint."""
    from napari_mtssl.training.config import ExperimentConfig
    from napari_mtssl.workspace.runs import RESUMABLE

    ws = api.open_workspace(args.workspace)
    runs = ws.runs()
    if args.run:
        run = ws.run(args.run)
    else:
        open_runs = [r for r in runs if r.status in RESUMABLE]
        if not open_runs:
            raise CliError(f"{args.workspace}: no stopped or interrupted run to resume")
        run = open_runs[-1]
    cfg = ExperimentConfig.from_dict(run.config)
    print(f"resuming run {run.id} ({run.kind}, {run.status})", file=sys.stderr)
    progress = Progress(quiet=args.quiet)
    report = api.run(api.train(ws, cfg, what=run.kind, resume=run.id), progress)
    progress._newline()
    if report.get("stopped"):
        raise CliError("training stopped before the end")
    write_report(ws, report, Path(args.workspace))
    print(report_table(report))
    print(f"\nreport: {Path(args.workspace) / 'report.md'}  ({report.get('seconds', 0):.0f} s)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from napari_mtssl.io import read_scans, write_labels

    ws = api.open_workspace(args.workspace)
    if args.scan in ws.scan_ids():
        source = ws.record(args.scan).path
        out = output_path(args.out, force=args.force, inputs=(source,), workspace=ws)
        scan = ws.load_scan(args.scan)
    else:
        if not Path(args.scan).exists():
            raise CliError(f"{args.scan}: no such file, folder or scan id in the workspace")
        out = output_path(args.out, force=args.force, inputs=(args.scan,), workspace=ws)
        scans = read_scans(args.scan)
        if len(scans) != 1:
            raise CliError(f"{args.scan}: holds {len(scans)} images; give one")
        scan = scans[0]
    as_seg = args.format == "dicom-seg" or (args.format is None and out.suffix.lower() == ".dcm")
    nifti = args.format == "nifti" or (
        args.format is None and out.name.lower().endswith((".nii", ".nii.gz"))
    )
    if scan.meta.get("geometry_unknown") and (as_seg or nifti) and not args.accept_unknown_geometry:
        raise CliError(
            f"{args.scan}: its images record no position or orientation, so where a mask lies "
            "in the patient is unknown and a NIfTI or DICOM-SEG mask would carry a made-up "
            "geometry; write a .tif (no geometry), or add --accept-unknown-geometry to write it "
            "on a grid at the origin"
        )
    if as_seg:
        from napari_mtssl.export.dicomseg import can_write_dicom_seg

        why = can_write_dicom_seg(scan.meta)
        if why:
            raise CliError(f"{args.out}: {why}")
    pred = api.predict(ws, scan, model=args.model, device=args.device)
    if as_seg:
        from napari_mtssl.export.dicomseg import write_dicom_seg

        write_dicom_seg(
            pred.labels,
            scan.meta,
            out,
            label_names=dict(ws.label_names),
            algorithm={"model": args.model, "run": pred.run, "round": ws.run(pred.run).round},
        )
    else:
        write_labels(pred.labels, out, like=scan)
    counts = {int(c): int((pred.labels == c).sum()) for c in range(1, int(ws.num_classes))}
    print(f"wrote {args.out} ({args.model}; voxels per class {counts})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    ws = api.open_workspace(args.workspace)
    out = output_path(args.out, force=args.force, workspace=ws)
    path = api.export_model(ws, args.model, args.format, out, force=args.force)
    print(f"wrote {path} ({args.model}, {args.format})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    ws = api.open_workspace(args.workspace)
    run_id = api.import_model(ws, args.file, args.as_)
    print(f"imported {args.file} as {args.as_} (run {run_id})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score every trained model on a dataset's labelled cases (its val split when it has one)."""
    import numpy as np

    from napari_mtssl.io import open_dataset
    from napari_mtssl.training.metrics import summarise, volume_scores

    ws = api.open_workspace(args.workspace)
    out = None
    if args.out:
        out = output_path(args.out, force=args.force, inputs=(args.data,), workspace=ws)
    models = [m.strip() for m in args.models.split(",")] if args.models else api.list_models(ws)
    if not models:
        raise CliError(f"{args.workspace}: no trained models; run `napari-mtssl train` first")
    ds = open_dataset(args.data)
    names = ds.splits.get("val") or [c.name for c in ds.labelled]
    nc = int(ws.num_classes)
    per: dict[str, list] = {m: [] for m in models}
    for name in names:
        scan, truth = ds.load(name)
        if truth is None:
            continue
        for m in models:
            pred = api.predict(ws, scan, model=m, device=args.device)
            per[m].append(volume_scores(pred.labels, truth.astype(np.int64), nc, scan.spacing))
    scores = {
        "data": str(args.data),
        "cases": names,
        "models": {m: summarise(v, ws.label_names, nc) for m, v in per.items()},
    }
    print(report_table({"models": scores["models"]}))
    if out is not None:
        from napari_mtssl._atomic import atomic_write_json

        atomic_write_json(out, scores)
        print(f"\nscores: {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.gui:
        from napari_mtssl.widgets import launch_demo

        launch_demo()
        return 0
    out = Path(args.out)
    if (out / "workspace.json").is_file():
        from napari_mtssl.workspace import Workspace

        ws = Workspace.open(out)
    else:
        ws = api.create_workspace(out, source="sample")
    cfg = api.make_config("quick", budget=args.budget, device=args.device, seed=args.seed)
    progress = Progress()
    report = api.run(api.train(ws, cfg, what="all"), progress)
    progress._newline()
    write_report(ws, report, out)
    print(report_table(report))
    print(f"\nworkspace: {out}   report: {out / 'report.md'}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """The correction loop with a simulated annotator, one strategy after another."""
    from napari_mtssl.simulate import CHOICES, Settings, simulate

    strategies = [s.strip() for s in args.strategy.split(",") if s.strip()]
    if strategies == ["all"]:
        strategies = list(CHOICES)
    from dataclasses import fields

    given = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    settings = Settings(
        **{**given, "data": str(args.data), "out": str(args.out)}, strategies=strategies
    )
    from napari_mtssl.io import is_dataset_folder

    if not is_dataset_folder(Path(args.data)):
        raise CliError(f"{args.data}: not a dataset folder (imagesTr/, labelsTr/, dataset.json)")
    progress = Progress(quiet=args.quiet)

    def show(event: dict[str, Any]) -> None:
        e = events.parse(event)
        if isinstance(e, events.SimulateRound):
            progress._newline()
            s2 = "" if e.stage2_dice is None else f" (full stage 2: {e.stage2_dice:.3f})"
            print(
                f"{e.strategy:<13} round {e.round}: {e.corrected:3d} corrected slices, "
                f"student Dice {e.mean_dice:.3f}{s2}",
                flush=True,
            )
        elif isinstance(e, events.SimulateNote):
            progress._newline()
            print(e.message, flush=True)
        elif isinstance(e, events.Done) and e.out:
            progress._newline()
        elif not isinstance(e, events.Done):
            progress(event)

    results = api.run(simulate(settings), show)
    if results is None or not results.get("finished"):
        print(f"stopped; run the same command again to go on ({args.out})")
        return 0
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0


# -- parser ----------------------------------------------------------------------------------


def _version() -> str:
    from napari_mtssl import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="napari-mtssl",
        epilog="Errors are one line; --debug shows the full traceback instead.",
        description="Segmentation from few labels by two-stage multi-task self-supervised "
        "learning (headless engine of the napari plugin).",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument("--version", action="version", version=f"napari-mtssl {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train baseline, teachers and student; write a report")
    t.add_argument("data", help="a dataset folder (Decathlon layout), 'sample', or a workspace")
    t.add_argument("--out", help="workspace folder to create (required for a dataset)")
    t.add_argument("--labelled", type=int, help="keep the labels of N training patients")
    t.add_argument("--tasks", help="comma-separated auxiliary tasks (default: the profile's)")
    t.add_argument(
        "--budget",
        help="wall-clock time for the whole run: 10m, 1h, 1h30m, 8h or minutes "
        "(default: the profile's, 1h)",
    )
    t.add_argument(
        "--profile",
        default="standard",
        choices=["tiny", "quick", "standard", "overnight"],
        help="budget presets: quick 10 min, standard 1 h (default), overnight 8 h; "
        "tiny: a few fixed steps (tests)",
    )
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply every step count and the budget"
    )
    t.add_argument(
        "--what",
        default="all",
        choices=["baseline", "stage1", "stage2", "all", "retrain-quick", "retrain-stage2"],
    )
    t.add_argument(
        "--all-joint",
        action="store_true",
        help="also train the 'all tasks jointly' comparison (one more model in the budget)",
    )
    t.add_argument(
        "--stage2",
        choices=["semi", "paper"],
        help="how the student learns: semi (default: warm start, ground truth, the ensemble's "
        "confident labels on unlabelled slices, copy-paste) or paper (ensemble distillation)",
    )
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the plan's)")
    t.add_argument(
        "--executor",
        default="local",
        choices=["inline", "local", "ray"],
        help="where the models train: local (default: side by side in processes on this "
        "machine), ray (tasks on a Ray cluster, see --address), inline (one process)",
    )
    t.add_argument(
        "--units-at-once",
        type=int,
        default=0,
        help="models trained at once (0: as many as fit; a budgeted run: where that gives "
        "more steps)",
    )
    t.add_argument(
        "--address",
        help="the Ray cluster for --executor ray: auto, ray://host:port (default: a local "
        "Ray instance); the workspace must be on storage every node sees",
    )
    t.add_argument("--quiet", action="store_true", help="no progress on stderr")
    t.set_defaults(func=cmd_train)

    rs = sub.add_parser(
        "resume", help="go on with a stopped or interrupted run (its plan, its remaining budget)"
    )
    rs.add_argument("workspace")
    rs.add_argument("run", nargs="?", help="the run id (default: the latest unfinished run)")
    rs.add_argument("--quiet", action="store_true", help="no progress on stderr")
    rs.set_defaults(func=cmd_resume)

    pr = sub.add_parser("predict", help="segment a scan with a trained model")
    pr.add_argument("workspace")
    pr.add_argument("scan", help="an image file/folder, or a scan id of the workspace")
    pr.add_argument("--model", default="student")
    pr.add_argument("--out", required=True, help="label file to write (e.g. mask.nii.gz)")
    pr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    pr.add_argument("--force", action="store_true", help="replace --out if it exists")
    pr.add_argument(
        "--format",
        choices=["nifti", "tiff", "dicom-seg"],
        help="default: from --out (.nii/.nii.gz, .tif, .dcm = DICOM-SEG for a DICOM scan)",
    )
    pr.add_argument(
        "--accept-unknown-geometry",
        action="store_true",
        help="write a NIfTI or DICOM-SEG mask even for a DICOM series whose images record no "
        "position or orientation (it is placed on a grid at the origin)",
    )
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="a trained model as ONNX or a bioimage.io package")
    ex.add_argument("workspace")
    ex.add_argument("--model", default="student")
    ex.add_argument("--format", default="onnx", choices=["onnx", "bioimageio"])
    ex.add_argument("--out", required=True, help="model.onnx, or package.zip for bioimageio")
    ex.add_argument("--force", action="store_true", help="replace --out if it exists")
    ex.set_defaults(func=cmd_export)

    im = sub.add_parser("import", help="a model exported by napari-mtssl, into a workspace")
    im.add_argument("workspace")
    im.add_argument("file", help="an .onnx file or a bioimage.io package (.zip)")
    im.add_argument(
        "--as", dest="as_", default="student", help="student (default), baseline or teacher:<task>"
    )
    im.set_defaults(func=cmd_import)

    ev = sub.add_parser("evaluate", help="score the trained models on a labelled dataset")
    ev.add_argument("workspace")
    ev.add_argument("data", help="dataset folder (its val split, else every labelled case)")
    ev.add_argument("--models", help="comma-separated models (default: all)")
    ev.add_argument("--out", help="write the scores as JSON")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    ev.add_argument("--force", action="store_true", help="replace --out if it exists")
    ev.set_defaults(func=cmd_evaluate)

    sm = sub.add_parser(
        "simulate",
        help="the correction loop with a simulated annotator: which slices to correct",
        description="Start from N labelled patients; each round a strategy picks slices, a "
        "simulated annotator corrects them with the dataset's masks, the student is retrained "
        "and scored on the validation patients. Rerun the same command to go on after a stop.",
    )
    sm.add_argument("data", help="a labelled dataset folder (Decathlon layout, with a val split)")
    sm.add_argument("--out", required=True, help="folder for the workspaces and the report")
    sm.add_argument("--labelled", type=int, default=3, help="labelled patients at the start")
    sm.add_argument(
        "--strategy",
        default="all",
        help="comma-separated: disagreement, entropy, random, fg_random, oracle, none "
        "(the control: retraining without corrections); all (default)",
    )
    sm.add_argument("--per-round", type=int, default=10, help="slices corrected each round")
    sm.add_argument(
        "--rounds", type=int, default=5, help="0: train the initial models and the reference only"
    )
    sm.add_argument("--budget", default="20m", help="time for the initial models (default 20m)")
    sm.add_argument(
        "--retrain-budget", default="3m", help="time of each quick retrain (the dock's: 3m)"
    )
    sm.add_argument(
        "--stage2",
        default="last",
        choices=["last", "every", "none"],
        help="a full stage 2 after the last round (default), every round, or never",
    )
    sm.add_argument("--stage2-budget", default="7m", help="time of each full stage 2")
    sm.add_argument("--tasks", default="sdm,inpaint", help="the teachers' tasks")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument(
        "--reference", type=int, default=7, help="baseline with N labelled patients (0: none)"
    )
    sm.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the plan's)")
    sm.add_argument(
        "--initial",
        help="start from this workspace (trained with `train --what all` on the same dataset, "
        "labelled patients and tasks): it is copied, not changed",
    )
    sm.add_argument("--profile", default="quick", choices=["tiny", "quick"], help=argparse.SUPPRESS)
    sm.add_argument("--quiet", action="store_true", help="no progress on stderr")
    sm.set_defaults(func=cmd_simulate)

    d = sub.add_parser("demo", help="the whole pipeline on the built-in sample, in a budget")
    d.add_argument("--gui", action="store_true", help="open napari with the sample and the docks")
    d.add_argument("--out", default="mtssl-demo", help="workspace folder (default ./mtssl-demo)")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--budget", default="5m", help="time for the whole run (default 5m)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    import errno

    from napari_mtssl.io.scan import LabelError, ScanReadError
    from napari_mtssl.training.errors import UnitsFailed

    try:
        from napari_mtssl.workspace import WorkspaceError
    except ImportError:  # pragma: no cover - workspace always ships with the package
        WorkspaceError = OSError  # type: ignore[misc,assignment]  # noqa: N806

    args = build_parser().parse_args(argv)
    if args.debug:
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"napari-mtssl {args.command}: {exc}", file=sys.stderr)

    except (ScanReadError, LabelError, WorkspaceError) as exc:
        print(f"napari-mtssl {args.command}: {exc}", file=sys.stderr)
    except UnitsFailed as exc:  # some models of a run failed; the others are kept
        print(f"napari-mtssl {args.command}: {exc.one_line()}", file=sys.stderr)
    except (ValueError, KeyError) as exc:
        msg = str(exc).strip("'\"") or type(exc).__name__
        print(f"napari-mtssl {args.command}: {msg.splitlines()[0]}", file=sys.stderr)
    except OSError as exc:  # a full disk, a read-only folder, a vanished file
        where = f"{exc.filename}: " if exc.filename else ""
        why = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC and args.command in ("train", "resume", "demo"):
            why += (
                "; what was saved before is kept: free some space, then napari-mtssl resume "
                "WORKSPACE goes on from there"
            )
        print(f"napari-mtssl {args.command}: {where}{why}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"napari-mtssl {args.command}: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
