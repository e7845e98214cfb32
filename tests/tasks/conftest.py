"""Tiny synthetic scans and small task configs shared by the task tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from napari_mtssl.models import UNet2D, build_unet
from napari_mtssl.tasks import AuxTask, SliceContext, build_task

# Small widths so every task runs in milliseconds on the CPU.
SMALL: dict[str, dict[str, Any]] = {
    "moco": {"crop_size": 32, "proj_hidden": 32, "proj_out": 16, "pred_hidden": 32},
    "vicreg": {"crop_size": 32, "expander": 32},
    "rubik": {"crop_size": 64, "hidden": 32, "patch_dim": 8},
    "simsiam": {"proj_dim": 32, "pred_hidden": 16},
}
NUM_CLASSES = 3


def make_volume(seed: int = 0, z: int = 8, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A (z, size, size) float32 volume with a 3-class label map: a square and a disk whose
    positions drift with z, plus noise, so neighbouring slices differ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((z, size, size), dtype=np.int64)
    for k in range(z):
        labels[k, 4 + k % 4 : 14 + k % 4, 6:16] = 1
        labels[k][(yy - 22) ** 2 + (xx - 20 - k % 3) ** 2 <= 25] = 2
    vol = labels.astype(np.float32) + 0.3 * rng.normal(size=labels.shape).astype(np.float32)
    vol += np.linspace(-1, 1, z, dtype=np.float32)[:, None, None]
    return vol, labels


def make_ctx(z: int = 3, labelled: bool = True, spacing: float = 10.0) -> SliceContext:
    vol, labels = make_volume()
    return SliceContext(
        volume=vol,
        z=z,
        labels=labels if labelled else None,
        labelled=np.ones(vol.shape[0], dtype=bool) if labelled else None,
        num_classes=NUM_CLASSES,
        spacing=(spacing, 1.0, 1.0),
    )


def make_task(name: str, seed: int = 0, **overrides: Any) -> tuple[UNet2D, AuxTask]:
    torch.manual_seed(seed)
    net = build_unet(out_channels=NUM_CLASSES, width=4)
    task = build_task(name, net, {**SMALL.get(name, {}), **overrides}, num_classes=NUM_CLASSES)
    return net, task


def make_batch(task: AuxTask, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """n samples from different slices, stacked as the trainer does."""
    rng = np.random.default_rng(seed)
    samples = [task.make_sample(make_ctx(z=1 + i % 6), rng) for i in range(n)]
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}
