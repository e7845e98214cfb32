"""Slices for training: normalisation, resizing to the training size and back, augmentation,
the split by scan, and batch streams prefetched in background threads.

Geometry: a slice ``(h, w)`` is padded (centred) to a square ``(P, P)`` with ``P = max(h, w)``
and resized to ``(S, S)``; :meth:`Geometry.to_scan` inverts exactly that (resize to ``P``, crop),
so predictions land in the scan's own voxel grid whatever its aspect ratio.

Randomness: each batch is a pure function of ``(seed, stream, step)`` (a fresh numpy generator
seeded with that triple), so prefetching ahead, stopping and resuming all draw the same batches.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_mtssl.tasks.base import DataSummary, SliceContext

from .config import DataConfig

__all__ = [
    "Geometry",
    "normalise",
    "ScanData",
    "StudyData",
    "BatchStream",
    "augment",
    "no_labelled_data_message",
]


# -- intensity -----------------------------------------------------------------------------------


def pick_normalisation(modality: str, cfg: DataConfig) -> str:
    if cfg.normalisation != "auto":
        return cfg.normalisation
    return "ct" if str(modality).upper() == "CT" else "mri"


def normalise(array: np.ndarray, method: str, cfg: DataConfig) -> np.ndarray:
    """Per-scan intensity normalisation, float32.

    ``mri`` (also the default for unknown modalities): clip to the ``clip_low``/``clip_high``
    percentiles, then z-score with the clipped volume's mean and std. ``ct``: window
    ``[level - width/2, level + width/2]`` HU mapped to [-1, 1]. ``none``: as is.
    """
    a = np.asarray(array, dtype=np.float32)
    if method == "none":
        return a.copy()
    if method == "ct":
        lo = cfg.ct_level - cfg.ct_width / 2
        return (np.clip(a, lo, lo + cfg.ct_width) - lo) / cfg.ct_width * 2 - 1
    lo, hi = np.percentile(a, [cfg.clip_low, cfg.clip_high])
    a = np.clip(a, lo, hi)
    std = float(a.std())
    return ((a - float(a.mean())) / (std if std > 1e-8 else 1.0)).astype(np.float32)


# -- geometry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """How one scan's slices ``(height, width)`` map to the square training size ``size``."""

    height: int
    width: int
    size: int

    @property
    def padded(self) -> int:
        return max(self.height, self.width)

    @property
    def offsets(self) -> tuple[int, int]:
        """Top and left padding of the centred square."""
        p = self.padded
        return (p - self.height) // 2, (p - self.width) // 2

    def to_training(self, vol: np.ndarray, labels: bool = False) -> np.ndarray:
        """``(z, h, w)`` -> ``(z, S, S)``: pad to square (image: its minimum; labels: 0), resize
        (image: bilinear with antialiasing; labels: nearest)."""
        p, (top, left) = self.padded, self.offsets
        z = vol.shape[0]
        fill = 0 if labels else (float(vol.min()) if vol.size else 0.0)
        sq = np.full((z, p, p), fill, dtype=np.float32)
        sq[:, top : top + self.height, left : left + self.width] = vol
        if p == self.size:
            out = sq
        else:
            t = torch.from_numpy(sq)[:, None]
            if labels:
                t = F.interpolate(t, size=(self.size, self.size), mode="nearest-exact")
            else:
                t = F.interpolate(
                    t,
                    size=(self.size, self.size),
                    mode="bilinear",
                    align_corners=False,
                    antialias=p > self.size,
                )
            out = t[:, 0].numpy()
        return out.astype(np.int64) if labels else np.ascontiguousarray(out, dtype=np.float32)

    def to_scan(self, probs: torch.Tensor) -> torch.Tensor:
        """Training-size maps ``(C, z, S, S)`` -> the scan's grid ``(C, z, h, w)`` (bilinear)."""
        p, (top, left) = self.padded, self.offsets
        c, z = probs.shape[:2]
        x = probs.float().reshape(c * z, 1, self.size, self.size)
        if p != self.size:
            x = F.interpolate(x, size=(p, p), mode="bilinear", align_corners=False)
        x = x[:, :, top : top + self.height, left : left + self.width]
        return x.reshape(c, z, self.height, self.width)


# -- the study ------------------------------------------------------------------------------------


@dataclass
class ScanData:
    """One scan at training size, with what evaluation needs in its own geometry."""

    name: str
    image: np.ndarray  # (z, S, S) float32 normalised
    labels: np.ndarray | None  # (z, S, S) int64, zeros on unlabelled slices; None: no labels
    labelled: np.ndarray  # (z,) bool
    spacing: tuple[float, float, float]
    geometry: Geometry
    labels_native: np.ndarray | None = None  # (z, h, w) ground truth in the scan's grid
    scan_id: str | None = None
    split: str = "train"

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[0])

    def context(self, z: int, num_classes: int) -> SliceContext:
        return SliceContext(
            volume=self.image,
            z=int(z),
            labels=self.labels,
            labelled=self.labelled if self.labels is not None else None,
            num_classes=num_classes,
            spacing=self.spacing,
        )


