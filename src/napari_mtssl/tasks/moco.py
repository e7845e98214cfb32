"""``moco``: instance discrimination with a momentum encoder (He et al. 2020; Chen et al. 2021).

Two crops of the same slice with nearby centres are a positive pair; the other slices in the
batch (or a queue of past keys) are the negatives. Query branch: shared encoder -> global average
pool -> projector (hidden 1024, out 256, BN) -> predictor. Key branch: momentum copies of the
encoder and projector (momentum 0.99), no gradient. Loss: symmetric InfoNCE on L2-normalised
vectors. The author's code uses in-batch negatives and temperature 1.0 (the default); MoCo v2
uses a queue and 0.2 (``queue_size=4096, temperature=0.2``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from napari_mtssl.models.unet import UNet2D
from napari_mtssl.tasks.augment import (
    crop_resize,
    intensity_jitter,
    random_box,
    random_flip,
    shifted_box,
)
from napari_mtssl.tasks.base import AuxTask, SliceContext, TaskConfig, config_error, gap, mlp

__all__ = ["MoCoTask", "MoCoConfig", "info_nce", "check_crop"]


def check_crop(cls_name: str, crop: int, multiple: int = 16, least: int = 32) -> None:
    """Crops go through the encoder: a multiple of 16, and >= 32 so that the bottleneck has more
    than one pixel (instance norm cannot normalise a single value)."""
    if not isinstance(crop, int) or crop % multiple or crop < least:
        raise config_error(
            cls_name, "crop_size", f"must be a multiple of {multiple} and >= {least}; got {crop!r}"
        )


@dataclass
class MoCoConfig(TaskConfig):
    crop_size: int = 96  # crops are resized to this (pixels); not published
    scale_min: float = 0.4  # crop side as a fraction of the slice side, drawn in [min, max]
    scale_max: float = 1.0
    max_shift: float = 0.1  # the second crop's centre moves by at most this x the slice side
    jitter: float = 0.2  # intensity jitter strength per view
    noise_std: float = 0.05
    flip: bool = True
    proj_hidden: int = 1024
    proj_out: int = 256
    pred_hidden: int = 1024
    momentum: float = 0.99
    temperature: float = 1.0  # author: 1.0; MoCo v2: 0.2
    queue_size: int = 0  # 0: in-batch negatives (author); > 0: MoCo v2 queue of past keys

    def __post_init__(self) -> None:
        check_crop("MoCoConfig", self.crop_size)
        self._unit("scale_min", "scale_max", "max_shift", "momentum")
        if not 0 < self.scale_min <= self.scale_max:
            raise config_error("MoCoConfig", "scale_min", "must be > 0 and <= scale_max")
        self._positive("proj_hidden", "proj_out", "pred_hidden", "temperature")
        if self.jitter < 0 or self.noise_std < 0:
            raise config_error("MoCoConfig", "jitter", "jitter and noise_std must be >= 0")
        if not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise config_error(
                "MoCoConfig", "queue_size", f"must be an int >= 0; got {self.queue_size!r}"
            )


def info_nce(q: Tensor, k: Tensor, temperature: float, queue: Tensor | None = None) -> Tensor:
    """InfoNCE of queries ``q`` (B, D) against keys ``k`` (B, D); row i's positive is ``k[i]``.

    Without ``queue`` the negatives are the other keys of the batch; with ``queue`` (K, D) they
    are the queue's keys (MoCo v2). Inputs are L2-normalised here; ``k`` gets no gradient.
    """
    labels = torch.arange(q.shape[0], device=q.device)
    # float32 even under autocast: logits / 0.2 in half precision lose digits.
    with torch.autocast(q.device.type, enabled=False):
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.detach().float(), dim=1)
        if queue is None:
            logits = q @ k.t()
        else:
            pos = (q * k).sum(dim=1, keepdim=True)
            logits = torch.cat([pos, q @ F.normalize(queue.float(), dim=1).t()], dim=1)
            labels = torch.zeros_like(labels)
        return F.cross_entropy(logits / temperature, labels)


class MoCoTask(AuxTask):
    """Momentum-contrast instance discrimination on crops of one slice."""

    name: ClassVar[str] = "moco"
    summary: ClassVar[str] = (
        "Learns to recognise two views of the same image among views of other images"
    )
    paper: ClassVar[str] = (
        "He et al. 2020, Momentum Contrast (CVPR); Chen, Xie & He 2021, MoCo v3 (ICCV); "
        "settings from Hu & Qin 2024, arXiv:2402.07119"
    )
    level: ClassVar[str] = "encoder"
    Config: ClassVar[type] = MoCoConfig

    def __init__(self, net: UNet2D, cfg: MoCoConfig | None = None, num_classes: int = 2):
        super().__init__(net, cfg, num_classes)
        cfg = self.cfg
        c = net.encoder_channels[-1]
        self.projector = mlp([c, cfg.proj_hidden, cfg.proj_out], bn=True, last_bn=True)
        self.predictor = mlp([cfg.proj_out, cfg.pred_hidden, cfg.proj_out], bn=True)
        # Key branch: momentum copies, updated in after_step, never by the optimiser.
        self.key_encoder = copy.deepcopy(net.encoder)
        self.key_projector = copy.deepcopy(self.projector)
        for p in [*self.key_encoder.parameters(), *self.key_projector.parameters()]:
            p.requires_grad_(False)
        if cfg.queue_size > 0:
            self.register_buffer(
                "queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_out), dim=1)
            )
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: Tensor | None = None

    def make_sample(self, ctx: SliceContext, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``view1``, ``view2``: (1, crop_size, crop_size) float32 crops with nearby centres."""
        cfg = self.cfg
        img = ctx.volume[ctx.z]
        scale = (cfg.scale_min, cfg.scale_max)
        b1 = random_box(img.shape, rng, scale)
        b2 = shifted_box(b1, img.shape, rng, cfg.max_shift, scale)
        views = {}
        for key, box in (("view1", b1), ("view2", b2)):
            v = crop_resize(img, box, cfg.crop_size)
            v = intensity_jitter(v, rng, cfg.jitter, cfg.noise_std)
            if cfg.flip:
                (v,) = random_flip(rng, v)
            views[key] = v[None].astype(np.float32)
        return views

    def _query(self, net: UNet2D, x: Tensor) -> Tensor:
        return self.predictor(self.projector(gap(net.encode(x)[-1])))

    @torch.no_grad()
    def _key(self, x: Tensor) -> Tensor:
        for block in self.key_encoder:
            x = block(x)
        return self.key_projector(gap(x))

    def forward(self, net: UNet2D, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x1, x2 = batch["view1"], batch["view2"]
        n = x1.shape[0]
        self._check_batch(n)
        h1, h2 = gap(net.encode(torch.cat([x1, x2]))[-1]).chunk(2)
        q1 = self.predictor(self.projector(h1))
        q2 = self.predictor(self.projector(h2))
        k1, k2 = self._key(x1), self._key(x2)
        queue = self.queue.clone() if self.cfg.queue_size > 0 else None
        t = self.cfg.temperature
        loss = 0.5 * (info_nce(q1, k2, t, queue) + info_nce(q2, k1, t, queue))
        if self.training and queue is not None:
            self._pending = F.normalize(torch.cat([k1, k2]), dim=1).detach()
        with torch.no_grad():
            acc = (F.normalize(q1, dim=1) @ F.normalize(k2, dim=1).t()).argmax(1)
            acc = (acc == torch.arange(n, device=acc.device)).float().mean()
        return {"loss": loss, "info_nce": loss.detach(), "pair_acc": acc}

    @torch.no_grad()
    def after_step(self, net: UNet2D) -> None:
        """Momentum update of the key branch, then enqueue the last keys (queue mode)."""
        m = self.cfg.momentum
        for pk, pq in zip(self.key_encoder.parameters(), net.encoder.parameters()):
            pk.mul_(m).add_(pq.detach().to(pk.dtype), alpha=1.0 - m)
        for pk, pq in zip(self.key_projector.parameters(), self.projector.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)
        if self._pending is not None and self.cfg.queue_size > 0:
            keys = self._pending[: self.cfg.queue_size]
            k, ptr = keys.shape[0], int(self.queue_ptr)
            idx = (torch.arange(k, device=keys.device) + ptr) % self.cfg.queue_size
            self.queue[idx] = keys.to(self.queue.dtype)
            self.queue_ptr.fill_((ptr + k) % self.cfg.queue_size)
        self._pending = None
