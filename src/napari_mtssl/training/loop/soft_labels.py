"""The teachers' ensemble, computed once (stage 2's cache of soft labels).

Distilling by running every teacher on every batch made a student step 4.4x a baseline step.
Instead, after stage 1 the ensemble's mean class probabilities are computed once for every
training slice at the planned grid (sliding windows with Gaussian blending, as prediction does),
stored as ``uint8`` (probability x 255: 1/255 resolution, a quarter of float32's bytes) in the
workspace's cache, one memory-mapped ``.npy`` per scan, and each training window takes the
matching crop, warped with the image's own geometric augmentation (ReLabel, Yun et al. 2021;
FKD, Shen & Xing 2022).

Entries are keyed by the members' weights (a digest of each model file), the scan's prepared
image and the inference settings, so new teachers or new data are computed again, while a
correction retrain with the same teachers reuses them (only labels changed, which the teachers'
predictions do not depend on).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_mtssl.events import Events, Note
from napari_mtssl.training.data.preprocess import VolumeCache, content_hash
from napari_mtssl.training.data.slices import ScanData, StudyData
from napari_mtssl.training.loop.trainer import score_predictions
from napari_mtssl.training.prediction.inference import sliding_window_probs

__all__ = ["file_digest", "attach", "ensemble_scores", "choose_scans", "scans_needed", "FG_SAMPLE"]

SCALE = 255.0
FG_SAMPLE = 20_000  # voxels kept per scan where the ensemble sees foreground (window centres)


def file_digest(path: str | Path) -> str:
    """A digest of a model file's bytes: the identity of a teacher's weights."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _ensemble(
    teachers: Sequence[torch.nn.Module],
    volume: np.ndarray,
    patch: int,
    device: torch.device,
    overlap: float,
    precision: str,
) -> np.ndarray:
    """Mean class probabilities of ``teachers`` over a prepared volume: (z, C, H, W) float32."""
    total: np.ndarray | None = None
    for t in teachers:
        for z0, p in sliding_window_probs(
            t, volume, patch, device, overlap=overlap, precision=precision
        ):
            arr = p.permute(1, 0, 2, 3).numpy()  # (n, C, H, W)
            if total is None:
                total = np.zeros((volume.shape[0], *arr.shape[1:]), np.float32)
            total[z0 : z0 + arr.shape[0]] += arr
    assert total is not None
    return total / len(teachers)


def _foreground_sample(soft: np.ndarray, unlabelled: np.ndarray, seed: int) -> np.ndarray:
    """Up to FG_SAMPLE voxels (z, y, x) of unlabelled slices whose most probable class is not
    background: where the ensemble sees the anatomy (centres for unlabelled windows)."""
    zs = np.flatnonzero(unlabelled)
    if zs.size == 0:
        return np.zeros((0, 3), np.int32)
    fg = soft[zs].argmax(1) > 0  # (k, H, W)
    idx = np.argwhere(fg)
    if len(idx) > FG_SAMPLE:
        idx = idx[np.random.default_rng(seed).choice(len(idx), FG_SAMPLE, replace=False)]
    idx[:, 0] = zs[idx[:, 0]]
    return idx.astype(np.int32)


def attach(
    study: StudyData,
    teachers: Sequence[torch.nn.Module],
    digests: Sequence[str],
    device: torch.device,
    folder: Path | None,
    *,
    overlap: float,
    precision: str,
    scans: Sequence[int] | None = None,
    stop=None,
) -> Events[dict[str, Any]]:
    """Give the training scans ``scans`` of ``study`` (default: all) their ensemble map
    (``scan.soft``) and foreground sample (``scan.soft_fg``), from the cache in ``folder`` or
    computed now. Yields notes; returns ``{"computed": n, "reused": n, "seconds": s,
    "bytes": b, "scans": n}``.

    ``stop()`` true between two scans: returns early with ``{"stopped": True}`` (what was
    computed so far stays in the cache)."""
    cache = VolumeCache(folder)
    t0 = time.perf_counter()
    members = sorted(digests)
    chosen = sorted(set(range(len(study.train)) if scans is None else scans))
    todo = len(chosen)
    yield Note(
        f"stage 2: the ensemble's predictions ({len(teachers)} model(s)) for {todo} training "
        "scan(s) (computed once, kept in the workspace cache)"
    )
    nbytes = 0
    for k in chosen:
        s = study.train[k]
        if stop is not None and stop():
            return {"stopped": True}
        ident = s.image_key or content_hash(np.asarray(s.image))
        key = cache.key("soft", ident, members, study.patch, round(overlap, 4), precision)

        def compute(s: ScanData = s) -> np.ndarray:
            p = _ensemble(teachers, s.image, study.patch, device, overlap, precision)
            return np.clip(np.rint(p * SCALE), 0, 255).astype(np.uint8)

        s.soft = cache.get(key, compute)
        s.soft_fg = _foreground_sample(np.asarray(s.soft), ~s.labelled, k)
        nbytes += int(s.soft.nbytes)
    took = time.perf_counter() - t0
    out = {
        "computed": cache.misses,
        "reused": cache.hits,
        "seconds": round(took, 1),
        "bytes": nbytes,
        "scans": todo,
    }
    yield Note(
        f"stage 2: the ensemble's predictions ready ({cache.hits} scan(s) reused, {cache.misses} "
        f"computed, {nbytes / 2**20:.0f} MiB, {took:.0f} s)"
    )
    return out


def choose_scans(study: StudyData, count: int, labelled_too: bool, seed: int) -> list[int]:
    """The training scans whose ensemble maps are stored: ``count`` of the scans with
    unlabelled slices, drawn with ``seed`` (the same ones for every run of that seed, so the
    cache is reused), and every labelled scan when ``labelled_too`` (the paper's student
    distils on labelled slices as well)."""
    holders = [i for i, s in enumerate(study.train) if (~s.labelled).any()]
    if count < len(holders):
        pick = np.random.default_rng(seed).permutation(len(holders))[: max(1, count)]
        holders = [holders[int(j)] for j in pick]
    if labelled_too:
        holders += [i for i, s in enumerate(study.train) if s.labelled.any()]
    return sorted(set(holders))


def scans_needed(study: StudyData, steps: int, windows_per_step: int, at_least: int) -> int:
    """Scans with unlabelled slices enough for the student to see each stored slice about
    once (``at_least``: the plan's minimum): more maps than windows buy nothing."""
    holders = [int((~s.labelled).sum()) for s in study.train if (~s.labelled).any()]
    if not holders:
        return 0
    per_scan = max(1.0, float(np.mean(holders)))
    return max(at_least, int(np.ceil(steps * windows_per_step / per_scan)))


@torch.no_grad()
def ensemble_scores(
    teachers: Sequence[torch.nn.Module],
    study: StudyData,
    device: torch.device,
    *,
    overlap: float,
    precision: str,
) -> dict[str, Any]:
    """Validation scores of the ensemble itself (the mean of the members' probabilities,
    argmax; the largest foreground component kept when that raises the mean Dice, the rule
    every model is scored by): the ceiling of what the student can learn from it."""
    preds, truths = [], []
    for s in study.val:
        if s.labels_native is None:
            continue
        soft = _ensemble(teachers, s.image, study.patch, device, overlap, precision)
        maps = torch.from_numpy(soft).permute(1, 0, 2, 3)  # (C, z, H, W)
        native = s.slice_map.to_native(s.unpad(maps)).numpy()
        preds.append(native.argmax(0).astype(np.uint8))
        truths.append(s)
    return score_predictions(preds, truths, study, hd95=False)
