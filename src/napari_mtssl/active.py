"""Slices to correct next, over a workspace: candidates, per-slice scores, proposals.

The candidates are the slices of training scans that nobody annotated or corrected. A strategy
(:mod:`napari_mtssl.training.prediction.ranking`) scores them from the trained models' predictions (the
student, the teachers) or, in a simulation, from the reference masks. Used by
:func:`napari_mtssl.api.propose_slices` (the correction dock) and by the simulated annotator
(:mod:`napari_mtssl.simulate`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from napari_mtssl.events import Cancelled
from napari_mtssl.ids import teachers
from napari_mtssl.training.prediction import ranking
from napari_mtssl.training.prediction.ranking import NEEDS, Candidate, check_strategy, rank
from napari_mtssl.training.running import saved

__all__ = [
    "candidates",
    "slice_scores",
    "propose",
    "Cancelled",
    "RECOMMENDED",
    "RECOMMENDED_WHY",
]

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
    need = NEEDS[strategy]
    have = saved.list_models(ws)
    out: dict[str, list[Any]] = {}
    if "teachers" in need:
        names = teachers(have)
        if len(names) < 2:
            raise ValueError(
                f"{strategy} needs at least two trained teachers; this workspace has "
                f"{len(names)} (train stage 1 with two or more tasks)"
            )
        out["teachers"] = [saved.load(ws, m, device) for m in names]
    if "student" in need:  # the baseline stands in until a student is trained
        model = next((m for m in ("student", "baseline") if m in have), None)
        if model is None:
            raise ValueError(f"{strategy} needs a trained student (or baseline): train first")
        out["student"] = [saved.load(ws, model, device)]
    return out


def slice_scores(
    ws: Any,
    strategy: str,
    cands: Mapping[str, Sequence[int]],
    *,
    truth: Mapping[str, np.ndarray] | None = None,
    device: str = "auto",
    progress: Callable[[int, int, str], None] | None = None,
    enough: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], bool] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-slice scores and per-slice foreground of the candidate scans for ``strategy``, in
    the order of ``cands``: all of them, or up to the first scan after which
    ``enough(scores, foreground)`` holds.

    ``truth``: scan id -> reference mask (simulations). Without it, ``fg_random`` takes the
    student's mask for the foreground and ``oracle`` cannot be used. ``progress(i, n, scan)``
    before each scan; it may raise :class:`Cancelled` to stop.
    """
    # imported here, when needed: it loads torch
    from napari_mtssl.training.prediction.inference import resolve_device

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
            if enough is not None and enough(scores, foreground):
                break
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
        if enough is not None and enough(scores, foreground):
            break
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
    max_scans: int | None = None,
) -> list[Candidate]:
    """The ``k`` slices most worth correcting by ``strategy`` (default :data:`RECOMMENDED`),
    best first, each with its reason. Fewer when fewer slices are unlabelled.

    ``max_scans``: predict at most that many candidate scans, so that a large study answers in
    seconds rather than predicting every scan. The scoring strategies rank the slices of that
    many scans drawn at random (with ``seed``); ``fg_random`` draws slices at random and
    predicts their scans as it goes, keeping those showing the structures, until it has ``k``
    (within ``max_scans`` scans). None: every candidate scan (the simulated annotator).
    """
    strategy = check_strategy(strategy or RECOMMENDED)
    rng = np.random.default_rng(seed)
    cands = candidates(ws, scans)
    if not cands:
        return []
    if max_scans is not None and strategy != "random":
        if max_scans < 1:
            raise ValueError(f"max_scans must be at least 1, got {max_scans}")
        if strategy == "fg_random":
            return _drawn_showing_structures(
                ws, cands, k, max_scans, rng, truth=truth, device=device, progress=progress
            )
        ids = sorted(cands)
        cands = {ids[i]: cands[ids[i]] for i in rng.permutation(len(ids))[:max_scans]}
    scores, fg = slice_scores(ws, strategy, cands, truth=truth, device=device, progress=progress)
    return rank(strategy, cands, k, scores=scores, foreground=fg, rng=rng)


