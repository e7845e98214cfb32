"""Slices for training at the planned resolution: the split by scan, patch sampling with
foreground oversampling, batch streams prefetched in background threads, and augmentation.

Each scan is preprocessed once (:mod:`.preprocess`: normalised, resampled in-plane to the
plan's spacing, cached on disk and memory-mapped) and padded so both in-plane sides are at least
the patch size. Training draws square ``patch x patch`` windows: a share ``fg_oversample`` of
every segmentation batch is centred on labelled foreground (a random scan, then one of the
classes it holds, then one of that class's voxels: nnU-Net's sampling), the rest lie anywhere on
a labelled slice. Auxiliary tasks build their samples inside such a window, so every task sees
the same preprocessed data as segmentation does.

Randomness: each batch is a pure function of ``(seed, stream, step)`` (a fresh numpy generator
seeded with that triple), so prefetching ahead, stopping and resuming all draw the same batches.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_mtssl.task_needs import DataSummary
from napari_mtssl.tasks.base import SliceContext
from napari_mtssl.training.config import DataConfig
from napari_mtssl.training.data.preprocess import (
    Preprocessing,
    SliceMap,
    VolumeCache,
    content_hash,
    normalise,
    resample_slices,
)

__all__ = [
    "ScanData",
    "StudyData",
    "BatchStream",
    "augment",
    "augment_with_soft",
    "no_labelled_data_message",
    "prepare_volume",
    "FG_PER_CLASS",
]

FG_PER_CLASS = 20_000  # foreground voxels kept per class and scan for oversampling


def prepare_volume(
    array: np.ndarray, spacing: Sequence[float], modality: str, prep: Preprocessing
) -> tuple[np.ndarray, SliceMap]:
    """A scan's ``(z, y, x)`` array -> normalised ``(z, H, W)`` float32 at the planned grid."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[None]
    native = (int(a.shape[1]), int(a.shape[2]))
    planned = prep.planned_shape(native, (float(spacing[1]), float(spacing[2])))
    vol = normalise(a, prep.norm_for(modality))
    return resample_slices(vol, planned), SliceMap(native, planned)


def pad_to(vol: np.ndarray, least: int, fill: float = 0.0) -> tuple[np.ndarray, tuple[int, int]]:
    """Centre-pad ``(z, H, W)`` so both in-plane sides are at least ``least``; returns the
    padded volume (the input itself when no padding is needed) and the (top, left) offsets."""
    z, h, w = vol.shape
    ph, pw = max(h, least), max(w, least)
    if (ph, pw) == (h, w):
        return vol, (0, 0)
    top, left = (ph - h) // 2, (pw - w) // 2
    out = np.full((z, ph, pw), fill, dtype=vol.dtype)
    out[:, top : top + h, left : left + w] = vol
    return out, (top, left)


# -- the study ------------------------------------------------------------------------------------


