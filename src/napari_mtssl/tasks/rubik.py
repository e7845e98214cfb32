"""``rubik``: 2D Rubik's cube, i.e. solve a shuffled 2x2 grid (Zhuang et al. 2019; Zhu et al. 2020).

A crop of the slice is cut into a 2x2 grid of patches, shuffled with one of the 24 permutations,
and the network predicts which permutation it was (24-way cross-entropy). Each patch goes through
the shared encoder (Siamese), global average pooling and a Dense layer of 64; the four codes are
concatenated and an MLP 1024-1024-24 classifies (author). Optional extra heads (author; off by
default): which patches were flipped, and which were masked out.

Patch order is reading order: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right. Under
permutation ``p``, position ``i`` of the shuffled grid holds original patch ``PERMS[p][i]``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_mtssl.models.unet import UNet2D
from napari_mtssl.tasks.augment import crop_resize, intensity_jitter, random_box, random_flip
from napari_mtssl.tasks.base import AuxTask, SliceContext, TaskConfig, config_error, gap, mlp
from napari_mtssl.tasks.moco import check_crop

__all__ = [
    "RubikTask",
    "RubikConfig",
    "PERMS",
    "split_grid",
    "join_grid",
    "shuffle_patches",
    "unshuffle_patches",
]

PERMS: tuple[tuple[int, ...], ...] = tuple(itertools.permutations(range(4)))  # 24


@dataclass
class RubikConfig(TaskConfig):
    crop_size: int = 128  # crop side (pixels) cut into 2x2 patches; multiple of 32; not published
    scale_min: float = 0.5  # crop side as a fraction of the slice side, drawn in [min, 1]
    patch_dim: int = 64  # Dense layer per patch (author)
    hidden: int = 1024  # MLP hidden width (author: 1024-1024-24)
    jitter: float = 0.1
    flip: bool = True  # flip the whole crop before cutting (keeps the permutation meaning)
    flip_head: bool = False  # extra head: which patches were flipped left-right (author)
    mask_head: bool = False  # extra head: which patches were blanked (author)
    mask_prob: float = 0.25

    def __post_init__(self) -> None:
        check_crop("RubikConfig", self.crop_size, multiple=32, least=64)
        self._unit("scale_min", "mask_prob")
        if self.scale_min <= 0:
            raise config_error("RubikConfig", "scale_min", "must be > 0")
        self._positive("patch_dim", "hidden")
        if self.jitter < 0:
            raise config_error("RubikConfig", "jitter", f"must be >= 0; got {self.jitter}")


def split_grid(crop: np.ndarray) -> np.ndarray:
    """``(..., 2P, 2P)`` -> ``(4, ..., P, P)`` in reading order."""
    h, w = crop.shape[-2:]
    ph, pw = h // 2, w // 2
    return np.stack(
        [crop[..., r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] for r in (0, 1) for c in (0, 1)]
    )


def join_grid(patches: np.ndarray) -> np.ndarray:
    """Inverse of :func:`split_grid`."""
    top = np.concatenate([patches[0], patches[1]], axis=-1)
    bottom = np.concatenate([patches[2], patches[3]], axis=-1)
    return np.concatenate([top, bottom], axis=-2)


def shuffle_patches(patches: np.ndarray, perm: int) -> np.ndarray:
    """Position ``i`` of the result holds ``patches[PERMS[perm][i]]``."""
    return patches[list(PERMS[perm])]


def unshuffle_patches(shuffled: np.ndarray, perm: int) -> np.ndarray:
    """Undo :func:`shuffle_patches` given the permutation index (the task's target)."""
    out = np.empty_like(shuffled)
    out[list(PERMS[perm])] = shuffled
    return out


class RubikTask(AuxTask):
    """Permutation classification of a shuffled 2x2 grid through a Siamese encoder."""

    name: ClassVar[str] = "rubik"
    summary: ClassVar[str] = "Learns to put the four shuffled quarters of an image back in order"
    paper: ClassVar[str] = (
        "Zhuang et al. 2019, Self-supervised Feature Learning for 3D Medical Images by Playing a "
        "Rubik's Cube (MICCAI); 2D setting from Hu & Qin 2024, arXiv:2402.07119"
    )
    level: ClassVar[str] = "encoder"
    Config: ClassVar[type] = RubikConfig

    def __init__(self, net: UNet2D, cfg: RubikConfig | None = None, num_classes: int = 2):
        super().__init__(net, cfg, num_classes)
        cfg = self.cfg
        self.patch_fc = nn.Sequential(
            nn.Linear(net.encoder_channels[-1], cfg.patch_dim), nn.ReLU(inplace=True)
        )
        self.trunk = nn.Sequential(
            mlp([4 * cfg.patch_dim, cfg.hidden, cfg.hidden]), nn.ReLU(inplace=True)
        )
        self.order_head = nn.Linear(cfg.hidden, len(PERMS))
        self.flip_out = nn.Linear(cfg.hidden, 4) if cfg.flip_head else None
        self.mask_out = nn.Linear(cfg.hidden, 4) if cfg.mask_head else None

    def make_sample(self, ctx: SliceContext, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``patches`` (4, 1, P, P) float32 shuffled; ``target`` () int64 permutation index;
        with the extra heads also ``flipped`` / ``masked`` (4,) float32 per shuffled position."""
        cfg = self.cfg
        img = ctx.volume[ctx.z]
        crop = crop_resize(img, random_box(img.shape, rng, (cfg.scale_min, 1.0)), cfg.crop_size)
        crop = intensity_jitter(crop, rng, cfg.jitter)
        if cfg.flip:
            (crop,) = random_flip(rng, crop)
        perm = int(rng.integers(0, len(PERMS)))
        patches = shuffle_patches(split_grid(crop[None]), perm).astype(np.float32)
        out: dict[str, np.ndarray] = {"target": np.asarray(perm, dtype=np.int64)}
        if cfg.flip_head:
            flipped = rng.random(4) < 0.5
            for i in np.flatnonzero(flipped):
                patches[i] = patches[i][..., ::-1]
            out["flipped"] = flipped.astype(np.float32)
        if cfg.mask_head:
            masked = rng.random(4) < cfg.mask_prob
            patches[masked] = 0.0
            out["masked"] = masked.astype(np.float32)
        out["patches"] = np.ascontiguousarray(patches)
        return out

    def forward(self, net: UNet2D, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        patches = batch["patches"]  # (B, 4, 1, P, P)
        b = patches.shape[0]
        codes = self.patch_fc(gap(net.encode(patches.flatten(0, 1))[-1]))  # (B*4, patch_dim)
        h = self.trunk(codes.reshape(b, -1))
        logits = self.order_head(h)
        order = F.cross_entropy(logits, batch["target"].long())
        loss = order
        out = {"order_ce": order.detach()}
        with torch.no_grad():
            out["order_acc"] = (logits.argmax(1) == batch["target"]).float().mean()
        if self.flip_out is not None:
            fl = F.binary_cross_entropy_with_logits(self.flip_out(h), batch["flipped"].to(h.dtype))
            loss = loss + fl
            out["flip_bce"] = fl.detach()
        if self.mask_out is not None:
            ms = F.binary_cross_entropy_with_logits(self.mask_out(h), batch["masked"].to(h.dtype))
            loss = loss + ms
            out["mask_bce"] = ms.detach()
        out["loss"] = loss
        return out
