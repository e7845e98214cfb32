"""``napari-mtssl init | train | resume | predict | codes | export | import | evaluate |
simulate | demo``: the engine from a shell, over :mod:`api`.

No command ends in a traceback. Errors users can cause (bad arguments, unreadable files, no
labels) end with one line on stderr and exit status 2; an unexpected error ends with one line
that names a log file holding the traceback, and exit status 1 (``--debug`` shows the traceback
instead). :data:`EXIT_STATUS` lists every status; ``docs/cli.md`` is :func:`reference_markdown`.
"""

from __future__ import annotations

import argparse
import errno
import os
import platform
import re
import shlex
import sys
import tempfile
import textwrap
import time
import traceback
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from napari_mtssl import __version__, api, events, ids, task_needs
from napari_mtssl import simulate as sim
from napari_mtssl._atomic import atomic_write_json, atomic_write_text
from napari_mtssl.colours import palette_rgb
from napari_mtssl.export import check_output
from napari_mtssl.ids import ModelId
from napari_mtssl.training.config import DEFAULT_TASKS, ExperimentConfig
from napari_mtssl.training.errors import UnitsFailed, disk_full_message
from napari_mtssl.training.loop.metrics import dice_per_class, summarise, volume_scores

__all__ = [
    "EXIT_STATUS",
    "build_parser",
    "main",
    "reference_markdown",
    "write_report",
]


class CliError(Exception):
    """A problem to print as one line (exit status 2)."""


# The exit statuses of every command: the parser's epilog and docs/cli.md list them from here.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INPUT = 2  # argparse's own status for bad arguments, so one status means "fix the input"
EXIT_STOPPED = 130  # what shells report for Ctrl-C (128 + SIGINT)
EXIT_STATUS: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (
        EXIT_ERROR,
        "unexpected error: one line on stderr names the log file that holds the traceback "
        "(--debug shows the traceback instead)",
    ),
    (
        EXIT_INPUT,
        "the command could not do what was asked, for a reason it states in one line: bad "
        "arguments, a missing or unreadable file, an output that exists (without --force), no "
        "labels, a full disk, models that failed to train, scans of a folder that could not be "
        "segmented",
    ),
    (
        EXIT_STOPPED,
        "stopped before the end (Ctrl-C or a stop request); what was done is kept: "
        "`napari-mtssl resume WORKSPACE` goes on with a training run, the same `simulate` "
        "command with a simulation",
    ),
)


# -- progress --------------------------------------------------------------------------------


_LOGGED = (events.ModelDone, events.Selected, events.Halving, events.Start, events.Resumed)


class Progress:
    """Training's progress on stderr. On a terminal: a tqdm bar for the model in training (its
    steps, rate and time left, with its loss, validation Dice and the run's minutes beside
    it), the log's lines printed above it. Elsewhere (a log file, a cluster's output): a plain
    line every few seconds, no control characters."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.quiet = quiet
        self._last = 0.0
        self._open = False  # a transient status line is on the terminal
        self._bar: Any = None  # the tqdm bar of the model in training (a terminal only)

    def __call__(self, e: events.Event) -> None:
        if self.quiet:
            return
        if isinstance(e, events.Progress):
            if self.tty and self._tqdm(e):
                return
            self._progress(e)
            return
        if isinstance(e, events.Status):  # transient: redrawn on a terminal, left out of logs
            if self.tty and self._bar is None:
                self.stream.write("\r" + e.message[:110].ljust(110))
                self._open = True
                self.stream.flush()
            return
        line = self._line(e)
        if not line:
            return
        if self._bar is not None:
            self._bar.write(line, file=self.stream)  # above the bar, which is drawn again
        else:
            self._newline()
            self.stream.write(line + "\n")
        self.stream.flush()

    def _tqdm(self, e: events.Progress) -> bool:
        """Draw ``e`` on the model's tqdm bar (a new bar for a new model); False without tqdm."""
        try:  # imported here, when needed: bars are drawn on a terminal only
            from tqdm import tqdm
        except ImportError:
            return False
        bar = self._bar
        if bar is None or bar.desc != e.model or bar.total != e.total:
            self._newline()
            bar = self._bar = tqdm(
                total=e.total, initial=max(0, e.step - 1), desc=e.model, unit="step",
                file=self.stream, dynamic_ncols=True, mininterval=0.2,
            )  # fmt: skip
        bar.set_postfix_str(", ".join(events.progress_parts(e, eta=False)), refresh=False)
        bar.update(max(0, e.step - bar.n))
        if e.step >= e.total:
            self._newline()
        return True

    def _progress(self, e: events.Progress) -> None:
        now = time.monotonic()
        if now - self._last < (0.1 if self.tty else 5) and e.step != e.total:
            return
        self._last = now
        frac = e.step / max(1, e.total)
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        line = "  ".join([f"{e.model:<16} [{bar}] {e.step}/{e.total}", *events.progress_parts(e)])
        if self.tty:
            self.stream.write("\r" + line[:110].ljust(110))
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    @staticmethod
    def _line(e: events.Event) -> str:
        """The log's line for ``e`` (:func:`events.describe`); the plan in full."""
        if isinstance(e, events.PlanMade):
            return (
                "plan:\n" + "\n".join(f"  {x}" for x in e.describe) + "\n" + plan_steps_text(e.plan)
            )
        if isinstance(e, events.Note):
            return "note: " + events.describe(e)
        if isinstance(e, _LOGGED):
            return events.describe(e)
        return ""

    def _newline(self) -> None:
        """End what is drawn on the current line (a model's bar, a status) before other
        output."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._open:
            self.stream.write("\n")
            self._open = False


# -- report ----------------------------------------------------------------------------------


def plan_steps_text(plan: dict[str, Any]) -> str:
    """The per-model steps and time estimates of a plan, as indented lines."""
    # imported here, when needed: it loads torch
    from napari_mtssl.training.planning.plan import Plan

    if not plan:
        return ""
    p = Plan.from_dict(plan)
    rows = p.step_table()
    if not rows:
        return ""
    w = max(len(r[0]) for r in rows)
    lines = [f"  {m:<{w}}  {n:>18} steps  ~{t}" for m, n, t in rows]
    return "\n".join(lines)


def _rung_line(task: str, h: dict) -> str:
    scores = ", ".join(f"{m} {_fmt(v)}" for m, v in h["dice"].items())
    bar = "" if h.get("baseline") is None else f" (baseline {_fmt(h['baseline'])})"
    went = ", ".join(h.get("continued") or []) or "none"
    return f"{task}: {scores}{bar}, went on: {went}"


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
    for name in sorted(models, key=ids.model_key):
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
    atomic_write_json(out / "report.json", report)
    pngs = []
    try:
        pngs = _overlays(ws, report, out / "report", overlays)
    except Exception as exc:  # noqa: BLE001 - pictures are a bonus; the numbers are the report
        print(f"note: could not draw overlays ({exc})", file=sys.stderr)
    md = _report_head(report)
    md += _selection_md(report.get("selected", {}))
    md += _postprocess_md(report.get("models", {}))
    sav = report.get("savings") or {}
    if any(sav.values()):
        md += [
            f"Saved by successive halving: about {sav.get('halving_s', 0):.0f} s; by reusing "
            f"cached pre-training: about {sav.get('pretext_cache_s', 0):.0f} s.",
            "",
        ]
    md += _plan_md(report.get("plan"))
    notes = report.get("data", {}).get("notes", [])
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if pngs:
        md += ["## Validation slices", ""]
        md += [f"![{p.stem}](report/{p.name})" for p in pngs]
        md.append("")
    atomic_write_text(out / "report.md", "\n".join(md))


def _sentence(text: str) -> str:
    return f"{text[0].upper()}{text[1:]}."


def _report_head(report: dict[str, Any]) -> list[str]:
    """The report's title, what ran, the scores and the one-line findings."""
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
        md += [f"**{_sentence(comp['line'])}**", ""]
    skipped = (report.get("plan") or {}).get("teachers_skipped") or {}
    if skipped.get("why"):
        md += [_sentence(skipped["why"]), ""]
    return md