@dataclass
class ScanData:
    """One scan at the planned grid (padded to at least the patch), with what evaluation needs
    in the scan's own geometry."""

    name: str
    image: np.ndarray  # (z, H, W) float32 normalised, possibly a read-only memory map
    labels: np.ndarray | None  # (z, H, W) uint8, zeros on unlabelled slices; None: no labels
    labelled: np.ndarray  # (z,) bool
    spacing: tuple[float, float, float]  # native (z, y, x) mm
    slice_map: SliceMap  # native (h, w) <-> planned (h', w') before padding
    pad: tuple[int, int] = (0, 0)  # (top, left) padding added around the planned slices
    labels_native: np.ndarray | None = None  # (z, h, w) uint8 ground truth in the scan's grid
    scan_id: str | None = None
    split: str = "train"
    fg: dict[int, np.ndarray] = field(default_factory=dict)  # class -> (n, 3) int32 (z, y, x)
    image_key: str | None = None  # identity of the prepared image (None: not cached)
    # The teachers' ensemble class probabilities at this grid, (z, C, H, W) uint8 (p * 255),
    # memory-mapped (:mod:`.soft_labels`); None until stage 2 attaches them.
    soft: np.ndarray | None = None
    soft_fg: np.ndarray | None = None  # (n, 3) int32 voxels the ensemble calls foreground

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[2])

    def unpad(self, maps: torch.Tensor) -> torch.Tensor:
        """``(C, z, H, W)`` at the padded grid -> the planned grid before padding."""
        top, left = self.pad
        h, w = self.slice_map.planned
        return maps[:, :, top : top + h, left : left + w]

    def context(self, z: int, num_classes: int, window: tuple[int, int, int] | None = None):
        """The task view of slice ``z``: the whole padded scan, or ``window`` = (y0, x0, side)
        of it (a view, no copy)."""
        vol, lab = self.image, self.labels
        if window is not None:
            y0, x0, p = window
            vol = vol[:, y0 : y0 + p, x0 : x0 + p]
            lab = None if lab is None else lab[:, y0 : y0 + p, x0 : x0 + p]
        return SliceContext(
            volume=vol,
            z=int(z),
            labels=lab,
            labelled=self.labelled if lab is not None else None,
            num_classes=num_classes,
            spacing=self.spacing,
        )


def no_labelled_data_message() -> str:
    return (
        "no labelled training slices: label at least one slice of a training scan "
        "(or import a dataset with --labelled N >= 1)"
    )


def _foreground_index(labels: np.ndarray, labelled: np.ndarray, num_classes: int, key: int):
    """Up to ``FG_PER_CLASS`` voxels (z, y, x) of each foreground class on labelled slices."""
    out: dict[int, np.ndarray] = {}
    zs = np.flatnonzero(labelled)
    if not zs.size:
        return out
    rng = np.random.default_rng(key)
    sub = labels[zs]
    for c in range(1, num_classes):
        idx = np.argwhere(sub == c)
        if not len(idx):
            continue
        if len(idx) > FG_PER_CLASS:
            idx = idx[rng.choice(len(idx), FG_PER_CLASS, replace=False)]
        idx[:, 0] = zs[idx[:, 0]]
        out[c] = idx.astype(np.int32)
    return out


@dataclass
class _Source:
    """One scan as the study builder receives it (from memory or from a workspace)."""

    name: str
    load_image: Callable[[], np.ndarray]  # (z, y, x) raw array
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    modality: str
    split: str
    labels: np.ndarray | None  # (z, y, x) class map (unlabelled slices: anything)
    labelled: np.ndarray  # (z,) bool
    image_key: str | None = None  # cache identity of the raw image (checksum); None: no cache
    scan_id: str | None = None


class DeferredScans(Sequence[ScanData]):
    """Validation scans prepared at their first use (the first validation pass), not before
    the first training step: their number is known at once, their data only when asked for.
    A baseline on the ACDC study with 3 labelled patients reads 6 training scans at the click
    instead of 26."""

    def __init__(self, todo: Sequence[tuple[int, Any]], prepare: Callable[[int, Any], ScanData]):
        self._todo = list(todo)
        self._prepare = prepare
        self._scans: list[ScanData] | None = None

    @property
    def names(self) -> list[str]:
        """The scans' names, without preparing them."""
        return [str(src.name) for _, src in self._todo]

    @property
    def ready(self) -> bool:
        """Whether the scans were prepared."""
        return self._scans is not None

    def _all(self) -> list[ScanData]:
        if self._scans is None:
            self._scans = [self._prepare(i, src) for i, src in self._todo]
        return self._scans

    def __len__(self) -> int:
        return len(self._todo)

    def __getitem__(self, i):  # an index or a slice, as a list's
        return self._all()[i]

    def __iter__(self) -> Iterator[ScanData]:
        return iter(self._all())


