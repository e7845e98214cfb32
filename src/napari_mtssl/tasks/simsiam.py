"""``simsiam``: two slices of the same scan as a positive pair (Dong et al., with SimSiam).

Slice j is paired with a slice k, ``t + 1 <= |k - j| <= 2t``, inside the volume (t as in
``slices``). Both go through the shared encoder, global average pooling, a projector and a
predictor; the loss is the negative cosine similarity of each prediction with the other branch's
projection under a stop-gradient, both directions summed (Chen & He 2021).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from napari_mtssl.models.unet import UNet2D
from napari_mtssl.tasks.augment import intensity_jitter, random_flip
from napari_mtssl.tasks.base import AuxTask, SliceContext, TaskConfig, config_error, gap, mlp
from napari_mtssl.tasks.slices import NeighbourSlices

__all__ = ["SimSiamTask", "SimSiamConfig", "pair_candidates", "neg_cosine"]


@dataclass
class SimSiamConfig(TaskConfig):
    t: int | None = None  # slice step; None: automatic as in `slices`
    proj_dim: int = 2048  # projector hidden and output width (SimSiam paper; not published here)
    pred_hidden: int = 512  # predictor bottleneck (SimSiam paper)
    jitter: float = 0.1  # independent intensity jitter per view
    flip: bool = True  # independent flips per view

    def __post_init__(self) -> None:
        if self.t is not None and (not isinstance(self.t, int) or self.t < 1):
            raise config_error("SimSiamConfig", "t", f"must be None or an int >= 1; got {self.t!r}")
        self._positive("proj_dim", "pred_hidden")
        if self.jitter < 0:
            raise config_error("SimSiamConfig", "jitter", f"must be >= 0; got {self.jitter}")


def pair_candidates(j: int, t: int, n_slices: int) -> np.ndarray:
    """Slices k with ``j - 2t <= k <= j - t - 1`` or ``j + t + 1 <= k <= j + 2t`` inside the volume.

    When clipping leaves none (short stacks), the slice(s) farthest from j stand in, so every
    slice of a scan with 2+ slices has a partner.
    """
    k = np.arange(n_slices)
    d = np.abs(k - j)
    cand = k[(d >= t + 1) & (d <= 2 * t)]
    if cand.size == 0:
        cand = k[d == d.max()] if n_slices > 1 else k
    return cand


def neg_cosine(p: Tensor, z: Tensor) -> Tensor:
    """-cos(p, stopgrad(z)), batch mean."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


class SimSiamTask(NeighbourSlices, AuxTask):
    """Same-scan slice pairs through a Siamese encoder with a stop-gradient."""

    name: ClassVar[str] = "simsiam"
    summary: ClassVar[str] = (
        "Learns that nearby slices of the same scan show the same anatomy (needs 3D scans)"
    )
    paper: ClassVar[str] = (
        "Dong et al., Self-Supervised Multi-Task Representation Learning for Sequential Medical "
        "Images; Chen & He 2021, Exploring Simple Siamese Representation Learning (CVPR)"
    )
    level: ClassVar[str] = "encoder"
    Config: ClassVar[type] = SimSiamConfig

    def __init__(self, net: UNet2D, cfg: SimSiamConfig | None = None, num_classes: int = 2):
        super().__init__(net, cfg, num_classes)
        c, d = net.encoder_channels[-1], self.cfg.proj_dim
        self.projector = mlp([c, d, d, d], bn=True, last_bn=True)
        self.predictor = mlp([d, self.cfg.pred_hidden, d], bn=True)

    def _view(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.cfg.jitter > 0:
            img = intensity_jitter(img, rng, self.cfg.jitter)
        if self.cfg.flip:
            (img,) = random_flip(rng, img)
        return img.astype(np.float32, copy=False)

    def make_sample(self, ctx: SliceContext, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``view1`` slice j, ``view2`` slice k, each (1, H, W) float32."""
        if not self.slice_ok(ctx):
            raise ValueError(f"simsiam: a scan of {ctx.n_slices} slices has no slice pairs")
        cand = pair_candidates(ctx.z, self.step_for(ctx), ctx.n_slices)
        k = int(cand[rng.integers(0, cand.size)])
        return {"view1": self._view(ctx.image(), rng), "view2": self._view(ctx.image(k), rng)}

    def forward(self, net: UNet2D, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x1, x2 = batch["view1"], batch["view2"]
        self._check_batch(x1.shape[0])
        # One encoder pass over both views (same result with instance norm, half the calls).
        h1, h2 = gap(net.encode(torch.cat([x1, x2]))[-1]).chunk(2)
        z1, z2 = self.projector(h1), self.projector(h2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = neg_cosine(p1, z2) + neg_cosine(p2, z1)
        # Collapse monitor: per-dimension std of the normalised outputs (-> 0 when collapsed).
        std = F.normalize(z1.detach(), dim=1).std(dim=0).mean()
        return {"loss": loss, "neg_cos": loss.detach(), "z_std": std}