def _selection_md(sel: dict[str, Any]) -> list[str]:
    """The teachers' selection table and the halving's rung, where stage 1 selected."""
    if not sel:
        return []
    md = ["## Teacher selection (validation mean foreground Dice)", ""]
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
            "The rung: each task's modes trained the first "
            f"{next(iter(halv.values()))['at_steps']} steps, then only those that lead went "
            "on (a mode trailing the other, or the baseline at the same step, stopped); "
            + "; ".join(_rung_line(t, h) for t, h in halv.items()),
            "",
        ]
    return md


def _postprocess_md(models: dict[str, Any]) -> list[str]:
    """What keeping the largest component did to each model that keeps it."""
    post = {k: v for k, v in models.items() if v.get("postprocess") not in (None, "none")}
    if not post:
        return []
    return [
        "Post-processing: keeping only the largest connected foreground component raised the "
        "validation Dice of "
        + ", ".join(
            f"{k} ({_fmt(v.get('raw_mean_dice'))} → {_fmt(v.get('mean_dice'))})"
            for k, v in sorted(post.items(), key=lambda kv: ids.model_key(kv[0]))
        )
        + "; their predictions apply it (nnU-Net's rule, decided on the validation scans).",
        "",
    ]


def _plan_md(plan: dict[str, Any] | None) -> list[str]:
    """The plan's choices with their reasons, and the steps and estimate of each model."""
    if not plan:
        return []
    # imported here, when needed: it loads torch
    from napari_mtssl.training.planning.plan import Plan

    p = Plan.from_dict(plan)
    md = ["## The plan", "", *p.describe(), ""]
    md += ["| model | steps | estimated |", "|---|---|---|"]
    md += [f"| {m} | {n} | {t} |" for m, n, t in p.step_table()]
    md.append("")
    return md


def _crop(*masks: Any) -> tuple[slice, slice]:
    """The part of a slice worth looking at: the foreground of all masks with a margin of
    35 % of its size each side (at least 24 px), or the whole slice when there is none."""
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
    present = [c for c in range(1, num_classes) if (truth == c).any() or (pred == c).any()]
    scores = dice_per_class(pred, truth, num_classes)
    return float(np.mean([scores[c - 1] for c in present])) if present else 1.0


def _overlay_models(report: dict[str, Any]) -> dict[str, str]:
    """The models the overlays show, in the report's order, each with its panel title: a teacher
    is the model of its selected mode, so the two share one panel ("teacher:sdm = sdm:pretrain")."""
    models = sorted(report.get("models", {}), key=ids.model_key)
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
    # imported here, when needed: matplotlib (about 0.3 s) draws the report's pictures only
    import matplotlib

    matplotlib.use("Agg")  # no window: pyplot is imported after choosing the backend
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    models = _overlay_models(report)
    val = [s for s in ws.scan_ids("val") if ws.labelled_slices(s)]
    if not val:
        val = [s for s in ws.scan_ids("train") if ws.labelled_slices(s)]
    if not models or not val:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    nc = max(2, int(ws.num_classes))
    # row c: the colour of class c, as in the napari layers and DICOM-SEG
    class_cmap = ListedColormap(palette_rgb(nc))
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
            ax.imshow(
                m, cmap=class_cmap, vmin=-0.5, vmax=nc - 0.5, alpha=0.45, interpolation="nearest"
            )
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
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io import formats  # the readers load only when a command needs them

    if formats.DICOM.owns(path) or path.suffix == "":
        return parent  # a DICOM slice: its folder is the series
    return None


def _check_placement(
    p: Path, label: str, inputs: tuple[str | Path, ...] = (), workspace: Any = None
) -> None:
    """``p`` is never an input, never inside an input folder, never inside the workspace."""
    rp = p.resolve()
    for i in inputs:
        ri = Path(i).expanduser().resolve()
        if rp == ri:
            raise CliError(f"{label}: is an input of this command; choose another --out")
        folder = ri if ri.is_dir() else _read_as_folder(ri)
        if folder is not None and rp.is_relative_to(folder):
            raise CliError(
                f"{label}: is inside the input folder {folder}; outputs never go into an input "
                "folder, choose another --out"
            )
    if workspace is not None:
        root = Path(workspace.root).resolve()
        if rp == root or rp.is_relative_to(root):
            raise CliError(
                f"{label}: is inside the workspace {root}, whose files it manages itself; "
                "choose a path outside it"
            )


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
    _check_placement(p, out, inputs, workspace)

    return check_output(p, force=force)


def _open_workspace(folder: str):
    """The workspace in ``folder``, or a one-line error that says how to make one."""
    p = Path(folder).expanduser()
    if not (p / "workspace.json").is_file():
        what = "no such folder" if not p.exists() else "not a napari-mtssl workspace"
        raise CliError(
            f"{folder}: {what}; create an empty workspace with `napari-mtssl init {folder}`, "
            f"or one from a dataset with `napari-mtssl train DATA --out {folder}`"
        )
    return api.open_workspace(p)


def _open_or_create(data: str, out: str | None, labelled: int | None):
    # imported here, when needed: it loads the scan readers
    data_p = Path(data)
    if (data_p / "workspace.json").is_file():
        if labelled is not None:
            raise CliError(f"{data}: --labelled applies to datasets, not to an existing workspace")
        return api.Workspace.open(data_p), data_p
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


def _stopped(command: str, workspace: Path | str) -> int:
    print(
        f"napari-mtssl {command}: stopped before the end; what was trained is kept, "
        f"`napari-mtssl resume {workspace}` goes on",
        file=sys.stderr,
    )
    return EXIT_STOPPED


