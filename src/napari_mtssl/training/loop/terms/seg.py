"""Supervised segmentation: Dice + cross-entropy on the labelled slices."""

from __future__ import annotations

import torch

from napari_mtssl.training.loop.losses import SegLoss
from napari_mtssl.training.loop.terms.base import StepInputs, Term


class Segmentation(Term):
    name = "seg"
    reads_seg = True

    def __init__(self, weight: float = 1.0):
        super().__init__(weight)
        self._loss = SegLoss()

    def loss(self, x: StepInputs) -> torch.Tensor:
        f = x.seg()
        return self._loss(f.logits[: f.n_labelled], f.labels)
