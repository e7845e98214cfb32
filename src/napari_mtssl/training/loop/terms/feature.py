"""Feature distillation (Biswas 2024, an option of stage 2): InfoNCE between the student's and
each teacher's pooled deepest encoder features, through learned projections."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from napari_mtssl.training.loop.losses import feature_nce_loss
from napari_mtssl.training.loop.terms.base import StepInputs, Term
from napari_mtssl.training.loop.terms.distil import distillation_inputs, freeze


class FeatureDistillation(Term):
    name = "feat"
    reads_seg = True
    reads_features = True

    def __init__(
        self,
        teachers: Sequence[torch.nn.Module],
        student: torch.nn.Module,
        weight: float = 0.1,
        unlabelled: bool = True,
        width: int = 128,
    ):
        super().__init__(weight)
        self.teachers = list(teachers)
        self.unlabelled = self.reads_unlabelled = bool(unlabelled)
        d = student.encoder_channels[-1]
        self.proj = torch.nn.ModuleDict(
            {
                "student": torch.nn.Linear(d, width),
                **{
                    f"t{i}": torch.nn.Linear(t.encoder_channels[-1], width)
                    for i, t in enumerate(self.teachers)
                },
            }
        )

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"proj": self.proj}

    def to(self, device):
        freeze(self.teachers, device)
        self.proj.to(device)
        return self

    def loss(self, x: StepInputs) -> torch.Tensor:
        f = x.seg()
        inputs, _ = distillation_inputs(f, self.unlabelled)
        sv = self.proj["student"](f.features[-1].float().mean((2, 3)))
        total = 0.0
        for i, t in enumerate(self.teachers):
            with torch.no_grad():
                tf = t.encode(inputs)[-1].float().mean((2, 3))
            total = total + feature_nce_loss(sv, self.proj[f"t{i}"](tf))
        return total / len(self.teachers)
