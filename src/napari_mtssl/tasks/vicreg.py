"""``vicreg``: variance-invariance-covariance regularisation (Bardes, Ponce & LeCun 2022).

Two random crops of the same slice go through the shared encoder, global average pooling and an
expander (1024-1024-1024). Loss = 25 * invariance (MSE between the two embeddings) + 25 * variance
(hinge keeping each dimension's std >= 1) + 1 * covariance (off-diagonal covariance squared).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from napari_mtssl.models.unet import UNet2D
from napari_mtssl.tasks.augment import crop_resize, intensity_jitter, random_box, random_flip
from napari_mtssl.tasks.base import AuxTask, SliceContext, TaskConfig, config_error, gap, mlp
from napari_mtssl.tasks.moco import check_crop

__all__ = ["VICRegTask", "VICRegConfig", "vicreg_loss"]


@dataclass
class VICRegConfig(TaskConfig):
    crop_size: int = 96  # not published
    scale_min: float = 0.4
    scale_max: float = 1.0
    jitter: float = 0.2
    noise_std: float = 0.05
    flip: bool = True
    expander: int = 1024  # width of the three expander layers (paper: 1024-1024-1024)
    w_invariance: float = 25.0
    w_variance: float = 25.0
    w_covariance: float = 1.0

    def __post_init__(self) -> None:
        check_crop("VICRegConfig", self.crop_size)
        self._unit("scale_min", "scale_max")
        if not 0 < self.scale_min <= self.scale_max:
            raise config_error("VICRegConfig", "scale_min", "must be > 0 and <= scale_max")
        self._positive("expander")
        for n in ("w_invariance", "w_variance", "w_covariance", "jitter", "noise_std"):
            if getattr(self, n) < 0:
                raise config_error("VICRegConfig", n, f"must be >= 0; got {getattr(self, n)}")


def _off_diagonal(m: Tensor) -> Tensor:
    d = m.shape[0]
    return m[~torch.eye(d, dtype=torch.bool, device=m.device)]


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    w_inv: float = 25.0,
    w_var: float = 25.0,
    w_cov: float = 1.0,
    eps: float = 1e-4,
) -> dict[str, Tensor]:
    """VICReg on embeddings (B, D). Returns ``loss`` and the unweighted terms.

    Computed in float32: the covariance sums overflow half precision under autocast.
    """
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = z1.float(), z2.float()
        inv = F.mse_loss(z1, z2)
        z1 = z1 - z1.mean(dim=0)
        z2 = z2 - z2.mean(dim=0)
        std1 = torch.sqrt(z1.var(dim=0) + eps)
        std2 = torch.sqrt(z2.var(dim=0) + eps)
        var = 0.5 * (F.relu(1.0 - std1).mean() + F.relu(1.0 - std2).mean())
        n, d = z1.shape
        cov1 = (z1.t() @ z1) / (n - 1)
        cov2 = (z2.t() @ z2) / (n - 1)
        cov = _off_diagonal(cov1).pow(2).sum() / d + _off_diagonal(cov2).pow(2).sum() / d
        loss = w_inv * inv + w_var * var + w_cov * cov
        return {"loss": loss, "invariance": inv, "variance": var, "covariance": cov}


class VICRegTask(AuxTask):
    """VICReg on two crops of one slice through the shared encoder."""

    name: ClassVar[str] = "vicreg"
    summary: ClassVar[str] = (
        "Learns to describe two views of the same image alike while keeping descriptions varied"
    )
    paper: ClassVar[str] = (
        "Bardes, Ponce & LeCun 2022, VICReg: Variance-Invariance-Covariance Regularization for "
        "Self-Supervised Learning (ICLR)"
    )
    level: ClassVar[str] = "encoder"
    Config: ClassVar[type] = VICRegConfig

    def __init__(self, net: UNet2D, cfg: VICRegConfig | None = None, num_classes: int = 2):
        super().__init__(net, cfg, num_classes)
        w = self.cfg.expander
        self.expander = mlp([net.encoder_channels[-1], w, w, w], bn=True)

    def make_sample(self, ctx: SliceContext, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``view1``, ``view2``: (1, crop_size, crop_size) float32, independent random crops."""
        cfg = self.cfg
        img = ctx.volume[ctx.z]
        out = {}
        for key in ("view1", "view2"):
            v = crop_resize(
                img, random_box(img.shape, rng, (cfg.scale_min, cfg.scale_max)), cfg.crop_size
            )
            v = intensity_jitter(v, rng, cfg.jitter, cfg.noise_std)
            if cfg.flip:
                (v,) = random_flip(rng, v)
            out[key] = v[None].astype(np.float32)
        return out

    def forward(self, net: UNet2D, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x1, x2 = batch["view1"], batch["view2"]
        self._check_batch(x1.shape[0])
        h1, h2 = gap(net.encode(torch.cat([x1, x2]))[-1]).chunk(2)
        parts = vicreg_loss(
            self.expander(h1),
            self.expander(h2),
            self.cfg.w_invariance,
            self.cfg.w_variance,
            self.cfg.w_covariance,
        )
        return {k: (v if k == "loss" else v.detach()) for k, v in parts.items()}