def cmd_init(args: argparse.Namespace) -> int:
    """An empty workspace: scans come in through napari (the Study dock) or the Python API,
    trained models through ``napari-mtssl import``."""
    # imported here, when needed: it loads the scan readers
    names = {0: "background"}
    if args.classes is None:
        names[1] = "foreground"
    else:
        given = [c.strip() for c in args.classes.split(",")]
        if not all(given):
            raise CliError("--classes: a class name is empty; write them like 'liver,tumour'")
        if len(set(given)) != len(given):
            raise CliError(f"--classes: a class is named twice ({args.classes})")
        names.update(enumerate(given, start=1))
    ws = api.Workspace.create(Path(args.folder).expanduser(), label_names=names)
    classes = ", ".join(f"{k} {v}" for k, v in names.items() if k)
    print(f"created the workspace {ws.root} (classes: {classes})")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    if args.labelled is not None and args.labelled < 1:
        raise CliError("--labelled must be at least 1 (training needs labelled scans)")
    cfg = _config(args)
    ws, out = _open_or_create(args.data, args.out, args.labelled)
    progress = Progress(quiet=args.quiet)
    report = api.run(api.train(ws, cfg, what=args.what), progress)
    progress._newline()
    if report.get("stopped"):
        return _stopped("train", out)
    write_report(ws, report, out)
    print(report_table(report))
    print(f"\nreport: {out / 'report.md'}  ({report.get('seconds', 0):.0f} s)")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    """Go on with a stopped, interrupted (killed) or failed run: its own plan and config, what
    is left of its budget; finished models are kept, the unit in progress continues from its
    last checkpoint. ``--device`` and ``--threads`` replace the run's own."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.workspace.runs import RESUMABLE

    ws = _open_workspace(args.workspace)
    run = ws.run(args.run) if args.run else ws.resumable_run()
    if run is None:
        raise CliError(
            f"{args.workspace}: no stopped or interrupted run to resume (an unfinished run "
            "older than the last finished one is resumed only by its id, the name of its "
            f"folder under runs/: napari-mtssl resume {args.workspace} RUN)"
        )
    saved = run.config
    over: dict[str, Any] = {}
    if args.device is not None:
        over["device"] = args.device
    if args.threads is not None:
        over["num_threads"] = args.threads
    cfg = ExperimentConfig.from_dict({**saved, **over})
    if run.status in RESUMABLE:  # else training says why the run cannot go on
        if any(saved.get(k) != v for k, v in over.items()):
            # The run reads its settings from its config.json when it goes on, and so do the
            # processes its models train in: the new device and threads are written there,
            # which also records what the rest of the run trained with.

            atomic_write_json(run.path / "config.json", {**saved, **over})
        threads = f", {cfg.num_threads} threads" if cfg.num_threads else ""
        print(
            f"resuming run {run.id} ({run.kind}, {run.status}) on {cfg.device}{threads}",
            file=sys.stderr,
        )
    progress = Progress(quiet=args.quiet)
    report = api.run(api.train(ws, cfg, what=run.kind, resume=run.id), progress)
    progress._newline()
    if report.get("stopped"):
        return _stopped("resume", args.workspace)
    write_report(ws, report, Path(args.workspace))
    print(report_table(report))
    print(f"\nreport: {Path(args.workspace) / 'report.md'}  ({report.get('seconds', 0):.0f} s)")
    return EXIT_OK


# predict's --format choices, each with the format of the registry (io/formats.py) its masks
# are files of: a DICOM-SEG is a DICOM file
_MASK_FORMATS = {"nifti": "nifti", "tiff": "tiff", "dicom-seg": "dicom"}


def _mask_format(out: Path) -> str | None:
    """The --format of a mask written to ``out`` by its suffix, as the registry knows the
    suffixes (a DICOM one: DICOM-SEG); None for another (``write_labels`` says which it
    writes)."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io import formats

    return next((c for c, f in _MASK_FORMATS.items() if formats.named(f).owns(out)), None)


def _segment(
    args: argparse.Namespace,
    ws: Any,
    scan: Any,
    out: Path,
    *,
    as_seg: bool,
    nifti: bool,
    name: str,
    codes: dict | None = None,
) -> Any:
    """Predict ``scan`` and write its mask to ``out`` on the scan's own grid (NIfTI and TIFF
    through ``write_labels``, DICOM-SEG referencing the series, its segments coded by
    ``codes``); ``name`` is the input as the messages call it."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io import write_labels

    if scan.meta.get("geometry_unknown") and (as_seg or nifti) and not args.accept_unknown_geometry:
        raise CliError(
            f"{name}: its images record no position or orientation, so where a mask lies "
            "in the patient is unknown and a NIfTI or DICOM-SEG mask would carry a made-up "
            "geometry; write a .tif (no geometry), or add --accept-unknown-geometry to write it "
            "on a grid at the origin"
        )
    if as_seg:
        # imported here, when needed: it loads the scan readers
        from napari_mtssl.export.dicomseg import can_write_dicom_seg

        why = can_write_dicom_seg(scan.meta)
        if why:
            raise CliError(f"{out}: {why}")
    pred = api.predict(ws, scan, model=args.model, device=args.device)
    if as_seg:
        # imported here, when needed: it loads the scan readers
        from napari_mtssl.export.dicomseg import write_dicom_seg

        write_dicom_seg(
            pred.labels,
            scan.meta,
            out,
            label_names=dict(ws.label_names),
            algorithm={"model": args.model, "run": pred.run, "round": ws.run(pred.run).round},
            codes=codes,
        )
    else:
        write_labels(pred.labels, out, like=scan)
    return pred


def _seg_codes(args: argparse.Namespace, ws: Any, as_seg: bool) -> dict | None:
    """The segment codes of the DICOM-SEG masks this prediction writes: the workspace's
    ``segment_codes.json``, and over it those of ``--codes``; read (and checked) once, before
    any model runs. ``--codes`` for masks that are not DICOM-SEG is refused."""
    if not as_seg:
        if args.codes:
            raise CliError(
                "--codes: codes go into DICOM-SEG masks only; write one with --out MASK.dcm, or "
                "--format dicom-seg for a folder of DICOM series"
            )
        return None
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.export.dicomseg import codes_for

    return codes_for(dict(ws.label_names), workspace=ws.root, codes_file=args.codes)


def _wants_folder(out: str) -> bool:
    """``--out`` names a folder of masks: an existing folder, a path ending in a separator, or
    a name without a suffix (a mask file always has one)."""
    p = Path(out).expanduser()
    return p.is_dir() or out.endswith(("/", os.sep)) or p.suffix == ""


def cmd_predict(args: argparse.Namespace) -> int:
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io import read_scans

    ws = _open_workspace(args.workspace)
    if args.input in ws.scan_ids():
        source = ws.record(args.input).path
        out = output_path(args.out, force=args.force, inputs=(source,), workspace=ws)
        scan = ws.load_scan(args.input)
    else:
        if not Path(args.input).exists():
            raise CliError(f"{args.input}: no such file, folder or scan id in the workspace")
        if _wants_folder(args.out):
            return _predict_folder(args, ws, Path(args.input).expanduser())
        out = output_path(args.out, force=args.force, inputs=(args.input,), workspace=ws)
        scans = read_scans(args.input)
        if len(scans) != 1:
            raise CliError(
                f"{args.input}: holds {len(scans)} scans; give a folder as --out to write one "
                "mask per scan, or give one scan"
            )
        scan = scans[0]
    fmt = args.format or _mask_format(out)
    as_seg, nifti = fmt == "dicom-seg", fmt == "nifti"
    codes = _seg_codes(args, ws, as_seg)
    pred = _segment(args, ws, scan, out, as_seg=as_seg, nifti=nifti, name=args.input, codes=codes)
    counts = {int(c): int((pred.labels == c).sum()) for c in range(1, int(ws.num_classes))}
    print(f"wrote {args.out} ({args.model}; voxels per class {counts})")
    return EXIT_OK


# -- predict over a folder -------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """What one read of a folder's content takes: a file, the numbered 2D images of a folder
    (one stack) or the DICOM files of a folder (one scan per series). ``name``: its masks'
    path under ``--out``, without suffix."""

    path: Path
    kind: str  # "file" | "images" | "dicom"
    name: Path
    files: tuple[Path, ...] = ()
    headers: tuple = ()


def _natural(p: Path) -> list:
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io._common import natural_key

    return natural_key(p.name)


def _has_dicom_preamble(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _tiff_pages(p: Path) -> int:
    import tifffile  # imported here, when needed: TIFF inputs only

    try:
        with tifffile.TiffFile(p) as tif:
            return len(tif.pages)
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it is read
        return 1


def _scan_sources(root: Path) -> tuple[list[_Source], list[tuple[Path, str]], list[Path]]:
    """Every scan under ``root`` (a folder, searched recursively, or one file), as the project's
    readers take them: each NIfTI file and multi-page TIFF; the 2D images of a folder as one
    stack (one image: a one-slice scan); the DICOM files of a folder, one scan per series.

    Returns (sources, unreadable (path, why), ignored files that are not images). A dataset's
    label folders are left out: they hold masks, not scans."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io import formats
    from napari_mtssl.io._common import stem_of

    if root.is_file():
        return [_Source(root, "file", Path(stem_of(root)), (root,))], [], []
    sources: list[_Source] = []
    bad: list[tuple[Path, str]] = []
    ignored: list[Path] = []
    for here, dirs, names in os.walk(root):
        d = Path(here)
        dirs[:] = sorted(
            (
                x
                for x in dirs
                if not x.startswith(".")
                and not (x in ("labelsTr", "labelsTs") and (d / "dataset.json").is_file())
            ),
            key=lambda x: _natural(Path(x)),
        )
        files = sorted((d / n for n in names if not n.startswith(".")), key=_natural)
        rest = _folder_sources(root, d, files, sources)
        for f in _dicom_sources(root, d, rest, sources):
            if formats.DICOM.owns(f) and not _has_dicom_preamble(f):
                bad.append((f, "not a readable DICOM image file"))
            elif f.name != "dataset.json":
                ignored.append(f)  # notes, DICOMDIR, DICOM-SEG or reports: not scans
    return sources, bad, ignored