def no_labelled_data_message() -> str:
    return (
        "no labelled training slices: label at least one slice of a training scan "
        "(or import a dataset with --labelled N >= 1)"
    )


def workspace_summary(ws: Any) -> DataSummary:
    """The task-check summary of a workspace's training split, from its records alone.

    No scan is read: widgets call this each time a task is ticked, and a study of hundreds of
    scans must answer at once. The training run checks again on the loaded data.
    """
    sids = ws.scan_ids("train")
    n = [int(ws.record(s).shape[0]) for s in sids] or [0]
    nl = sum(len(ws.labelled_slices(s)) for s in sids)
    spacing = [float(ws.record(s).spacing[0]) for s in sids]
    return DataSummary(
        n_scans=len(sids),
        n_labelled_slices=nl,
        n_unlabelled_slices=sum(n) - nl,
        min_slices=min(n),
        max_slices=max(n),
        num_classes=int(ws.num_classes),
        slice_spacing=float(np.median(spacing)) if spacing else 1.0,
    )


@dataclass
class StudyData:
    """Training and validation scans at training size. Split by scan, never by slice."""

    train: list[ScanData]
    val: list[ScanData]
    num_classes: int
    label_names: dict[int, str]
    image_size: int
    val_source: str = "val"  # "val" | "held-out training scans" | "training scans (no held-out)"
    notes: list[str] = field(default_factory=list)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray | None],
        cfg: DataConfig,
        *,
        labelled: Sequence[np.ndarray | None] | None = None,
        splits: Sequence[str] | None = None,
        spacings: Sequence[Sequence[float]] | None = None,
        modalities: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        scan_ids: Sequence[str | None] | None = None,
        num_classes: int | None = None,
        label_names: dict[int, str] | None = None,
        seed: int = 0,
    ) -> StudyData:
        """From in-memory volumes ``(z, y, x)``; ``labelled[i]`` marks the real slices of
        ``labels[i]`` (default: every slice of a given mask)."""
        n = len(images)
        splits = list(splits or ["train"] * n)
        if num_classes is None:
            tops = [int(lab.max()) for lab in labels if lab is not None and lab.size]
            num_classes = max([1, *tops]) + 1
        num_classes = max(2, int(num_classes))
        label_names = dict(label_names or {})
        label_names.setdefault(0, "background")
        for c in range(1, num_classes):
            label_names.setdefault(c, f"class {c}")
        scans: list[ScanData] = []
        for i in range(n):
            img = np.asarray(images[i])
            if img.ndim == 2:
                img = img[None]
            modality = (modalities or ["unknown"] * n)[i]
            geom = Geometry(int(img.shape[1]), int(img.shape[2]), cfg.image_size)
            norm = normalise(img, pick_normalisation(modality, cfg), cfg)
            lab = labels[i]
            mask = None if labelled is None else labelled[i]
            if lab is not None:
                lab = np.asarray(lab)
                if lab.ndim == 2:
                    lab = lab[None]
                if lab.shape != img.shape:
                    raise ValueError(
                        f"{(names or [f'scan {i}'] * n)[i]}: labels {lab.shape} do not match "
                        f"the image {img.shape}"
                    )
                mask = np.ones(img.shape[0], bool) if mask is None else np.asarray(mask, bool)
                lab = np.where(mask[:, None, None], lab, 0)
            else:
                mask = np.zeros(img.shape[0], bool)
            has = lab is not None and bool(mask.any())
            scans.append(
                ScanData(
                    name=(names or [f"scan{i}" for i in range(n)])[i],
                    image=geom.to_training(norm),
                    labels=geom.to_training(lab, labels=True) if has else None,
                    labelled=mask,
                    spacing=tuple(float(s) for s in (spacings or [(1.0, 1.0, 1.0)] * n)[i]),
                    geometry=geom,
                    labels_native=lab.astype(np.int64) if has else None,
                    scan_id=(scan_ids or [None] * n)[i],
                    split=splits[i],
                )
            )
        train = [s for s in scans if s.split == "train"]
        val = [s for s in scans if s.split == "val" and s.labels is not None]
        study = cls(train, val, num_classes, label_names, cfg.image_size)
        if not val:
            study._hold_out(cfg.val_fraction, seed)
        return study

    @classmethod
    def from_workspace(cls, ws: Any, cfg: DataConfig, seed: int = 0) -> StudyData:
        """Scans by split, labels and per-slice labelled mask from the workspace label store."""
        images, labels, labelled, splits, spacings, modalities, names, ids = ([] for _ in range(8))
        for split in ("train", "val"):
            for sid in ws.scan_ids(split):
                rec = ws.record(sid)
                scan = ws.load_scan(sid)
                status = ws.slice_status(sid)
                mask = np.array([s != "unlabelled" for s in status], bool)
                if split == "val" and not mask.any():
                    continue  # nothing to evaluate on; not used for training either
                images.append(scan.array)
                labels.append(ws.labels(sid) if mask.any() else None)
                labelled.append(mask)
                splits.append(split)
                spacings.append(tuple(scan.spacing))
                modalities.append(getattr(scan, "modality", getattr(rec, "modality", "unknown")))
                names.append(getattr(rec, "name", sid))
                ids.append(sid)
        return cls.from_arrays(
            images,
            labels,
            cfg,
            labelled=labelled,
            splits=splits,
            spacings=spacings,
            modalities=modalities,
            names=names,
            scan_ids=ids,
            num_classes=int(ws.num_classes),
            label_names={int(k): v for k, v in dict(ws.label_names).items()},
            seed=seed,
        )

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
            "val_scans": [x.name for x in self.val],
            "labelled_train_scans": sum(x.labels is not None for x in self.train),
            "labelled_slices": s.n_labelled_slices,
            "unlabelled_slices": s.n_unlabelled_slices,
            "num_classes": self.num_classes,
            "label_names": {str(k): v for k, v in self.label_names.items()},
            "image_size": self.image_size,
            "val_source": self.val_source,
            "notes": list(self.notes),
        }

    # -- batch builders (pure functions of the rng) -------------------------------------------
    def seg_batch(self, pool: list[tuple[int, int]], n: int, rng: np.random.Generator) -> dict:
        """``image`` (n, 1, S, S) float32, ``label`` (n, S, S) int64 from labelled ``pool``."""
        idx = rng.integers(0, len(pool), size=n)
        img = np.stack([self.train[pool[i][0]].image[pool[i][1]] for i in idx])[:, None]
        out = {"image": img}
        lab = [self.train[pool[i][0]].labels for i in idx]
        if all(x is not None for x in lab):
            out["label"] = np.stack([lab[j][pool[i][1]] for j, i in enumerate(idx)])
        return out

    def task_pool(self, task: Any, include_unlabelled: bool) -> list[tuple[int, int]]:
        pool = self.all_slices() if include_unlabelled else self.labelled_slices()
        return [
            (i, z) for i, z in pool if task.slice_ok(self.train[i].context(z, self.num_classes))
        ]

    def task_batch(
        self, task: Any, pool: list[tuple[int, int]], n: int, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        idx = rng.integers(0, len(pool), size=n)
        samples = [
            task.make_sample(self.train[pool[i][0]].context(pool[i][1], self.num_classes), rng)
            for i in idx
        ]
        return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


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
    b, dev = image.shape[0], image.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen).to(dev)

    x, y = image, label
    if cfg.flip:
        for dim, m in ((-1, rand(b) < 0.5), (-2, rand(b) < 0.5)):
            x = torch.where(m[:, None, None, None], x.flip(dim), x)
            if y is not None:
                y = torch.where(m[:, None, None], y.flip(dim), y)
    if cfg.rotate90 and x.shape[-1] == x.shape[-2]:
        k = torch.randint(0, 4, (b,), generator=gen).to(dev)
        xs, ys = x.clone(), None if y is None else y.clone()
        for r in (1, 2, 3):
            sel = k == r
            if sel.any():
                xs[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
                if ys is not None:
                    ys[sel] = torch.rot90(y[sel], r, dims=(-2, -1))
        x, y = xs, ys
    if cfg.affine_prob > 0:
        sel = rand(b) < cfg.affine_prob
        ang = (rand(b) * 2 - 1) * np.deg2rad(cfg.affine_degrees)
        sc = 1 + (rand(b) * 2 - 1) * cfg.affine_scale
        if sel.any():
            ang = torch.where(sel, ang, torch.zeros_like(ang))
            sc = torch.where(sel, sc, torch.ones_like(sc))
            cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
            zeros = torch.zeros_like(cos)
            theta = torch.stack(
                [torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1
            )
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
            if y is not None:
                y = (
                    F.grid_sample(
                        y[:, None].float(),
                        grid,
                        mode="nearest",
                        padding_mode="zeros",
                        align_corners=False,
                    )[:, 0]
                    .round()
                    .long()
                )
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
    return x.contiguous(), None if y is None else y.contiguous()
