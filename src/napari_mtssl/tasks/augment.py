"""Numpy views and augmentations the self-supervised tasks build their samples with.

Pure numpy/scikit-image, driven only by the ``rng`` they are given, so a sample is a function of
(slice, rng state). Images are ``(H, W)`` float32, already intensity-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.transform import resize

__all__ = ["CropBox", "random_box", "shifted_box", "crop_resize", "intensity_jitter", "random_flip"]


@dataclass(frozen=True)
class CropBox:
    """A square crop: centre (cy, cx) and side in pixels of the source slice."""

    cy: float
    cx: float
    side: int


def random_box(
    shape: tuple[int, int], rng: np.random.Generator, scale: tuple[float, float]
) -> CropBox:
    """A square whose side is a random fraction (``scale``) of the slice's shorter side,
    placed uniformly so that it lies inside the slice."""
    h, w = shape
    short = min(h, w)
    side = int(round(short * rng.uniform(scale[0], scale[1])))
    side = int(np.clip(side, 2, short))
    cy = rng.uniform(side / 2, h - side / 2)
    cx = rng.uniform(side / 2, w - side / 2)
    return CropBox(float(cy), float(cx), side)


def shifted_box(
    box: CropBox,
    shape: tuple[int, int],
    rng: np.random.Generator,
    max_shift: float,
    scale: tuple[float, float],
) -> CropBox:
    """A second crop near ``box``: centre moved by at most ``max_shift`` x the slice side,
    its own random size, kept inside the slice (MoCo's "nearby centres")."""
    h, w = shape
    short = min(h, w)
    side = int(np.clip(round(short * rng.uniform(scale[0], scale[1])), 2, short))
    dy, dx = rng.uniform(-max_shift, max_shift, size=2) * short
    cy = float(np.clip(box.cy + dy, side / 2, h - side / 2))
    cx = float(np.clip(box.cx + dx, side / 2, w - side / 2))
    return CropBox(cy, cx, side)


def crop_resize(image: np.ndarray, box: CropBox, out: int) -> np.ndarray:
    """Cut ``box`` out of ``image`` (H, W) and resize it to ``(out, out)`` bilinearly."""
    y0 = int(round(box.cy - box.side / 2))
    x0 = int(round(box.cx - box.side / 2))
    y0 = int(np.clip(y0, 0, image.shape[0] - box.side))
    x0 = int(np.clip(x0, 0, image.shape[1] - box.side))
    patch = image[y0 : y0 + box.side, x0 : x0 + box.side]
    if patch.shape == (out, out):
        return np.array(patch, dtype=np.float32)
    res = resize(patch, (out, out), order=1, mode="edge", anti_aliasing=False, preserve_range=True)
    return res.astype(np.float32)


def intensity_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    strength: float,
    noise_std: float = 0.0,
) -> np.ndarray:
    """Random contrast (x * a), brightness (+ b) and Gaussian noise, sized for z-scored images:
    ``a`` in [1 - strength, 1 + strength], ``b`` in [-strength, strength]."""
    if strength <= 0 and noise_std <= 0:
        return image.astype(np.float32, copy=False)
    a = rng.uniform(1.0 - strength, 1.0 + strength)
    b = rng.uniform(-strength, strength)
    out = image * a + b
    if noise_std > 0:
        out = out + rng.normal(0.0, noise_std, size=image.shape)
    return out.astype(np.float32)


def random_flip(rng: np.random.Generator, *arrays: np.ndarray, p: float = 0.5) -> list[np.ndarray]:
    """Flip all ``arrays`` (..., H, W) the same way: left-right and up-down, each with ``p``."""
    flip_x = rng.random() < p
    flip_y = rng.random() < p
    out = []
    for a in arrays:
        if flip_x:
            a = a[..., :, ::-1]
        if flip_y:
            a = a[..., ::-1, :]
        out.append(np.ascontiguousarray(a))
    return out
