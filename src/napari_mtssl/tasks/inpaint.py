"""``inpaint``: reconstruct a square cut out of the slice (author's later code; context encoders).

A square with sides a quarter (``frac``) of the slice's is filled with ``fill``; the whole U-Net
with a 1x1 head reconstructs the slice, and the loss is the MSE on the masked square only, so the
network cannot score by copying the visible pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import Tensor, nn

from napari_mtssl.models.unet import UNet2D
from napari_mtssl.tasks.augment import intensity_jitter, random_flip
from napari_mtssl.tasks.base import AuxTask, SliceContext, TaskConfig, config_error

__all__ = ["InpaintTask", "InpaintConfig", "masked_mse"]

FILLS = ("zero", "noise", "mean")


@dataclass
class InpaintConfig(TaskConfig):
    frac: float = 0.25  # side of the square as a fraction of the slice side (author: a quarter)
    fill: str = "zero"  # what the square holds: "zero" (the mean of z-scored data), "noise", "mean"
    flip: bool = True
    jitter: float = 0.0  # intensity jitter of the whole slice (input and target alike)

    def __post_init__(self) -> None:
        if not 0.0 < self.frac < 1.0:
            raise config_error("InpaintConfig", "frac", f"must be in (0, 1); got {self.frac}")
        if self.fill not in FILLS:
            raise config_error("InpaintConfig", "fill", f"one of {FILLS}; got {self.fill!r}")
        if self.jitter < 0:
            raise config_error("InpaintConfig", "jitter", f"must be >= 0; got {self.jitter}")


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over pixels where ``mask`` is 1; 0 (with graph) when the mask is empty."""
    pred, target, mask = pred.float(), target.float(), mask.float()  # float32 sums
    sq = (pred - target) ** 2 * mask
    return sq.sum() / mask.sum().clamp(min=1.0)


class InpaintTask(AuxTask):
    """Masked-region reconstruction through the whole U-Net."""

    name: ClassVar[str] = "inpaint"
    summary: ClassVar[str] = "Learns to fill in a hidden square of each image from its surroundings"
    paper: ClassVar[str] = (
        "Pathak et al. 2016, Context Encoders (CVPR); masked-square setting from Hu & Qin's code"
    )
    level: ClassVar[str] = "dense"
    Config: ClassVar[type] = InpaintConfig

    def __init__(self, net: UNet2D, cfg: InpaintConfig | None = None, num_classes: int = 2):
        super().__init__(net, cfg, num_classes)
        self.head = nn.Conv2d(net.decoder_channels, 1, kernel_size=1)

    def make_sample(self, ctx: SliceContext, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``image`` (1, H, W) with the square filled, ``target`` (1, H, W) the original slice,
        ``mask`` (1, H, W) float32, 1 inside the square."""
        target = ctx.image()
        if self.cfg.jitter > 0:
            target = intensity_jitter(target, rng, self.cfg.jitter)
        if self.cfg.flip:
            (target,) = random_flip(rng, target)
        _, h, w = target.shape
        sh, sw = max(1, int(round(h * self.cfg.frac))), max(1, int(round(w * self.cfg.frac)))
        y0 = int(rng.integers(0, h - sh + 1))
        x0 = int(rng.integers(0, w - sw + 1))
        mask = np.zeros((1, h, w), dtype=np.float32)
        mask[:, y0 : y0 + sh, x0 : x0 + sw] = 1.0
        image = target.copy()
        if self.cfg.fill == "zero":
            image[:, y0 : y0 + sh, x0 : x0 + sw] = 0.0
        elif self.cfg.fill == "mean":
            image[:, y0 : y0 + sh, x0 : x0 + sw] = float(target.mean())
        else:
            image[:, y0 : y0 + sh, x0 : x0 + sw] = rng.normal(0.0, 1.0, size=(1, sh, sw))
        return {"image": image.astype(np.float32), "target": target, "mask": mask}

    def forward(self, net: UNet2D, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        pred = self.head(net.decode(net.encode(batch["image"])))
        loss = masked_mse(pred, batch["target"].to(pred.dtype), batch["mask"].to(pred.dtype))
        return {"loss": loss, "mse": loss.detach()}