def _folder_sources(root: Path, d: Path, files: list[Path], sources: list[_Source]) -> list[Path]:
    """Add the NIfTI files, TIFF stacks and 2D images of folder ``d`` to ``sources`` (its
    2D images as one stack, or one file); returns the other files."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io import formats
    from napari_mtssl.io._common import stem_of

    rel = d.relative_to(root)
    niftis = [f for f in files if formats.NIFTI.owns(f)]
    images = [f for f in files if formats.TIFF.owns(f) or formats.PICTURE.owns(f)]
    stacks = [f for f in images if formats.TIFF.owns(f) and _tiff_pages(f) > 1]
    planes = [f for f in images if f not in stacks]
    for f in [*niftis, *stacks]:
        sources.append(_Source(f, "file", rel / stem_of(f), (f,)))
    if len(planes) == 1:
        sources.append(_Source(planes[0], "file", rel / stem_of(planes[0]), (planes[0],)))
    elif planes:
        sources.append(_Source(d, "images", _folder_name(root, d), tuple(planes)))
    return [f for f in files if f not in niftis and f not in images]


def _dicom_sources(root: Path, d: Path, files: list[Path], sources: list[_Source]) -> list[Path]:
    """Add the DICOM images among ``files`` (of folder ``d``) to ``sources`` as one source;
    returns the files that are not DICOM images."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io.dicom import dicom_headers

    headers = dicom_headers(files)
    if not headers:
        return files
    found = {p for p, _ in headers}
    sources.append(_Source(d, "dicom", _folder_name(root, d), tuple(found), tuple(headers)))
    return [f for f in files if f not in found]


def _folder_name(root: Path, d: Path) -> Path:
    """The mask name of a scan read from a whole folder: the folder's path under the input
    (the input folder's own name when it is the input)."""
    return Path(root.resolve().name) if d == root else d.relative_to(root)


