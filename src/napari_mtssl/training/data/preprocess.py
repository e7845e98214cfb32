"""Scans at the planned resolution: intensity normalisation, in-plane resampling, and the
on-disk cache of preprocessed volumes.

Every model of a run sees its scans the same way, and prediction repeats it exactly, because the
whole recipe is one JSON-able value, :class:`Preprocessing`, saved in each model's sidecar.

* **Normalisation** per modality (nnU-Net's schemes): ``zscore`` clips each scan to its own
  percentiles and z-scores it (MRI, microscopy, X-ray, anything without physical units);
  ``ct`` clips to the 0.5 / 99.5 percentiles of the labelled foreground of the whole training
  set and z-scores with that foreground's mean and standard deviation (Hounsfield units mean the
  same in every scan, so one dataset-wide transform keeps them comparable); ``window`` maps a
  fixed HU window to [-1, 1] (CT without labelled foreground to learn the statistics from);
  ``none`` leaves intensities as they are.
* **Resampling** is in-plane only: the network is 2D, so the slice axis keeps its spacing.
  ``(h, w)`` at spacing ``(sy, sx)`` becomes ``(round(h * sy / ty), round(w * sx / tx))`` at the
  target spacing ``(ty, tx)``. Images are resampled bilinearly (antialiased when shrinking),
  labels by nearest neighbour; probabilities go back to the scan's own ``(h, w)`` grid with the
  same size ratio, so a prediction lands voxel for voxel on the scan it came from.
* **Cache**: preprocessed volumes are ``.npy`` files in the workspace's ``cache/`` folder, keyed
  by the scan's checksum (or the label content) and the preprocessing, and opened memory-mapped,
  so a study of hundreds of CT scans trains without holding them in memory and a second run on
  the same data skips the work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_mtssl._atomic import file_mode

__all__ = [
    "NormSpec",
    "Preprocessing",
    "SliceMap",
    "normalise",
    "resample_slices",
    "VolumeCache",
    "CACHE_VERSION",
]

CACHE_VERSION = 1
SCHEMES = ("zscore", "ct", "window", "none")


@dataclass(frozen=True)
class NormSpec:
    """One modality's intensity normalisation (see the module docstring)."""

    scheme: str = "zscore"
    clip_low: float = 0.5  # zscore: percentiles of the scan itself
    clip_high: float = 99.5
    lower: float = 0.0  # ct: clip range in the scan's units (HU); window: level - width / 2
    upper: float = 0.0
    mean: float = 0.0  # ct: foreground mean and std after clipping
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"normalisation scheme must be one of {SCHEMES}; got {self.scheme!r}")

    def describe(self) -> str:
        if self.scheme == "zscore":
            return (
                f"per-scan z-score after clipping to its {self.clip_low:g}-{self.clip_high:g} "
                "percentiles"
            )
        if self.scheme == "ct":
            return (
                f"clip to [{self.lower:.0f}, {self.upper:.0f}] (labelled foreground 0.5-99.5 "
                f"percentiles), z-score with its mean {self.mean:.1f} and std {self.std:.1f}"
            )
        if self.scheme == "window":
            return f"window [{self.lower:.0f}, {self.upper:.0f}] mapped to [-1, 1]"
        return "none (intensities as stored)"