def _drawn_showing_structures(
    ws: Any,
    cands: Mapping[str, Sequence[int]],
    k: int,
    max_scans: int,
    rng: np.random.Generator,
    *,
    truth: Mapping[str, np.ndarray] | None = None,
    device: str = "auto",
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Candidate]:
    """``fg_random`` without predicting every scan: walk the unlabelled slices in a random
    order and keep those whose prediction shows the structures, until ``k`` are kept. The walk
    keeps to the first ``max_scans`` scans it reaches; the slices kept are uniform among theirs.

    The network is 2D, so each drawn slice is predicted alone (its scan normalised as a whole,
    the model's post-processing applied to the slice): about k slices, not k whole scans.
    ``progress(i, n, scan)`` when the walk first reaches a scan (it may raise
    :class:`Cancelled`). With ``truth`` (simulations) the reference masks decide."""
    pool = [(sid, int(z)) for sid in sorted(cands) for z in sorted(set(cands[sid]))]
    order = [pool[i] for i in rng.permutation(len(pool))]
    allowed = list(dict.fromkeys(sid for sid, _ in order))[:max_scans]
    chosen = set(allowed)
    walk = [(sid, z) for sid, z in order if sid in chosen]
    if truth is not None:
        return _drawn_from_truth(ws, cands, k, allowed, walk, truth, progress)
    # imported here, when needed: it loads torch
    from napari_mtssl.training.prediction.inference import resolve_device

    dev = resolve_device(device)
    model = _models(ws, "fg_random", dev)["student"][0]
    reached: list[str] = []
    recent: dict[str, tuple[Any, dict]] = {}  # a few scans read and normalised, newest last
    picks: list[tuple[str, int]] = []
    predicted = 0
    for sid, z in walk:
        if sid not in reached:
            reached.append(sid)
            if progress is not None:
                progress(len(reached) - 1, len(allowed), sid)
        if sid not in recent:
            recent[sid] = (ws.load_scan(sid), {})
            if len(recent) > RECENT_SCANS:  # a CT scan normalised is hundreds of MB
                recent.pop(next(iter(recent)))
        scan, prepared = recent[sid]
        labels, _ = model.predict(scan, dev, prepared, slices=[z])
        predicted += 1
        if labels[0].any():
            picks.append((sid, z))
            if len(picks) == k:
                break
    if progress is not None:
        progress(len(allowed), len(allowed), "")
    why = (
        "at random among the slices showing the structures "
        f"({predicted} slices of {len(reached)} scans predicted)"
    )
    return [Candidate(sid, z, 1.0, why) for sid, z in picks]


RECENT_SCANS = 4


def _drawn_from_truth(
    ws: Any,
    cands: Mapping[str, Sequence[int]],
    k: int,
    allowed: list[str],
    walk: list[tuple[str, int]],
    truth: Mapping[str, np.ndarray],
    progress: Callable[[int, int, str], None] | None,
) -> list[Candidate]:
    """The walk of :func:`_drawn_showing_structures` where reference masks say which slices
    show the structures (a simulation): every scan the walk reaches is looked up whole."""

    def kept(fg: Mapping[str, np.ndarray]) -> tuple[list[tuple[str, int]], bool]:
        out: list[tuple[str, int]] = []
        for sid, z in walk:
            if sid not in fg:
                return out, False  # this scan is the next to look up
            if bool(np.asarray(fg[sid])[z]):
                out.append((sid, z))
                if len(out) == k:
                    return out, True
        return out, True

    _, fg = slice_scores(
        ws,
        "fg_random",
        {sid: cands[sid] for sid in allowed},
        truth=truth,
        progress=progress,
        enough=lambda _scores, fg: kept(fg)[1],
    )
    picks, _ = kept(fg)
    why = f"at random among the slices showing the structures ({len(fg)} scans predicted)"
    return [Candidate(sid, z, 1.0, why) for sid, z in picks]