def _read_source(src: _Source) -> list[tuple[Any, Path]]:
    """The scans of one source, each with its mask name (a DICOM folder of several series:
    one name per series, after its description)."""
    # imported here, when needed: it loads the scan readers, tifffile
    from napari_mtssl.io import read_scans
    from napari_mtssl.io.dicom import read_dicom
    from napari_mtssl.io.stack import read_image_folder

    if src.kind == "images":
        return [(read_image_folder(src.path, list(src.files)), src.name)]
    if src.kind == "dicom":
        scans = read_dicom(src.path, headers=list(src.headers))
        if len(scans) == 1:
            return [(scans[0], src.name)]
        return [(s, src.name / _slug(s.name)) for s in scans]
    return [(s, src.name) for s in read_scans(src.path)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "scan"


class _Steps:
    """Progress over the inputs of a folder: a tqdm bar on a terminal when tqdm is installed
    (it comes with napari), else one plain line per mask written; messages never break the
    bar."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.done = total, quiet, 0
        self.bar = None
        if not quiet and sys.stderr.isatty():
            try:  # imported here, when needed: bars are drawn on a terminal only
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="scan", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def wrote(self, line: str) -> None:
        if self.bar is None and not self.quiet:
            self.say(f"[{self.done + 1}/{self.total}] {line}")

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _predict_folder(args: argparse.Namespace, ws: Any, src: Path) -> int:
    """One mask per scan found under ``src``, in ``--out`` (created if need be) with the
    input's sub-folders: ``case.nii.gz`` gives ``OUT/case.nii.gz``, a DICOM series folder
    ``series/`` gives ``OUT/series.nii.gz``, a TIFF or PNG stack a ``.tif``. A scan that cannot
    be read or segmented is named in one line and skipped; the others go on."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io import LabelError, ScanReadError

    out = _check_folder_prediction(args, ws, src)
    codes = _seg_codes(args, ws, args.format == "dicom-seg")
    sources, bad, ignored = _scan_sources(src)
    if not sources and not bad:
        raise CliError(
            f"{args.input}: no scans found (NIfTI files, DICOM series, TIFF stacks, PNG/TIFF "
            "images)"
        )
    inputs = {p.resolve() for s in sources for p in (*s.files, s.path)} | {
        p.resolve() for p, _ in bad
    }
    out.mkdir(parents=True, exist_ok=True)
    steps = _Steps(len(sources), args.quiet)
    failed: list[str] = []
    for path, why in bad:
        failed.append(str(path))
        steps.say(f"napari-mtssl predict: {path}: {why}; skipped")
    written: list[Path] = []
    used: set[str] = set()
    try:
        for source in sources:
            try:
                for scan, name in _read_source(source):
                    target = _mask_target(args, out, name, scan, used, inputs, source)
                    fmt = args.format or _mask_format(target)
                    _segment(args, ws, scan, target, as_seg=fmt == "dicom-seg",
                             nifti=fmt == "nifti", name=str(source.path), codes=codes)  # fmt: skip
                    written.append(target)
                    steps.wrote(f"{source.path} -> {target}")
            except (CliError, ScanReadError, LabelError, ValueError) as exc:
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if str(source.path) not in msg:
                    msg = f"{source.path}: {msg}"
                failed.append(str(source.path))
                steps.say(f"napari-mtssl predict: {msg}; skipped")
            steps.advance()
    finally:
        steps.close()
    if ignored:
        print(
            f"napari-mtssl predict: left out {len(ignored)} file(s) that are not scans "
            f"(e.g. {ignored[0]})",
            file=sys.stderr,
        )
    line = f"wrote {len(written)} mask(s) in {out} ({args.model})"
    if failed:
        line += f"; {len(failed)} input(s) could not be segmented (named above)"
    print(line)
    return EXIT_INPUT if failed else EXIT_OK


def _check_folder_prediction(args: argparse.Namespace, ws: Any, src: Path) -> Path:
    """The output folder of a folder's prediction, after the checks that fail it as a whole
    (a dataset folder given, ``--out`` a file or among the inputs, no such model, no such
    device), each a CliError."""
    # imported here, when needed: it loads the scan readers, torch
    from napari_mtssl.io import is_dataset_folder
    from napari_mtssl.training.prediction.inference import resolve_device

    if src.is_dir() and is_dataset_folder(src):
        raise CliError(
            f"{args.input}: is a dataset folder; give the folder of the scans to segment "
            f"(e.g. {Path(args.input) / 'imagesTs'})"
        )
    out = Path(args.out).expanduser()
    _check_placement(out, args.out, (src,), ws)
    if out.exists() and not out.is_dir():
        raise CliError(f"{args.out}: is a file; give a folder for the masks of several scans")
    avail = api.list_models(ws)
    if args.model not in avail:
        raise CliError(
            f"{args.workspace}: no trained model {args.model!r}; available: "
            f"{', '.join(avail) if avail else 'none (train first)'}"
        )
    resolve_device(args.device)  # a device that is not here: said once, not once per scan
    return out


def _mask_target(
    args: argparse.Namespace,
    out: Path,
    name: Path,
    scan: Any,
    used: set[str],
    inputs: set[Path],
    source: _Source,
) -> Path:
    """Where the mask of ``scan`` goes (its folder created), or CliError where that is an
    input or a mask that exists without ``--force``."""
    target = _target(out, name, scan, args.format, used)
    mask_of = f"the mask of {source.path}"
    if target.resolve() in inputs:
        raise CliError(f"{target} ({mask_of}): is an input; never replaced")
    if target.exists() and not args.force:
        raise CliError(f"{target} ({mask_of}): exists; add --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _target(out: Path, name: Path, scan: Any, fmt: str | None, used: set[str]) -> Path:
    """Where a scan's mask goes: ``out/name`` with the format's suffix (by default a TIFF for
    TIFF/PNG scans, which carry no patient geometry, else NIfTI), made unique in this run."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io import formats

    if fmt is None:
        image = scan.meta.get("format") in ("tiff", "image", "image-folder")
        fmt = "tiff" if image else "nifti"
    suffix = formats.mask_suffix(formats.named(_MASK_FORMATS[fmt]))
    base = out / name
    target = base.with_name(base.name + suffix)
    n = 1
    while str(target).lower() in used:
        n += 1
        target = base.with_name(f"{base.name}-{n}{suffix}")
    used.add(str(target).lower())
    return target


def cmd_codes(args: argparse.Namespace) -> int:
    """Show the codes each class's DICOM-SEG segment gets; with FILE, first check FILE and
    store it as the workspace's ``segment_codes.json``."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.export.dicomseg import CODES_FILE, describe_codes, read_codes_file

    ws = _open_workspace(args.workspace)
    names = dict(ws.label_names)
    stored = Path(ws.root) / CODES_FILE
    if args.file is not None:
        read_codes_file(args.file, names)  # checked before anything is written
        if stored.exists() and not args.force:
            raise CliError(f"{stored}: exists; add --force to replace it")
        atomic_write_text(stored, Path(args.file).expanduser().read_text(encoding="utf-8"))
        print(f"stored {args.file} as {stored}")
    codes = read_codes_file(stored, names) if stored.exists() else {}
    for line in describe_codes(names, codes, given=f"the workspace's {CODES_FILE}"):
        print(line)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    ws = _open_workspace(args.workspace)
    out = output_path(args.out, force=args.force, workspace=ws)
    path = api.export_model(ws, args.model, args.format, out, force=args.force)
    print(f"wrote {path} ({args.model}, {args.format})")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    ws = _open_workspace(args.workspace)
    if not Path(args.file).is_file():
        raise CliError(f"{args.file}: no such file")
    run_id = api.import_model(ws, args.file, args.as_model)
    print(f"imported {args.file} as {args.as_model} (run {run_id})")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score every trained model on a dataset's labelled cases (its val split when it has one)."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io import open_dataset

    ws = _open_workspace(args.workspace)
    out = None
    if args.out:
        out = output_path(args.out, force=args.force, inputs=(args.data,), workspace=ws)
    models = list(args.model) if args.model else api.list_models(ws)
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
        atomic_write_json(out, scores)
        print(f"\nscores: {out}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    if args.gui:
        try:
            import napari  # noqa: F401 - only checked here: the headless install has no napari
        except ImportError:
            raise CliError(
                "demo --gui needs napari, which this installation does not have: "
                'pip install "napari-mtssl[napari]", or run the demo without --gui'
            ) from None
        # imported here, when needed: it loads napari and Qt, for `demo --gui` only
        from napari_mtssl.widgets import launch_demo

        launch_demo()
        return EXIT_OK
    out = Path(args.out)
    # The settings first: a typo in --budget is reported before a workspace is made.
    cfg = api.make_config("quick", budget=args.budget, device=args.device, seed=args.seed)
    if (out / "workspace.json").is_file():
        # imported here, when needed: it loads the scan readers
        ws = api.Workspace.open(out)
    else:
        ws = api.create_workspace(out, source="sample")
    progress = Progress()
    report = api.run(api.train(ws, cfg, what=ids.What.ALL), progress)
    progress._newline()
    if report.get("stopped"):
        return _stopped("demo", out)
    write_report(ws, report, out)
    print(report_table(report))
    print(f"\nworkspace: {out}   report: {out / 'report.md'}")
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    """The correction loop with a simulated annotator, one strategy after another."""

    strategies = [s.strip() for s in args.strategy.split(",") if s.strip()]
    if strategies == ["all"]:
        strategies = list(sim.CHOICES)

    given = {f.name: getattr(args, f.name) for f in fields(sim.Settings) if hasattr(args, f.name)}
    settings = sim.Settings(
        **{**given, "data": str(args.data), "out": str(args.out)}, strategies=strategies
    )
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io import is_dataset_folder

    if not is_dataset_folder(Path(args.data)):
        raise CliError(f"{args.data}: not a dataset folder (imagesTr/, labelsTr/, dataset.json)")
    progress = Progress(quiet=args.quiet)

    def show(e: events.Event) -> None:
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
            progress(e)

    results = api.run(sim.simulate(settings), show)
    if results is None or not results.get("finished"):
        print(f"stopped; run the same command again to go on ({args.out})")
        return EXIT_STOPPED
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------


def _version() -> str:
    return __version__


DEVICES = ["auto", "cpu", "cuda", "mps"]
_DEVICE_HELP = "auto: a CUDA GPU if there is one, else Apple MPS, else the CPU"
_MODEL_FORMS = (
    "student, baseline, all_joint, teacher:<task> (the task's selected model) or "
    "<task>:joint, <task>:pretrain, where <task> is an auxiliary task the workspace trained "
    "(teacher:sdm, sdm:joint, ...)"
)
_WHAT_HELP = (
    "what to train: baseline (the conventional model alone), stage1 (the teachers: each "
    "auxiliary task, its mode selected), stage2 (a student from the latest teachers), all "
    "(baseline, stage 1 and stage 2), retrain-quick (fine-tune the latest student on the "
    "current labels, corrections included), retrain-stage2 (a new student from the latest "
    "teachers and the current labels)"
)


def _help_text(action: argparse.Action) -> str:
    """An argument's help with its default appended, unless the help already states it; the
    same text in ``--help`` and in docs/cli.md."""
    text = action.help or ""
    d = action.default
    shown = (
        action.option_strings
        and action.nargs != 0
        and not (d is None or d is False or d == "" or d is argparse.SUPPRESS)
        and "default" not in text
    )
    return f"{text} (default: {d})" if shown else text


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions by paragraph and the rows of an indented block (the exit statuses)
    each with a hanging indent; states defaults (see :func:`_help_text`)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return _help_text(action).replace("%", "%%")

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.split("\n\n"):
            lines = []
            for row in para.splitlines() if "\n  " in para else [" ".join(para.split())]:
                hang = " " * (len(row) - len(row.lstrip()) + 5) if row.startswith("  ") else ""
                lines += textwrap.wrap(
                    row, width, initial_indent=indent, subsequent_indent=indent + hang
                )
            out.append("\n".join(lines))
        return "\n\n".join(out)


def _model_name(text: str) -> str:
    """``--model``: a model id (``student``, ``teacher:sdm``, ...), checked before any work."""
    try:
        return str(ModelId.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give one model or more, separated by commas")
    return [_model_name(n) for n in names]


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, 0 (the plan's) or more")
    return n


def _command(sub: Any, name: str, help: str, description: str | None = None):
    """A sub-command whose ``--help`` shows ``description`` (else ``help``)."""
    p = sub.add_parser(
        name, help=help, description=description or _sentence(help), formatter_class=_Formatter
    )
    p.short_help = help  # the one line docs/cli.md lists it with
    return p


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _epilog() -> str:
    rows = "\n".join(f"  {code:<4} {what}" for code, what in EXIT_STATUS)
    return (
        "Errors are one line; an unexpected error also writes its traceback to a log file that "
        "the line names; --debug shows the traceback instead.\n\nexit status:\n" + rows
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="napari-mtssl",
        epilog=_epilog(),
        description="Segmentation from few labels by two-stage multi-task self-supervised "
        "learning (headless engine of the napari plugin).",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--debug", action="store_true", help="show the traceback of an error instead of one line"
    )
    p.add_argument("--version", action="version", version=f"napari-mtssl {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_init(sub)
    _add_train(sub)
    _add_resume(sub)
    _add_predict(sub)
    _add_codes(sub)
    _add_export(sub)
    _add_import(sub)
    _add_evaluate(sub)
    _add_simulate(sub)
    _add_demo(sub)
    return p


def _add_init(sub: Any) -> None:
    it = _command(
        sub,
        "init",
        "create an empty workspace (for napari-mtssl import, or scans added in napari)",
        "Create an empty workspace in FOLDER (a new or empty folder). Scans come in through "
        "napari (the Study dock) or the Python API; trained models through `napari-mtssl "
        "import`, which needs the model's classes: give them with --classes.",
    )
    it.add_argument("folder", metavar="FOLDER", help="a new or empty folder")
    it.add_argument(
        "--classes",
        metavar="NAMES",
        help="comma-separated names of the foreground classes, 1, 2, ... in order "
        "(class 0 is the background; default: one class, foreground)",
    )
    it.set_defaults(func=cmd_init)


def _add_train(sub: Any) -> None:
    t = _command(sub, "train", "train baseline, teachers and student; write a report")
    t.add_argument(
        "data",
        metavar="DATA",
        help="a dataset folder (Decathlon layout), 'sample', or a workspace",
    )
    t.add_argument(
        "--out", metavar="WORKSPACE", help="workspace folder to create (required for a dataset)"
    )
    t.add_argument(
        "--labelled", type=int, metavar="N", help="keep the labels of N training patients"
    )
    t.add_argument(
        "--tasks",
        metavar="TASKS",
        help=f"comma-separated auxiliary tasks, from: {', '.join(task_needs.NAMES)} (default: "
        f"{','.join(DEFAULT_TASKS)}; the tiny profile's: sdm,rubik)",
    )
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
    t.add_argument("--device", default="auto", choices=DEVICES, help=_DEVICE_HELP)
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply every step count and the budget"
    )
    t.add_argument(
        "--what",
        default="all",
        choices=[w.value for w in ids.What],
        help=_WHAT_HELP,
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
    t.add_argument(
        "--threads", type=_threads, default=0, metavar="N", help="torch CPU threads (0: the plan's)"
    )
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
        metavar="N",
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


def _add_resume(sub: Any) -> None:
    rs = _command(
        sub, "resume", "go on with a stopped or interrupted run (its plan, its remaining budget)"
    )
    rs.add_argument("workspace", metavar="WORKSPACE", help="a workspace folder")
    rs.add_argument(
        "run",
        nargs="?",
        metavar="RUN",
        help="the run id (default: the newest unfinished run, unless a run finished after it)",
    )
    rs.add_argument(
        "--device",
        choices=DEVICES,
        help=f"as for train; {_DEVICE_HELP} (default: the run's own)",
    )
    rs.add_argument(
        "--threads",
        type=_threads,
        metavar="N",
        help="torch CPU threads, 0: the plan's (default: the run's own)",
    )
    rs.add_argument("--quiet", action="store_true", help="no progress on stderr")
    rs.set_defaults(func=cmd_resume)


def _add_predict(sub: Any) -> None:
    pr = _command(
        sub,
        "predict",
        "segment a scan, or every scan of a folder, with a trained model",
        "Segment INPUT with a trained model of WORKSPACE. INPUT is one scan (a NIfTI file, a "
        "DICOM series folder, a TIFF stack or a folder of numbered images) or a scan id of the "
        "workspace, and --out a mask file; or INPUT is a folder of scans (searched "
        "recursively: NIfTI files, DICOM series, TIFF stacks, PNG/TIFF images) and --out a "
        "folder, which gets one mask per scan, aligned with its scan, under the same relative "
        "path and name. A scan that cannot be read or segmented is named in one line and "
        "skipped; the exit status is then 2. Inputs are never replaced.",
    )
    pr.add_argument("workspace", metavar="WORKSPACE", help="a workspace folder")
    pr.add_argument(
        "input",
        metavar="INPUT",
        help="a scan file or folder, a folder of scans, or a scan id of the workspace",
    )
    pr.add_argument(
        "--model",
        default="student",
        type=_model_name,
        metavar="MODEL",
        help=f"the model to segment with: {_MODEL_FORMS}",
    )
    pr.add_argument(
        "--out",
        required=True,
        metavar="OUT",
        help="the mask file (.nii.gz, .tif, or .dcm: DICOM-SEG for a DICOM scan); for a "
        "folder of scans, a folder (an existing one, or a path ending in / or without suffix)",
    )
    pr.add_argument("--device", default="auto", choices=DEVICES, help=_DEVICE_HELP)
    pr.add_argument("--force", action="store_true", help="replace masks that exist")
    pr.add_argument(
        "--format",
        choices=list(_MASK_FORMATS),
        help="default: from --out (.nii/.nii.gz, .tif, .dcm = DICOM-SEG for a DICOM scan); "
        "into a folder: tiff for TIFF/PNG scans, else nifti",
    )
    pr.add_argument(
        "--accept-unknown-geometry",
        action="store_true",
        help="write a NIfTI or DICOM-SEG mask even for a DICOM series whose images record no "
        "position or orientation (it is placed on a grid at the origin)",
    )
    pr.add_argument(
        "--codes",
        metavar="FILE",
        help="a JSON file of segment codes per class for DICOM-SEG masks (see `napari-mtssl "
        "codes`); the classes it codes take its codes instead of the workspace's "
        "segment_codes.json, for this call",
    )
    pr.add_argument("--quiet", action="store_true", help="no progress on stderr")
    pr.set_defaults(func=cmd_predict)


def _add_codes(sub: Any) -> None:
    co = _command(
        sub,
        "codes",
        "show or set the codes of the classes in DICOM-SEG masks",
        "Show the code (coding scheme, value, meaning) that each class's segment gets in the "
        "DICOM-SEG masks of WORKSPACE, and where it comes from: the workspace's "
        "segment_codes.json, the default table of common anatomy (by class name), or the "
        'generic "Tissue". With FILE, first check FILE and store it as the workspace\'s '
        "segment_codes.json, read by predict, napari's File > Save and Save all labels. FILE "
        "is a JSON object of class number or name to code: "
        '{"liver": {"value": "10200004", "scheme": "SCT", "meaning": "Liver"}}, or to '
        '{"type": CODE, "category": CODE} to set the category too (default: Anatomical '
        "Structure).",
    )
    co.add_argument("workspace", metavar="WORKSPACE", help="a workspace folder")
    co.add_argument(
        "file", metavar="FILE", nargs="?", help="a JSON file of codes to store in the workspace"
    )
    co.add_argument(
        "--force", action="store_true", help="replace the workspace's segment_codes.json"
    )
    co.set_defaults(func=cmd_codes)


def _add_export(sub: Any) -> None:
    ex = _command(sub, "export", "a trained model as ONNX or a bioimage.io package")
    ex.add_argument("workspace", metavar="WORKSPACE", help="a workspace folder")
    ex.add_argument(
        "--model",
        default="student",
        type=_model_name,
        metavar="MODEL",
        help=f"the model to export: {_MODEL_FORMS}",
    )
    ex.add_argument("--format", default="onnx", choices=["onnx", "bioimageio"], help="file type")
    ex.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="model.onnx, or package.zip for bioimageio",
    )
    ex.add_argument("--force", action="store_true", help="replace --out if it exists")
    ex.set_defaults(func=cmd_export)


def _add_import(sub: Any) -> None:
    im = _command(
        sub,
        "import",
        "a model exported by napari-mtssl, into a workspace",
        "Add a model exported by napari-mtssl (ONNX or bioimage.io) to WORKSPACE as a new "
        "run; the workspace's classes must be the model's (napari-mtssl init --classes).",
    )
    im.add_argument("workspace", metavar="WORKSPACE", help="a workspace folder")
    im.add_argument("file", metavar="FILE", help="an .onnx file or a bioimage.io package (.zip)")
    im.add_argument(
        "--as",
        dest="as_model",
        default="student",
        type=_model_name,
        metavar="MODEL",
        help="the name it gets: student (default), baseline or teacher:<task>",
    )
    im.set_defaults(func=cmd_import)


def _add_evaluate(sub: Any) -> None:
    ev = _command(sub, "evaluate", "score the trained models on a labelled dataset")
    ev.add_argument("workspace", metavar="WORKSPACE", help="a workspace folder")
    ev.add_argument(
        "data", metavar="DATA", help="dataset folder (its val split, else every labelled case)"
    )
    ev.add_argument(
        "--model",
        type=_model_names,
        metavar="MODELS",
        help=f"comma-separated models (default: every trained one): {_MODEL_FORMS}",
    )
    # The spelling of earlier versions, kept for scripts.
    ev.add_argument(
        "--models",
        dest="model",
        type=_model_names,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    ev.add_argument("--out", metavar="FILE", help="write the scores as JSON")
    ev.add_argument("--device", default="auto", choices=DEVICES, help=_DEVICE_HELP)
    ev.add_argument("--force", action="store_true", help="replace --out if it exists")
    ev.set_defaults(func=cmd_evaluate)


def _add_simulate(sub: Any) -> None:
    sm = _command(
        sub,
        "simulate",
        "the correction loop with a simulated annotator: which slices to correct",
        "Start from N labelled patients; each round a strategy picks slices, a "
        "simulated annotator corrects them with the dataset's masks, the student is retrained "
        "and scored on the validation patients. Rerun the same command to go on after a stop.",
    )
    sm.add_argument(
        "data",
        metavar="DATA",
        help="a labelled dataset folder (Decathlon layout, with a val split)",
    )
    sm.add_argument(
        "--out", required=True, metavar="FOLDER", help="folder for the workspaces and the report"
    )
    sm.add_argument(
        "--labelled", type=int, default=3, metavar="N", help="labelled patients at the start"
    )
    sm.add_argument(
        "--strategy",
        default="all",
        help="comma-separated: disagreement, entropy, random, fg_random, oracle, none "
        "(the control: retraining without corrections); all (default)",
    )
    sm.add_argument(
        "--per-round", type=int, default=10, metavar="N", help="slices corrected each round"
    )
    sm.add_argument(
        "--rounds",
        type=int,
        default=5,
        metavar="N",
        help="rounds of corrections; 0: train the initial models and the reference only",
    )
    sm.add_argument("--budget", default="20m", help="time for the initial models (default 20m)")
    sm.add_argument(
        "--retrain-budget", default="3m", help="time of each quick retrain, as the dock's"
    )
    sm.add_argument(
        "--stage2",
        default="last",
        choices=["last", "every", "none"],
        help="a full stage 2 after the last round (default), every round, or never",
    )
    sm.add_argument("--stage2-budget", default="7m", help="time of each full stage 2")
    sm.add_argument(
        "--tasks",
        default="sdm,inpaint",
        help=f"the teachers' tasks, comma-separated, from: {', '.join(task_needs.NAMES)} "
        "(default: sdm,inpaint)",
    )
    sm.add_argument("--seed", type=int, default=0, help="random seed")
    sm.add_argument(
        "--reference",
        type=int,
        default=7,
        metavar="N",
        help="baseline with N labelled patients (0: none)",
    )
    sm.add_argument(
        "--threads", type=_threads, default=0, metavar="N", help="torch CPU threads (0: the plan's)"
    )
    sm.add_argument(
        "--initial",
        metavar="WORKSPACE",
        help="start from this workspace (trained with `train --what all` on the same dataset, "
        "labelled patients and tasks): it is copied, not changed",
    )
    sm.add_argument("--profile", default="quick", choices=["tiny", "quick"], help=argparse.SUPPRESS)
    sm.add_argument("--quiet", action="store_true", help="no progress on stderr")
    sm.set_defaults(func=cmd_simulate)


def _add_demo(sub: Any) -> None:
    d = _command(sub, "demo", "the whole pipeline on the built-in sample, in a budget")
    d.add_argument("--gui", action="store_true", help="open napari with the sample and the docks")
    d.add_argument(
        "--out",
        default="mtssl-demo",
        metavar="WORKSPACE",
        help="workspace folder (default ./mtssl-demo)",
    )
    d.add_argument("--device", default="auto", choices=DEVICES, help=_DEVICE_HELP)
    d.add_argument("--seed", type=int, default=0, help="random seed")
    d.add_argument("--budget", default="5m", help="time for the whole run (default 5m)")
    d.set_defaults(func=cmd_demo)


# -- the reference in docs/cli.md ------------------------------------------------------------


def _subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _shown(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments ``--help`` lists, without -h and the sub-command list."""
    return [
        a
        for a in p._actions
        if a.help is not argparse.SUPPRESS
        and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
    ]


def _token(a: argparse.Action) -> str:
    """An argument as a synopsis writes it: ``--out OUT``, ``--device {auto,cpu}``, ``RUN``."""
    if a.metavar is not None:
        value = str(a.metavar)
    elif a.choices is not None:
        value = "{" + ",".join(map(str, a.choices)) + "}"
    else:
        value = a.dest.upper()
    if not a.option_strings:
        return value
    flag = a.option_strings[-1] if len(a.option_strings) > 1 else a.option_strings[0]
    return flag if a.nargs == 0 else f"{flag} {value}"


def _synopsis(prog: str, p: argparse.ArgumentParser) -> str:
    """The usage line, written out here (argparse's own wraps by the terminal's width)."""
    parts = []
    for a in _shown(p):
        tok = _token(a)
        optional = (a.option_strings and not a.required) or a.nargs == "?"
        parts.append(f"[{tok}]" if optional else tok)
    if _subcommands(p):
        parts.append("COMMAND ...")
    glue = "\u00a0"  # keeps "--out OUT" on one line when wrapped
    text = " ".join([prog, *(x.replace(" ", glue) for x in parts)])
    lines = textwrap.wrap(
        text,
        width=88,
        subsequent_indent=" " * (len(prog) + 1),
        break_long_words=False,
        break_on_hyphens=False,
    )
    return "\n".join(line.replace(glue, " ") for line in lines)


def _arguments_md(p: argparse.ArgumentParser) -> list[str]:
    out = []
    for a in _shown(p):
        names = ", ".join(a.option_strings) if a.option_strings else _token(a)
        if a.option_strings and a.nargs != 0:
            names = f"{names} {_token(a).split(' ', 1)[1]}"
        out.append(f"- `{names}`: {_md(_help_text(a))}".rstrip(": "))
    return out


def _md(text: str) -> str:
    """Plain text safe in a markdown paragraph or table cell (``<task>`` is not a tag)."""
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def reference_markdown() -> str:
    """docs/cli.md: every command's synopsis and arguments, and the exit statuses, from the
    parser itself (a test checks the file against it)."""
    p = build_parser()
    md = [
        "# Command-line reference",
        "",
        "<!-- Generated from the parser by napari_mtssl.cli.reference_markdown(); do not edit.",
        '     Regenerate: python -c "from napari_mtssl.cli import reference_markdown as r; '
        "open('docs/cli.md', 'w').write(r())\" -->",
        "",
        _md(p.description or ""),
        "",
        "```",
        _synopsis("napari-mtssl", p),
        "```",
        "",
        "Every command takes `-h`/`--help`. Options before the command:",
        "",
        *_arguments_md(p),
        "",
        "## Exit status",
        "",
        "Errors are one line on stderr, never a traceback. An unexpected error also writes the "
        "traceback to a log file that the line names: `logs/` in the workspace when the command "
        "has one, else the user log folder (`~/.local/state/napari-mtssl/log` on Linux).",
        "",
        "| status | meaning |",
        "|---|---|",
        *(f"| {code} | {_md(what)} |" for code, what in EXIT_STATUS),
        "",
        "## Commands",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    subs = _subcommands(p)
    md += [f"| [`{n}`](#napari-mtssl-{n}) | {_md(s.short_help)} |" for n, s in subs.items()]
    for name, s in subs.items():
        md += [
            "",
            f"### napari-mtssl {name}",
            "",
            _md(s.description or ""),
            "",
            "```",
            _synopsis(f"napari-mtssl {name}", s),
            "```",
            "",
            *_arguments_md(s),
        ]
    return "\n".join(md) + "\n"


# -- errors ----------------------------------------------------------------------------------


def _user_log_dir() -> Path:
    try:  # platformdirs comes with napari, not with the headless install
        import platformdirs
    except ImportError:  # the headless install (napari brings platformdirs)
        return Path(tempfile.gettempdir()) / "napari-mtssl-logs"
    return Path(platformdirs.user_log_dir("napari-mtssl", appauthor=False))


def _log_folders(args: argparse.Namespace) -> list[Path]:
    """Where a crash log may go, best first: the workspace's ``logs/`` (next to what failed),
    the user log folder, the temporary folder."""
    folders = []
    for attr in ("workspace", "data", "out", "folder"):
        value = getattr(args, attr, None)
        if isinstance(value, str) and (Path(value).expanduser() / "workspace.json").is_file():
            folders.append(Path(value).expanduser() / "logs")
            break
    return [*folders, _user_log_dir(), Path(tempfile.gettempdir())]


def _write_crash_log(args: argparse.Namespace, argv: list[str], exc: BaseException) -> Path | None:

    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"napari-mtssl-{args.command}-{stamp}-{os.getpid()}.log"
    text = "".join(
        [
            f"napari-mtssl {_version()}: {args.command} failed at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}\n",
            f"command: napari-mtssl {shlex.join(argv)}\n",
            f"python {platform.python_version()} on {platform.platform()}\n\n",
            *traceback.format_exception(exc),
        ]
    )
    for folder in _log_folders(args):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def _known(args: argparse.Namespace, exc: BaseException) -> str | None:
    """The one line for an error users can cause or fix (exit status 2), else None."""
    # imported here, when needed: it loads the scan readers
    from napari_mtssl.io.scan import LabelError, ScanReadError
    from napari_mtssl.workspace import WorkspaceError

    if isinstance(exc, (CliError, ScanReadError, LabelError, WorkspaceError)):
        return str(exc)
    if isinstance(exc, UnitsFailed):  # some models of a run failed; the others are kept
        return exc.one_line()
    if isinstance(exc, (ValueError, KeyError)):
        msg = str(exc).strip("'\"") or type(exc).__name__
        # A KeyError that is a bare key comes from a bug, not from what the user gave.
        if isinstance(exc, KeyError) and " " not in msg:
            return None
        return msg.splitlines()[0]
    if isinstance(exc, OSError):  # a full disk, a read-only folder, a vanished file
        if exc.errno == errno.ENOSPC and args.command in ("train", "resume", "demo"):
            return _disk_full_in_run(args, exc)
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return None


def _disk_full_in_run(args: argparse.Namespace, exc: OSError) -> str:
    """A disk that filled while a run trained: the disk and its free space, the file that could
    not be written, the models the run keeps, and resume with the workspace's own path."""
    path = Path(exc.filename) if exc.filename else None
    given = [getattr(args, k, None) for k in ("workspace", "out", "data")]
    places = [*(path.parents if path else ()), *(Path(g) for g in given if g)]
    root = next((p for p in places if (p / "workspace.json").is_file()), None)
    what = f"{path.name} could not be written" if path else (exc.strerror or str(exc))
    if root is None:
        return (
            f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}; what was saved "
            "before is kept: free some space, then napari-mtssl resume with the workspace "
            "folder goes on from there"
        )
    kept = _finished_models(root, path)
    if kept is None:
        kept_s = "the models that finished are kept"
    elif kept:
        kept_s = f"the finished models are kept ({', '.join(kept)})"
    else:
        kept_s = "no model of the run was recorded finished yet (labels and earlier runs are kept)"
    return (
        f"{disk_full_message(root)}: {what}; {kept_s}; free some space, then "
        f"napari-mtssl resume {root} trains only what is missing"
    )


def _finished_models(root: Path, path: Path | None) -> list[str] | None:
    """The finished models of the run that ``path`` lies in (None where that is unknown)."""
    try:
        parts = path.resolve().relative_to(root.resolve()).parts if path else ()
        if len(parts) < 2 or parts[0] != "runs":
            return None
        return api.Workspace.open(root).run(parts[1]).finished_models()
    except Exception:  # noqa: BLE001 - the message stays one line whatever the run's state
        return None


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (:data:`EXIT_STATUS`). Bad arguments end in
    argparse's ``SystemExit(2)``, ``--help`` and ``--version`` in ``SystemExit(0)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.debug:
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"napari-mtssl {args.command}: interrupted", file=sys.stderr)
        return EXIT_STOPPED
    except Exception as exc:  # noqa: BLE001 - every error ends in one line, never a traceback
        line = _known(args, exc)
        if line is not None:
            print(f"napari-mtssl {args.command}: {line}", file=sys.stderr)
            return EXIT_INPUT
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        what = type(exc).__name__ + (f": {first}" if first else "")
        log = _write_crash_log(args, argv, exc)
        if log is not None:
            print(
                f"napari-mtssl {args.command}: unexpected error ({what}); the details are in "
                f"{log} (please include it in a bug report)",
                file=sys.stderr,
            )
        else:
            print(
                f"napari-mtssl {args.command}: unexpected error ({what}); no log file could "
                "be written, so the details follow",
                file=sys.stderr,
            )
            traceback.print_exception(exc, file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
