"""``slices``: predict the neighbouring slices j - t and j + t from slice j (Dong et al.).

Two 1x1 heads on the whole U-Net regress the two slices; MSE. Dong et al. found t = 5 best for
~1-3 mm slices; thick-slice scans (>= 5 mm, e.g. ACDC cine MRI) and short stacks use t = 1.
Indices past the volume's ends are clipped to the first / last slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from napari_mtssl.models.unet import UNet2D
from napari_mtssl.task_needs import MIN_SLICES
from napari_mtssl.tasks.augment import intensity_jitter, random_flip
from napari_mtssl.tasks.base import AuxTask, SliceContext, TaskConfig, config_error

__all__ = ["SlicesTask", "SlicesConfig", "auto_slice_step", "MIN_SLICES"]


def auto_slice_step(spacing_mm: float, n_slices: int) -> int:
    """Slice step t from the slice spacing and count (not published beyond the two anchors).

    t = 5 for slices of 3 mm or thinner (Dong et al.'s best), t = 1 from 5 mm on, linear in
    between; then capped at a quarter of the stack so that short stacks (e.g. 8-10 cardiac MRI
    slices) use t = 1 or 2 instead of mostly clipped targets.
    """
    s = float(spacing_mm) if spacing_mm and np.isfinite(spacing_mm) and spacing_mm > 0 else 1.0
    if s >= 5.0:
        t = 1
    elif s <= 3.0:
        t = 5
    else:
        t = int(round(5.0 - 2.0 * (s - 3.0)))
    cap = max(1, (int(n_slices) - 1) // 4)
    return int(max(1, min(t, cap)))


@dataclass
class SlicesConfig(TaskConfig):
    t: int | None = None  # slice step; None: automatic from spacing and slice count
    flip: bool = True  # flip input and targets together
    jitter: float = 0.0  # intensity jitter, applied the same to input and targets

    def __post_init__(self) -> None:
        if self.t is not None and (not isinstance(self.t, int) or self.t < 1):
            raise config_error("SlicesConfig", "t", f"must be None or an int >= 1; got {self.t!r}")
        if self.jitter < 0:
            raise config_error("SlicesConfig", "jitter", f"must be >= 0; got {self.jitter}")


class NeighbourSlices:
    """What a task that pairs a slice with its neighbours shares: it needs scans of
    ``MIN_SLICES`` or more, and takes its neighbours ``t`` slices away (``cfg.t``, else from the
    slice spacing: :func:`auto_slice_step`)."""

    cfg: Any

    def slice_ok(self, ctx: SliceContext) -> bool:
        return ctx.n_slices >= MIN_SLICES

    def step_for(self, ctx: SliceContext) -> int:
        if self.cfg.t is not None:
            return int(self.cfg.t)
        return auto_slice_step(ctx.spacing[0], ctx.n_slices)


class SlicesTask(NeighbourSlices, AuxTask):
    """Adjacent-slice prediction with two 1x1 heads on the shared U-Net."""

    name: ClassVar[str] = "slices"
    summary: ClassVar[str] = "Learns to predict the neighbouring slices above and below each slice"
    paper: ClassVar[str] = (
        "Dong et al., Self-Supervised Multi-Task Representation Learning for Sequential "
        "Medical Images (adjacent-slice prediction)"
    )
    level: ClassVar[str] = "dense"
    Config: ClassVar[type] = SlicesConfig

    def __init__(self, net: UNet2D, cfg: SlicesConfig | None = None, num_classes: int = 2):
        super().__init__(net, cfg, num_classes)
        self.head_prev = nn.Conv2d(net.decoder_channels, 1, kernel_size=1)
        self.head_next = nn.Conv2d(net.decoder_channels, 1, kernel_size=1)

    def make_sample(self, ctx: SliceContext, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``image`` (1, H, W) slice j; ``target`` (2, H, W): slices j - t and j + t (clipped)."""
        if not self.slice_ok(ctx):
            raise ValueError(
                f"slices: a scan of {ctx.n_slices} slices has no neighbours to predict"
            )
        t = self.step_for(ctx)
        zmax = ctx.n_slices - 1
        prev, nxt = max(ctx.z - t, 0), min(ctx.z + t, zmax)
        stack = np.stack([ctx.volume[ctx.z], ctx.volume[prev], ctx.volume[nxt]]).astype(np.float32)
        if self.cfg.jitter > 0:
            stack = intensity_jitter(stack, rng, self.cfg.jitter)
        if self.cfg.flip:
            (stack,) = random_flip(rng, stack)
        return {"image": stack[:1].copy(), "target": stack[1:].copy()}

    def forward(self, net: UNet2D, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        dec = net.decode(net.encode(batch["image"]))
        target = batch["target"].to(dec.dtype)
        l_prev = F.mse_loss(self.head_prev(dec), target[:, 0:1])
        l_next = F.mse_loss(self.head_next(dec), target[:, 1:2])
        loss = l_prev + l_next
        return {"loss": loss, "mse_prev": l_prev.detach(), "mse_next": l_next.detach()}
