"""Ensemble distillation (METHOD.md stage 2): the student matches the frozen teachers' mean
class probabilities, soft Dice + T^2 KL, on the labelled and (optionally) unlabelled slices."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from napari_mtssl.training.loop.losses import kd_loss
from napari_mtssl.training.loop.terms.base import StepInputs, Term
from napari_mtssl.training.prediction.inference import class_probs


def freeze(teachers: Sequence[torch.nn.Module], device: torch.device) -> None:
    for t in teachers:
        t.to(device).eval()
        for p in t.parameters():
            p.requires_grad_(False)


def distillation_inputs(f, unlabelled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(slices, student logits) the distillation terms compare on."""
    if unlabelled:
        return f.inputs, f.logits
    return f.inputs[: f.n_labelled], f.logits[: f.n_labelled]


class EnsembleDistillation(Term):
    name = "kd"
    reads_seg = True

    def __init__(
        self,
        teachers: Sequence[torch.nn.Module],
        weight: float = 0.5,
        temperature: float = 1.0,
        unlabelled: bool = True,
        stored: bool = False,
    ):
        super().__init__(weight)
        if not teachers:
            raise ValueError("distillation needs at least one teacher")
        self.teachers = list(teachers)
        self.temperature = float(temperature)
        self.unlabelled = self.reads_unlabelled = bool(unlabelled)
        # stored: the ensemble's probabilities come with the batch (computed once after
        # stage 1, soft_labels.py) instead of every teacher's forward pass on every batch;
        # only at temperature 1, the temperature they were stored at.
        self.reads_soft = bool(stored) and self.temperature == 1.0

    def to(self, device):
        freeze(self.teachers, device)
        return self

    def loss(self, x: StepInputs) -> torch.Tensor:
        f = x.seg()
        inputs, logits = distillation_inputs(f, self.unlabelled)
        t = self.temperature
        if self.reads_soft and f.soft is not None:
            ens = f.soft if self.unlabelled else f.soft[: f.n_labelled]
            ens = ens.float() / ens.float().sum(1, keepdim=True).clamp_min(1e-3)
            return kd_loss(logits, ens, t, ens)["loss"]
        with torch.no_grad():
            tl = [teacher(inputs).float() for teacher in self.teachers]
            ens = torch.stack([class_probs(v) for v in tl]).mean(0)
            ens_t = ens if t == 1.0 else torch.stack([class_probs(v, t) for v in tl]).mean(0)
        return kd_loss(logits, ens, t, ens_t)["loss"]
