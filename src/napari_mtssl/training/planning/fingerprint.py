"""The fingerprint of a study (nnU-Net's dataset fingerprint): what the planner knows about
the training and validation scans before it shapes a run.

In-plane spacings and sizes, slice spacing and counts, modalities with the intensity
statistics CT normalisation needs, class frequencies, labelled and unlabelled slice counts.
Read from the workspace records and labels; CT scans with labels are read once and their
statistics cached.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_mtssl._atomic import atomic_write_json
from napari_mtssl.training.data.preprocess import content_hash
from napari_mtssl.training.planning.plan import PlanError

__all__ = ["Fingerprint", "fingerprint"]


@dataclass
class Fingerprint:
    """What the planner knows about a study (all JSON-able)."""

    n_train: int
    n_val: int
    n_labelled_scans: int
    labelled_slices: int
    unlabelled_slices: int
    spacing: tuple[float, float]  # median in-plane (y, x) mm of the training scans
    spacing_range: tuple[float, float]  # smallest and largest in-plane spacing
    size: tuple[int, int]  # median in-plane (h, w) in voxels
    size_range: tuple[int, int]  # smallest and largest in-plane side
    slice_spacing: float  # median
    slices: tuple[int, int, int]  # min, median, max slices per scan
    modalities: dict[str, int]
    intensity: dict[str, dict[str, float]]  # modality -> CT statistics of labelled foreground
    class_freq: dict[str, float]  # class id -> share of labelled voxels
    num_classes: int
    val_shapes: list[tuple[int, int, int]]  # (z, h, w) of the validation scans (their cost)
    spacing_known: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        d = dict(d)
        for k in ("spacing", "spacing_range", "size", "size_range", "slices"):
            d[k] = tuple(d[k])
        d["val_shapes"] = [tuple(x) for x in d.get("val_shapes", [])]
        return cls(**d)


def fingerprint(ws: Any, *, stats_cache: bool = True) -> Fingerprint:
    """The fingerprint of a workspace's training and validation scans."""
    train = ws.scan_ids("train")
    val = [s for s in ws.scan_ids("val") if ws.labelled_slices(s)]
    if not train:
        raise PlanError("the workspace has no training scans; add scans first")
    recs = {s: ws.record(s) for s in [*train, *val]}
    sp = np.array([[float(recs[s].spacing[1]), float(recs[s].spacing[2])] for s in train])
    sp = np.where(np.isfinite(sp) & (sp > 0), sp, 1.0)
    shapes = np.array([[int(recs[s].shape[1]), int(recs[s].shape[2])] for s in train])
    nz = np.array([int(recs[s].shape[0]) for s in train])
    zsp = np.array([float(recs[s].spacing[0]) for s in train])
    mods: dict[str, int] = {}
    for s in train:
        m = str(recs[s].modality or "unknown").upper()
        mods[m] = mods.get(m, 0) + 1
    nl = 0
    counts = np.zeros(int(ws.num_classes), np.int64)
    ct_samples: list[np.ndarray] = []
    labelled_scans = 0
    rng = np.random.default_rng(0)
    for s in train:
        zs = ws.labelled_slices(s)
        if not zs:
            continue
        labelled_scans += 1
        nl += len(zs)
        lab = ws.labels(s)[zs]
        counts += np.bincount(lab.reshape(-1), minlength=len(counts))[: len(counts)]
        if str(recs[s].modality).upper() == "CT":
            ct_samples.append(_ct_foreground(ws, s, lab, zs, rng, stats_cache))
    notes = []
    known = not bool(np.all(sp == 1.0) and np.all(zsp == 1.0))
    if not known:
        notes.append(
            "every scan has 1 mm voxels: the files probably record no spacing, so sizes are "
            "in pixels"
        )
    intensity = _ct_intensity(ct_samples)
    total = max(1, int(counts.sum()))
    return Fingerprint(
        n_train=len(train),
        n_val=len(val),
        n_labelled_scans=labelled_scans,
        labelled_slices=nl,
        unlabelled_slices=int(nz.sum()) - nl,
        spacing=(float(np.median(sp[:, 0])), float(np.median(sp[:, 1]))),
        spacing_range=(float(sp.min()), float(sp.max())),
        size=(int(np.median(shapes[:, 0])), int(np.median(shapes[:, 1]))),
        size_range=(int(shapes.min()), int(shapes.max())),
        slice_spacing=float(np.median(zsp)),
        slices=(int(nz.min()), int(np.median(nz)), int(nz.max())),
        modalities=mods,
        intensity=intensity,
        class_freq={str(i): round(float(n) / total, 6) for i, n in enumerate(counts)},
        num_classes=int(ws.num_classes),
        val_shapes=[tuple(int(x) for x in recs[s].shape) for s in val],
        spacing_known=known,
        notes=notes,
    )


def _ct_intensity(samples: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """CT's foreground intensity statistics (nnU-Net's: percentiles 0.5 and 99.5, and the mean
    and standard deviation within them), where there are CT samples."""
    if not samples or not sum(len(c) for c in samples):
        return {}
    v = np.concatenate(samples)
    lo, hi = np.percentile(v, [0.5, 99.5])
    c = np.clip(v, lo, hi)
    return {
        "CT": {
            "p0.5": float(lo),
            "p99.5": float(hi),
            "mean": float(c.mean()),
            "std": float(c.std()),
            "n": int(v.size),
        }
    }


def _ct_foreground(ws, sid, lab, zs, rng, use_cache: bool) -> np.ndarray:
    """Up to 20 000 intensities of the labelled foreground of a CT scan (cached per scan and
    label content: reading a large CT is the slow part of fingerprinting)."""

    key = f"{ws.record(sid).sha256[:24]}_{content_hash(lab)[:16]}"
    path = ws.root / "cache" / "fingerprint" / f"{key}.json"
    if use_cache and path.is_file():
        try:
            got = json.loads(path.read_text())
        except (OSError, ValueError):
            got = None
        if isinstance(got, list):
            return np.asarray(got, np.float32)
    img = ws.load_scan(sid).array[zs]
    v = img[lab > 0].astype(np.float32)
    v = v[np.isfinite(v)]
    if v.size > 20_000:
        v = v[rng.choice(v.size, 20_000, replace=False)]
    if use_cache:
        try:
            atomic_write_json(path, [round(float(x), 3) for x in v])
        except OSError:
            pass  # a read-only workspace only loses the cache
    return v
