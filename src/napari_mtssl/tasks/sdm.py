"""``sdm``: surface distance map regression from the labels that exist (Hu & Qin 2024).

For each foreground class c the target has two channels:

* inner: for pixels of c, the distance to the nearest pixel that is not c;
* outer: for pixels not in c, the distance to the nearest pixel of c;

both in pixels divided by ``scale`` (100, author). An absent class gives all-zero maps.
Loss: L1 over the pixels where the target or the prediction is positive (author); the mean over
an empty set is guarded to zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.ndimage import distance_transform_edt
from torch import Tensor, nn

from napari_mtssl.models.unet import UNet2D
from napari_mtssl.tasks.augment import random_flip
from napari_mtssl.tasks.base import AuxTask, SliceContext, TaskConfig

__all__ = ["SDMTask", "SDMConfig", "surface_distance_maps", "sdm_loss"]


@dataclass
class SDMConfig(TaskConfig):
    scale: float = 100.0  # divide distances (pixels) by this (author)
    flip: bool = True  # random flips of image and target together

    def __post_init__(self) -> None:
        self._positive("scale")


def surface_distance_maps(labels: np.ndarray, num_classes: int, scale: float = 100.0) -> np.ndarray:
    """``(H, W)`` class map -> ``(2 * (num_classes - 1), H, W)`` float32 [inner_1, outer_1, ...].

    A class that fills the whole slice has no boundary: its inner map is zero (its outer map is
    zero anyway), as is everything for a class that is absent.
    """
    h, w = labels.shape
    out = np.zeros((2 * (num_classes - 1), h, w), dtype=np.float32)
    for c in range(1, num_classes):
        mask = labels == c
        if not mask.any() or mask.all():
            continue
        out[2 * (c - 1)] = distance_transform_edt(mask) / scale  # zero outside c
        out[2 * (c - 1) + 1] = distance_transform_edt(~mask) / scale  # zero inside c
    return out


def sdm_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean |pred - target| over pixels where target > 0 or pred > 0; 0 (with graph) if none."""
    pred, target = pred.float(), target.float()  # sums over whole images: keep float32
    sel = (target > 0) | (pred > 0)
    n = sel.sum()
    diff = (pred - target).abs() * sel
    return diff.sum() / n.clamp(min=1)


class SDMTask(AuxTask):
    """Distance maps to the label surfaces, regressed by a 1x1 head on the whole U-Net."""

    name: ClassVar[str] = "sdm"
    summary: ClassVar[str] = (
        "Learns how far each pixel is from the edge of the outlined structures (uses your labels)"
    )
    paper: ClassVar[str] = (
        "Hu & Qin 2024, two-stage multi-task self-supervised learning for medical image "
        "segmentation, arXiv:2402.07119 (surface distance maps)"
    )
    level: ClassVar[str] = "dense"
    needs_labels: ClassVar[bool] = True
    Config: ClassVar[type] = SDMConfig

    def __init__(self, net: UNet2D, cfg: SDMConfig | None = None, num_classes: int = 2):
        super().__init__(net, cfg, num_classes)
        self.head = nn.Conv2d(net.decoder_channels, 2 * (self.num_classes - 1), kernel_size=1)

    def slice_ok(self, ctx: SliceContext) -> bool:
        return ctx.is_labelled()

    def make_sample(self, ctx: SliceContext, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``image`` (1, H, W) float32, ``target`` (2 * (num_classes - 1), H, W) float32."""
        if not ctx.is_labelled():
            raise ValueError(f"sdm: slice {ctx.z} has no labels (check slice_ok first)")
        assert ctx.labels is not None
        image = ctx.image()
        target = surface_distance_maps(ctx.labels[ctx.z], self.num_classes, self.cfg.scale)
        if self.cfg.flip:
            image, target = random_flip(rng, image, target)
        return {"image": image, "target": target}

    def forward(self, net: UNet2D, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        pred = self.head(net.decode(net.encode(batch["image"])))
        loss = sdm_loss(pred, batch["target"].to(pred.dtype))
        return {"loss": loss, "l1": loss.detach()}