@dataclass(frozen=True)
class Preprocessing:
    """Everything between a scan's array and the network's input; saved with each model."""

    spacing: tuple[float, float] | None = None  # target in-plane (y, x) mm; None: keep native
    norms: dict[str, NormSpec] = field(default_factory=lambda: {"default": NormSpec()})

    def norm_for(self, modality: str) -> NormSpec:
        m = str(modality or "unknown").upper()
        for key in (m, "default"):
            if key in self.norms:
                return self.norms[key]
        return next(iter(self.norms.values()))

    def planned_shape(
        self, shape: tuple[int, int], spacing: tuple[float, float]
    ) -> tuple[int, int]:
        """``(h, w)`` at native ``spacing`` -> the in-plane size at the target spacing."""
        if self.spacing is None:
            return int(shape[0]), int(shape[1])
        return tuple(  # type: ignore[return-value]
            max(1, int(round(n * float(s) / float(t))))
            for n, s, t in zip(shape, _valid_spacing(spacing), self.spacing)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "spacing": None if self.spacing is None else [float(s) for s in self.spacing],
            "norms": {k: asdict(v) for k, v in self.norms.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        sp = d.get("spacing")
        if sp is not None:
            sp = tuple(float(s) for s in sp)
            if len(sp) != 2 or min(sp) <= 0 or not all(np.isfinite(sp)):
                raise ValueError(f"preprocessing spacing must be two positive numbers; got {sp}")
        norms = {str(k): NormSpec(**v) for k, v in dict(d.get("norms") or {}).items()}
        return cls(spacing=sp, norms=norms or {"default": NormSpec()})

    def key(self, modality: str) -> str:
        """What a cached volume of this modality depends on (JSON, stable)."""
        return json.dumps(
            {"spacing": self.to_dict()["spacing"], "norm": asdict(self.norm_for(modality))},
            sort_keys=True,
        )


def _valid_spacing(spacing: tuple[float, float]) -> tuple[float, float]:
    """Spacing as read, with missing or nonsensical values (0, NaN) taken as 1 mm."""
    out = []
    for s in spacing:
        s = float(s)
        out.append(s if np.isfinite(s) and s > 0 else 1.0)
    return out[0], out[1]


# -- intensity ---------------------------------------------------------------------------------


def normalise(array: np.ndarray, spec: NormSpec) -> np.ndarray:
    """Normalised float32 copy of ``array`` (any shape). NaN and inf become the scan's minimum."""
    a = np.asarray(array, dtype=np.float32)
    bad = ~np.isfinite(a)
    if bad.any():
        a = a.copy()
        finite = a[~bad]
        a[bad] = float(finite.min()) if finite.size else 0.0
    if spec.scheme == "none":
        return a.copy() if a is array else a
    if spec.scheme == "window":
        width = max(spec.upper - spec.lower, 1e-6)
        return ((np.clip(a, spec.lower, spec.upper) - spec.lower) / width * 2 - 1).astype(
            np.float32
        )
    if spec.scheme == "ct":
        out = np.clip(a, spec.lower, spec.upper)
        out -= np.float32(spec.mean)
        out /= np.float32(spec.std if spec.std > 1e-8 else 1.0)
        return out.astype(np.float32, copy=False)
    # zscore: percentiles from a subsample (exact enough, and 20x faster on a large CT)
    flat = a.reshape(-1)
    sample = flat[:: max(1, flat.size // 2_000_000)]
    lo, hi = np.percentile(sample, [spec.clip_low, spec.clip_high])
    out = np.clip(a, lo, hi)
    mean, std = float(out.mean(dtype=np.float64)), float(out.std(dtype=np.float64))
    out -= np.float32(mean)
    out /= np.float32(std if std > 1e-8 else 1.0)
    return out.astype(np.float32, copy=False)


# -- geometry ----------------------------------------------------------------------------------


def resample_slices(
    vol: np.ndarray, size: tuple[int, int], *, labels: bool = False, chunk: int = 32
) -> np.ndarray:
    """``(z, h, w)`` -> ``(z, H, W)``; bilinear (antialiased when shrinking) or nearest for
    ``labels``. Works through ``chunk`` slices at a time so a large CT never needs a second
    full-size float copy."""
    z, h, w = vol.shape
    H, W = int(size[0]), int(size[1])  # noqa: N806
    if (h, w) == (H, W):
        return np.asarray(vol)
    out = np.empty((z, H, W), dtype=np.uint8 if labels else np.float32)
    for i in range(0, z, chunk):
        part = torch.from_numpy(np.ascontiguousarray(vol[i : i + chunk], dtype=np.float32))[:, None]
        if labels:
            r = F.interpolate(part, size=(H, W), mode="nearest-exact")
            out[i : i + chunk] = r[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
        else:
            r = F.interpolate(
                part, size=(H, W), mode="bilinear", align_corners=False, antialias=H < h or W < w
            )
            out[i : i + chunk] = r[:, 0].numpy()
    return out


@dataclass(frozen=True)
class SliceMap:
    """One scan's in-plane grid ``native`` ``(h, w)`` and its planned grid ``planned``."""

    native: tuple[int, int]
    planned: tuple[int, int]

    @property
    def identity(self) -> bool:
        return tuple(self.native) == tuple(self.planned)

    def to_native(self, maps: torch.Tensor) -> torch.Tensor:
        """``(C, z, H, W)`` maps at the planned grid -> ``(C, z, h, w)`` (bilinear)."""
        if self.identity:
            return maps
        c, z = maps.shape[:2]
        x = maps.float().reshape(c * z, 1, *self.planned)
        x = F.interpolate(x, size=tuple(self.native), mode="bilinear", align_corners=False)
        return x.reshape(c, z, *self.native)


# -- cache -------------------------------------------------------------------------------------


def content_hash(*arrays: np.ndarray) -> str:
    """A short digest of arrays' shapes, types and bytes (label content for the cache key)."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


class VolumeCache:
    """Preprocessed volumes as ``.npy`` files opened memory-mapped (``folder=None``: memory).

    A file is written to a temporary sibling and renamed into place, so a killed process
    never leaves a torn volume behind; a file that does not load is computed again.
    """

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder is not None else None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(*parts: Any) -> str:
        blob = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def get(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        if self.folder is None:
            self.misses += 1
            return compute()
        path = self.folder / f"{key}.npy"
        if path.is_file():
            with contextlib.suppress(OSError, ValueError):
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                self.hits += 1
                return arr
        self.misses += 1
        arr = np.ascontiguousarray(compute())
        try:
            self._write(path, arr)
        except OSError:
            return arr  # a full or read-only disk only costs the cache
        return np.load(path, mmap_mode="r", allow_pickle=False)

    @staticmethod
    def _write(path: Path, arr: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
            os.chmod(tmp, file_mode(path))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