@dataclass
class StudyData:
    """Training and validation scans at the planned grid. Split by scan, never by slice."""

    train: list[ScanData]
    val: Sequence[ScanData]  # a DeferredScans from build(): prepared at the first validation
    num_classes: int
    label_names: dict[int, str]
    patch: int
    prep: Preprocessing = field(default_factory=Preprocessing)
    val_source: str = "val"  # "val" | "held-out training scans" | "training scans (no held-out)"
    notes: list[str] = field(default_factory=list)
    cache: VolumeCache | None = None  # where the scans were prepared (its hits and misses)

    @property
    def cache_hits(self) -> int:
        return self.cache.hits if self.cache is not None else 0

    @property
    def cache_misses(self) -> int:
        return self.cache.misses if self.cache is not None else 0

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray | None],
        prep: Preprocessing | None = None,
        patch: int = 32,
        *,
        labelled: Sequence[np.ndarray | None] | None = None,
        splits: Sequence[str] | None = None,
        spacings: Sequence[Sequence[float]] | None = None,
        modalities: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        num_classes: int | None = None,
        label_names: dict[int, str] | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> StudyData:
        """From in-memory volumes ``(z, y, x)``; ``labelled[i]`` marks the real slices of
        ``labels[i]`` (default: every slice of a given mask)."""
        n = len(images)
        if num_classes is None:
            tops = [int(lab.max()) for lab in labels if lab is not None and np.size(lab)]
            num_classes = max([1, *tops]) + 1
        sources = []
        for i in range(n):
            img = np.asarray(images[i])
            if img.ndim == 2:
                img = img[None]
            lab = labels[i]
            if lab is not None:
                lab = np.asarray(lab)
                if lab.ndim == 2:
                    lab = lab[None]
            mask = None if labelled is None else labelled[i]
            if lab is None:
                mask = np.zeros(img.shape[0], bool)
            elif mask is None:
                mask = np.ones(img.shape[0], bool)
            sources.append(
                _Source(
                    name=(names or [f"scan{j}" for j in range(n)])[i],
                    load_image=lambda img=img: img,
                    shape=tuple(img.shape),
                    spacing=tuple(float(s) for s in (spacings or [(1.0, 1.0, 1.0)] * n)[i]),
                    modality=(modalities or ["unknown"] * n)[i],
                    split=(splits or ["train"] * n)[i],
                    labels=lab,
                    labelled=np.asarray(mask, bool),
                )
            )
        return cls.build(
            sources,
            prep or Preprocessing(),
            patch,
            num_classes=num_classes,
            label_names=label_names,
            val_fraction=val_fraction,
            seed=seed,
        )

    @classmethod
    def from_workspace(
        cls,
        ws: Any,
        prep: Preprocessing,
        patch: int,
        *,
        val_fraction: float = 0.2,
        seed: int = 0,
        cache: bool = True,
        progress: Callable[[int, int], None] | None = None,
        labelled_only: bool = False,
    ) -> StudyData:
        """Scans by split, labels and per-slice labelled mask from the workspace label store;
        preprocessed volumes cached in ``<workspace>/cache/preprocessed``. ``progress(i, n)``
        before each scan is prepared. ``labelled_only``: training scans without a labelled
        slice are not read (a baseline learns from labelled slices only)."""
        sources = []
        for split in ("train", "val"):
            for sid in ws.scan_ids(split):
                rec = ws.record(sid)
                status = ws.slice_status(sid)
                mask = np.array([s != "unlabelled" for s in status], bool)
                if split == "val" and not mask.any():
                    continue  # nothing to evaluate on; not used for training either
                sources.append(
                    _Source(
                        name=getattr(rec, "name", sid),
                        load_image=lambda sid=sid: ws.load_scan(sid).array,
                        shape=tuple(int(x) for x in rec.shape),
                        spacing=tuple(float(s) for s in rec.spacing),
                        modality=str(getattr(rec, "modality", "unknown")),
                        split=split,
                        labels=ws.labels(sid) if mask.any() else None,
                        labelled=mask,
                        image_key=rec.sha256,
                        scan_id=sid,
                    )
                )
        folder = ws.root / "cache" / "preprocessed" if cache else None
        return cls.build(
            sources,
            prep,
            patch,
            num_classes=int(ws.num_classes),
            label_names={int(k): v for k, v in dict(ws.label_names).items()},
            val_fraction=val_fraction,
            seed=seed,
            cache=VolumeCache(folder),
            progress=progress,
            labelled_only=labelled_only,
        )

    @classmethod
    def build(
        cls,
        sources: Sequence[_Source],
        prep: Preprocessing,
        patch: int,
        *,
        num_classes: int,
        label_names: dict[int, str] | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        cache: VolumeCache | None = None,
        progress: Callable[[int, int], None] | None = None,
        labelled_only: bool = False,
    ) -> StudyData:
        """The study from ``sources``, each prepared in the plan's shape. ``labelled_only``:
        training sources without labels are left out, the others keep the random keys they
        have with them (the same batches, the same model)."""
        cache = cache or VolumeCache(None)
        num_classes = max(2, int(num_classes))
        label_names = dict(label_names or {})
        label_names.setdefault(0, "background")
        for c in range(1, num_classes):
            label_names.setdefault(c, f"class {c}")
        todo = [
            (i, src)
            for i, src in enumerate(sources)
            if src.split == "train" and not (labelled_only and src.labels is None)
        ]
        later = [
            (i, src)
            for i, src in enumerate(sources)
            if src.split == "val" and src.labels is not None
        ]

        def prepared(i: int, src: _Source) -> ScanData:
            return _prepare(src, prep, patch, num_classes, cache, key=seed * 7919 + i)

        train: list[ScanData] = []
        for n, (i, src) in enumerate(todo):
            if progress is not None:
                progress(n, len(todo))
            train.append(prepared(i, src))
        val = DeferredScans(later, prepared)
        study = cls(train, val, num_classes, label_names, int(patch), prep)
        skipped = sum(1 for s in sources if s.split == "train") - len(todo)
        if skipped:
            study.notes.append(
                f"{skipped} training scan(s) without labels not read: "
                "this run learns from labelled slices only"
            )
        study.cache = cache
        if not later:
            study._hold_out(val_fraction, seed)
        return study

    def _hold_out(self, fraction: float, seed: int) -> None:
        """No validation split: hold out whole labelled training scans (never slices)."""
        lab = [i for i, s in enumerate(self.train) if s.labels is not None]
        if len(lab) >= 2 and fraction > 0:
            k = max(1, int(round(fraction * len(lab))))
            k = min(k, len(lab) - 1)
            pick = sorted(np.random.default_rng(seed).permutation(lab)[:k].tolist())
            self.val = [self.train[i] for i in pick]
            for s in self.val:
                s.split = "val"
            self.train = [s for i, s in enumerate(self.train) if i not in pick]
            self.val_source = "held-out training scans"
            self.notes.append(
                f"no validation scans: held out {k} labelled training scan(s) "
                f"({', '.join(s.name for s in self.val)})"
            )
        else:
            self.val = [s for s in self.train if s.labels is not None]
            self.val_source = "training scans (no held-out)"
            self.notes.append(
                "only one labelled scan and no validation scans: model selection uses the "
                "training scan itself, so its scores are optimistic"
            )

    # -- queries -----------------------------------------------------------------------------
    def labelled_slices(self) -> list[tuple[int, int]]:
        return [(i, int(z)) for i, s in enumerate(self.train) for z in np.flatnonzero(s.labelled)]

    def unlabelled_slices(self) -> list[tuple[int, int]]:
        return [(i, int(z)) for i, s in enumerate(self.train) for z in np.flatnonzero(~s.labelled)]

    def all_slices(self) -> list[tuple[int, int]]:
        return [(i, z) for i, s in enumerate(self.train) for z in range(s.n_slices)]

    def summary(self) -> DataSummary:
        n = [s.n_slices for s in self.train] or [0]
        nl = sum(int(s.labelled.sum()) for s in self.train)
        return DataSummary(
            n_scans=len(self.train),
            n_labelled_slices=nl,
            n_unlabelled_slices=sum(n) - nl,
            min_slices=min(n),
            max_slices=max(n),
            num_classes=self.num_classes,
            slice_spacing=float(np.median([s.spacing[0] for s in self.train]))
            if self.train
            else 1.0,
        )

    def describe(self) -> dict[str, Any]:
        """The ``data`` block of the report."""
        s = self.summary()
        return {
            "train_scans": [x.name for x in self.train],
            # named without reading them: the run's start describes its data before a step
            "val_scans": (
                self.val.names
                if isinstance(self.val, DeferredScans)
                else [x.name for x in self.val]
            ),
            "labelled_train_scans": sum(x.labels is not None for x in self.train),
            "labelled_slices": s.n_labelled_slices,
            "unlabelled_slices": s.n_unlabelled_slices,
            "num_classes": self.num_classes,
            "label_names": {str(k): v for k, v in self.label_names.items()},
            "patch": self.patch,
            "preprocessing": self.prep.to_dict(),
            "cache": {"hits": self.cache_hits, "misses": self.cache_misses},
            "val_source": self.val_source,
            "notes": list(self.notes),
        }

    # -- batch builders (pure functions of the rng) -------------------------------------------
    def _window(
        self, scan: ScanData, rng: np.random.Generator, centre: tuple[int, int] | None = None
    ) -> tuple[int, int, int]:
        """``(y0, x0, patch)`` inside the padded scan: uniform, or centred on ``centre``."""
        p = self.patch
        h, w = scan.shape
        if centre is None:
            return int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1)), p
        cy, cx = centre
        return int(np.clip(cy - p // 2, 0, h - p)), int(np.clip(cx - p // 2, 0, w - p)), p

    def _fg_pick(self, rng: np.random.Generator) -> tuple[int, int, tuple[int, int]] | None:
        """A labelled foreground voxel: a random scan, a class it holds, a voxel of it."""
        holders = [i for i, s in enumerate(self.train) if s.fg]
        if not holders:
            return None
        i = holders[int(rng.integers(0, len(holders)))]
        fg = self.train[i].fg
        classes = sorted(fg)
        vox = fg[classes[int(rng.integers(0, len(classes)))]]
        z, y, x = (int(v) for v in vox[int(rng.integers(0, len(vox)))])
        return i, z, (y, x)

    def _soft_fg_pick(
        self, pool_scans: set[int], rng: np.random.Generator
    ) -> tuple[int, int, tuple[int, int]] | None:
        """A voxel the teachers' ensemble calls foreground, on a scan of ``pool_scans``."""
        holders = [i for i in sorted(pool_scans) if self.train[i].soft_fg is not None]
        holders = [i for i in holders if len(self.train[i].soft_fg)]
        if not holders:
            return None
        i = holders[int(rng.integers(0, len(holders)))]
        vox = self.train[i].soft_fg
        z, y, x = (int(v) for v in vox[int(rng.integers(0, len(vox)))])
        return i, z, (y, x)

    def seg_batch(
        self,
        pool: list[tuple[int, int]],
        n: int,
        rng: np.random.Generator,
        fg_fraction: float = 0.0,
        *,
        soft: bool = False,
        fg_from: str = "labels",
    ) -> dict[str, np.ndarray]:
        """``image`` (n, 1, P, P) float32 and, when every slice has labels, ``label`` (n, P, P)
        int64: windows of slices of ``pool``; the last ``round(n * fg_fraction)`` are centred
        on foreground (nnU-Net's oversampling): labelled foreground (``fg_from="labels"``), or
        where the teachers' ensemble sees the anatomy (``"soft"``, on the pool's scans).
        ``soft``: also ``soft`` (n, C, P, P) uint8, the ensemble's probabilities x 255 over the
        same windows (zeros where a scan has none attached)."""
        p = self.patch
        n_fg = int(round(n * fg_fraction))
        img = np.empty((n, 1, p, p), np.float32)
        lab = np.zeros((n, p, p), np.int64)
        sft = np.zeros((n, self.num_classes, p, p), np.uint8) if soft else None
        pool_scans = {i for i, _ in pool} if fg_from == "soft" and n_fg else set()
        has_all = True
        for j in range(n):
            pick = None
            if j >= n - n_fg:
                if fg_from == "soft":
                    pick = self._soft_fg_pick(pool_scans, rng)
                else:
                    pick = self._fg_pick(rng)
            if pick is None:
                i, z = pool[int(rng.integers(0, len(pool)))]
                y0, x0, _ = self._window(self.train[i], rng)
            else:
                i, z, centre = pick
                y0, x0, _ = self._window(self.train[i], rng, centre)
            s = self.train[i]
            img[j, 0] = s.image[z, y0 : y0 + p, x0 : x0 + p]
            if sft is not None and s.soft is not None:
                sft[j] = s.soft[z, :, y0 : y0 + p, x0 : x0 + p]
            if s.labels is None:
                has_all = False
            else:
                lab[j] = s.labels[z, y0 : y0 + p, x0 : x0 + p]
        out = {"image": img}
        if has_all:
            out["label"] = lab
        if sft is not None:
            out["soft"] = sft
        return out

    def task_pool(self, task: Any, include_unlabelled: bool) -> list[tuple[int, int]]:
        pool = self.all_slices() if include_unlabelled else self.labelled_slices()
        return [
            (i, z) for i, z in pool if task.slice_ok(self.train[i].context(z, self.num_classes))
        ]

    def task_batch(
        self, task: Any, pool: list[tuple[int, int]], n: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """Samples built by ``task`` inside patch windows of slices of ``pool``."""
        samples = []
        for _ in range(n):
            i, z = pool[int(rng.integers(0, len(pool)))]
            s = self.train[i]
            win = self._window(s, rng)
            samples.append(task.make_sample(s.context(z, self.num_classes, win), rng))
        return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def _prepare(
    src: _Source, prep: Preprocessing, patch: int, num_classes: int, cache: VolumeCache, key: int
) -> ScanData:
    """Preprocess (or fetch from the cache) one scan's image and labels."""
    z, h, w = src.shape
    native = (h, w)
    planned = prep.planned_shape(native, (src.spacing[1], src.spacing[2]))
    smap = SliceMap(native, planned)
    pkey = prep.key(src.modality)

    def image() -> np.ndarray:
        arr = np.asarray(src.load_image())
        if arr.ndim == 2:
            arr = arr[None]
        if tuple(arr.shape) != (z, h, w):
            raise ValueError(f"{src.name}: image shape {arr.shape} is not the recorded {src.shape}")
        vol, _ = prepare_volume(arr, src.spacing, src.modality, prep)
        return pad_to(vol, patch)[0]

    image_key = None
    if src.image_key is not None:
        image_key = cache.key("image", src.image_key, pkey, patch)
        img = cache.get(image_key, image)
    else:
        img = image()
    _, offsets = pad_to(np.empty((0, *planned), np.float32), patch)

    labels = labels_native = None
    fg: dict[int, np.ndarray] = {}
    mask = np.asarray(src.labelled, bool)
    if src.labels is not None and mask.any():
        lab = np.asarray(src.labels)
        if lab.shape != (z, h, w):
            raise ValueError(f"{src.name}: labels {lab.shape} do not match the image {src.shape}")
        lab = np.where(mask[:, None, None], lab, 0)
        top = int(lab.max(initial=0))
        if top >= num_classes:
            raise ValueError(
                f"{src.name}: labels hold class {top}, but the study has {num_classes} classes"
            )
        lab = lab.astype(np.uint8)

        def labels_planned() -> np.ndarray:
            return pad_to(resample_slices(lab, planned, labels=True), patch)[0]

        if src.image_key is not None and cache.folder is not None:
            lkey = cache.key("labels", content_hash(lab, mask), prep.to_dict()["spacing"], patch)
            labels = cache.get(lkey, labels_planned)
        else:
            labels = labels_planned()
        fg = _foreground_index(np.asarray(labels), mask, num_classes, key)
        labels_native = lab  # validation scores are in the scan's own grid
    else:
        mask = np.zeros(z, bool)
    return ScanData(
        name=src.name,
        image=img,
        labels=labels,
        labelled=mask,
        spacing=src.spacing,
        slice_map=smap,
        pad=offsets,
        labels_native=labels_native,
        scan_id=src.scan_id,
        split=src.split,
        fg=fg,
        image_key=image_key,
    )


# -- prefetching ---------------------------------------------------------------------------------


_DONE = object()


class BatchStream:
    """Builds the batches for steps ``start .. end-1`` in a background thread, ``prefetch`` ahead.

    ``make(step)`` must be a pure function of ``step`` (it seeds its own rng). ``get()`` returns
    the next batch as tensors (pinned memory when the device is CUDA) and accumulates the time
    the caller spent waiting in ``wait_s``: the number the progress events report as
    ``data_wait_s`` (near zero means the model never waited for data).
    """

    def __init__(
        self,
        make: Callable[[int], dict[str, np.ndarray]],
        start: int,
        end: int,
        prefetch: int = 4,
        pin: bool = False,
    ):
        self._make = make
        self._q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._pin = pin
        self.wait_s = 0.0
        self._thread = threading.Thread(target=self._run, args=(start, end), daemon=True)
        self._thread.start()

    def _run(self, start: int, end: int) -> None:
        try:
            for step in range(start, end):
                if self._stop.is_set():
                    return
                batch = {
                    k: torch.from_numpy(np.ascontiguousarray(v))
                    for k, v in self._make(step).items()
                }
                if self._pin:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                while not self._stop.is_set():
                    try:
                        self._q.put((step, batch), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._q.put((None, exc))
            return
        self._q.put((None, _DONE))

    def get(self) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        step, item = self._q.get()
        self.wait_s += time.perf_counter() - t0
        if step is None:
            if item is _DONE:
                raise StopIteration("batch stream exhausted")
            raise RuntimeError(f"building a training batch failed: {item}") from item
        return item

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)


# -- augmentation --------------------------------------------------------------------------------


def augment(
    image: torch.Tensor,
    label: torch.Tensor | None,
    cfg: DataConfig,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batched augmentation on the tensors' device, identical geometry for image and label.

    ``image`` (B, 1, S, S) float, ``label`` (B, S, S) int64 or None. Random parameters come from
    the CPU generator ``gen`` (seeded per step), so results do not depend on the device's RNG.
    Flips and quarter turns, a small rotation/scaling (bilinear image, nearest label), intensity
    scale and shift, and gamma (applied on the per-image min-max range, then mapped back).
    """
    x, y, _ = augment_with_soft(image, label, None, cfg, gen)
    return x, y


def augment_with_soft(
    image: torch.Tensor,
    label: torch.Tensor | None,
    soft: torch.Tensor | None,
    cfg: DataConfig,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """:func:`augment`, with ``soft`` (B, C, S, S) float class probabilities (the teachers'
    stored predictions of the same windows) warped by the same geometric transform (bilinear,
    edges repeated as the image's are). Same random draws as
    :func:`augment`, so adding ``soft`` changes nothing else."""
    b, dev = image.shape[0], image.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen).to(dev)

    x, y, sm = image, label, soft
    if cfg.flip:
        x, y, sm = _flips(x, y, sm, rand)
    if cfg.rotate90 and x.shape[-1] == x.shape[-2]:
        k = torch.randint(0, 4, (b,), generator=gen).to(dev)
        x, y, sm = _rot90s(x, y, sm, k)
    if cfg.affine_prob > 0:
        x, y, sm = _affine(x, y, sm, cfg, rand)
    x = _intensity(x, cfg, rand)
    return (
        x.contiguous(),
        None if y is None else y.contiguous(),
        None if sm is None else sm.contiguous(),
    )


_Views = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def _flips(x: torch.Tensor, y, sm, rand: Callable) -> _Views:
    """Each sample flipped left-right and up-down, each with probability 0.5."""
    b = x.shape[0]
    for dim, m in ((-1, rand(b) < 0.5), (-2, rand(b) < 0.5)):
        x = torch.where(m[:, None, None, None], x.flip(dim), x)
        if sm is not None:
            sm = torch.where(m[:, None, None, None], sm.flip(dim), sm)
        if y is not None:
            y = torch.where(m[:, None, None], y.flip(dim), y)
    return x, y, sm


def _rot90s(x: torch.Tensor, y, sm, k: torch.Tensor) -> _Views:
    """Each sample rotated by ``k`` quarter turns."""
    xs, ys = x.clone(), None if y is None else y.clone()
    ss = None if sm is None else sm.clone()
    for r in (1, 2, 3):
        sel = k == r
        if sel.any():
            xs[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
            if ys is not None:
                ys[sel] = torch.rot90(y[sel], r, dims=(-2, -1))
            if ss is not None:
                ss[sel] = torch.rot90(sm[sel], r, dims=(-2, -1))
    return xs, ys, ss


def _affine(x: torch.Tensor, y, sm, cfg: DataConfig, rand: Callable) -> _Views:
    """A random rotation and scaling of a share ``affine_prob`` of the samples: the image and
    the class probabilities bilinear (edges repeated), the labels nearest (zeros outside)."""
    b = x.shape[0]
    sel = rand(b) < cfg.affine_prob
    ang = (rand(b) * 2 - 1) * np.deg2rad(cfg.affine_degrees)
    sc = 1 + (rand(b) * 2 - 1) * cfg.affine_scale
    if not sel.any():
        return x, y, sm
    ang = torch.where(sel, ang, torch.zeros_like(ang))
    sc = torch.where(sel, sc, torch.ones_like(sc))
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if sm is not None:
        sm = F.grid_sample(
            sm, grid.to(sm.dtype), mode="bilinear", padding_mode="border", align_corners=False
        )
    if y is not None:
        y = F.grid_sample(
            y[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
        )
        y = y[:, 0].round().long()
    return x, y, sm


def _intensity(x: torch.Tensor, cfg: DataConfig, rand: Callable) -> torch.Tensor:
    """Random contrast and brightness (``intensity_prob``), then a random gamma
    (``gamma_prob``) within each sample's own range."""
    b = x.shape[0]
    if cfg.intensity_prob > 0:
        sel = (rand(b) < cfg.intensity_prob)[:, None, None, None]
        scale = 1 + (rand(b) * 2 - 1)[:, None, None, None] * cfg.intensity_scale
        shift = (rand(b) * 2 - 1)[:, None, None, None] * cfg.intensity_shift
        x = torch.where(sel, x * scale + shift, x)
    if cfg.gamma_prob > 0:
        sel = (rand(b) < cfg.gamma_prob)[:, None, None, None]
        lg_lo, lg_hi = np.log(cfg.gamma_low), np.log(cfg.gamma_high)
        gamma = torch.exp(lg_lo + rand(b) * (lg_hi - lg_lo))[:, None, None, None]
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        rng_ = (hi - lo).clamp_min(1e-6)
        g = ((x - lo) / rng_).clamp(0, 1) ** gamma * rng_ + lo
        x = torch.where(sel, g, x)
    return x
