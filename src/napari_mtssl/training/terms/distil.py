"""Ensemble distillation (METHOD.md stage 2): the student matches the frozen teachers' mean
class probabilities, soft Dice + T^2 KL, on the labelled and (optionally) unlabelled slices."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..losses import class_probs, kd_loss
from .base import StepInputs, Term


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
    ):
        super().__init__(weight)
        if not teachers:
            raise ValueError("distillation needs at least one teacher")
        self.teachers = list(teachers)
        self.temperature = float(temperature)
        self.unlabelled = self.reads_unlabelled = bool(unlabelled)

    def to(self, device):
        freeze(self.teachers, device)
        return self

    def loss(self, x: StepInputs) -> torch.Tensor:
        inputs, logits = distillation_inputs(x.seg(), self.unlabelled)
        t = self.temperature
        with torch.no_grad():
            tl = [teacher(inputs).float() for teacher in self.teachers]
            ens = torch.stack([class_probs(v) for v in tl]).mean(0)
            ens_t = ens if t == 1.0 else torch.stack([class_probs(v, t) for v in tl]).mean(0)
        return kd_loss(logits, ens, t, ens_t)["loss"]
