"""Slices to correct next, over a workspace: candidates, per-slice scores, proposals.

The candidates are the slices of training scans that nobody annotated or corrected. A strategy
(:mod:`napari_mtssl.training.ranking`) scores them from the trained models' predictions (the
student, the teachers) or, in a simulation, from the reference masks. Used by
:func:`napari_mtssl.api.propose_slices` (the correction dock) and by the simulated annotator
(:mod:`napari_mtssl.simulate`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from napari_mtssl.ids import teachers
from napari_mtssl.training.ranking import NEEDS, Candidate, check_strategy, rank

__all__ = ["candidates", "slice_scores", "propose", "RECOMMENDED", "RECOMMENDED_WHY"]

# The strategy the correction dock proposes by default, and why: what the simulated annotator
# measured on ACDC (docs/benchmarks.md, "Which slices to correct"; three seeds). It is the best
# mean by a margin within the noise: no ranking was measured to beat random slices. Without
# reference masks, "showing the anatomy" is where the student segments something.
RECOMMENDED = "fg_random"
RECOMMENDED_WHY = (
    "on ACDC, correcting random slices that show the heart improved the student at least as "
    "fast as correcting the slices the teachers disagree on or the student is unsure of (mean "
    "Dice over five rounds of 10 slices, three seeds: 0.760 against 0.747 and 0.734; plain "
    "random slices 0.756, within the noise: no ranking beat random slices; docs/benchmarks.md)"
)


def candidates(ws: Any, scans: Sequence[str] | None = None) -> dict[str, list[int]]:
    """Training scans' slices nobody annotated or corrected: scan id -> slice indices."""
    out: dict[str, list[int]] = {}
    for sid in scans if scans is not None else ws.scan_ids("train"):
        free = [z for z, s in enumerate(ws.slice_status(sid)) if s == "unlabelled"]
        if free:
            out[sid] = free
    return out


def _models(ws: Any, strategy: str, device: Any) -> dict[str, list[Any]]:
    from napari_mtssl import api

    need = NEEDS[strategy]
    have = api.list_models(ws)
    out: dict[str, list[Any]] = {}
    if "teachers" in need:
        names = teachers(have)
        if len(names) < 2:
            raise ValueError(
                f"{strategy} needs at least two trained teachers; this workspace has "
                f"{len(names)} (train stage 1 with two or more tasks)"
            )
        out["teachers"] = [api._load(ws, m, device) for m in names]
    if "student" in need:
        if "student" not in have:
            raise ValueError(f"{strategy} needs a trained student; run stage 2 first")
        out["student"] = [api._load(ws, "student", device)]
    return out


def slice_scores(
    ws: Any,
    strategy: str,
    cands: Mapping[str, Sequence[int]],
    *,
    truth: Mapping[str, np.ndarray] | None = None,
    device: str = "auto",
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-slice scores and per-slice foreground of every candidate scan for ``strategy``.

    ``truth``: scan id -> reference mask (simulations). Without it, ``fg_random`` takes the
    student's mask for the foreground and ``oracle`` cannot be used.
    """
    from napari_mtssl.training import ranking
    from napari_mtssl.training.inference import resolve_device

    check_strategy(strategy)
    if strategy == "oracle" and truth is None:
        raise ValueError("oracle needs the true masks: it is for simulations only")
    if strategy == "random":
        return {}, {}
    dev = resolve_device(device)
    fg_from_truth = strategy == "fg_random" and truth is not None
    models = {} if fg_from_truth else _models(ws, strategy, dev)
    scores: dict[str, np.ndarray] = {}
    foreground: dict[str, np.ndarray] = {}
    ids = list(cands)
    for i, sid in enumerate(ids):
        if progress is not None:
            progress(i, len(ids), sid)
        if fg_from_truth:
            foreground[sid] = ranking.foreground_slices(truth[sid])  # type: ignore[index]
            continue
        scan = ws.load_scan(sid)
        prepared: dict = {}
        if "teachers" in models:
            probs = [m.predict(scan, dev, prepared)[1] for m in models["teachers"]]
            scores[sid] = ranking.disagreement_scores(probs)
        if "student" in models:
            labels, probs = models["student"][0].predict(scan, dev, prepared)
            foreground[sid] = ranking.foreground_slices(labels)
            if strategy == "entropy":
                scores[sid] = ranking.entropy_scores(probs)
            elif strategy == "oracle":
                scores[sid] = ranking.error_scores(labels, truth[sid])  # type: ignore[index]
    if progress is not None:
        progress(len(ids), len(ids), "")
    return scores, foreground


def propose(
    ws: Any,
    k: int = 10,
    strategy: str | None = None,
    *,
    scans: Sequence[str] | None = None,
    truth: Mapping[str, np.ndarray] | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Candidate]:
    """The ``k`` slices most worth correcting by ``strategy`` (default :data:`RECOMMENDED`),
    best first, each with its reason. Fewer when fewer slices are unlabelled."""
    strategy = check_strategy(strategy or RECOMMENDED)
    cands = candidates(ws, scans)
    if not cands:
        return []
    scores, fg = slice_scores(ws, strategy, cands, truth=truth, device=device, progress=progress)
    return rank(strategy, cands, k, scores=scores, foreground=fg, rng=np.random.default_rng(seed))
