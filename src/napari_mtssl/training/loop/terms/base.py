"""What a loss term is, and what it reads in a training step.

A term is one weighted loss of a step (METHOD.md): segmentation, one auxiliary task, ensemble
distillation, feature distillation. The loop (:mod:`..loop`) knows only terms: it collects
their trainable modules into one optimiser, opens the batch streams they ask for, and adds
``weight * term.loss(inputs)`` over the terms, in their order, to the step's loss.

Terms that read the segmentation batch share one forward pass of the network over it
(:class:`SegForward`, computed at the first term that asks): the segmentation loss and the
distillation terms see the same augmented slices, as METHOD.md's student loss requires.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

BatchMaker = Callable[[int, np.random.Generator], dict[str, np.ndarray]]


@dataclass
class SegForward:
    """The network over one step's segmentation batch.

    ``inputs``: the labelled slices, followed by the unlabelled ones when a term reads those;
    ``logits`` of all of them; ``n_labelled`` first rows have ``labels``; ``features``: the
    encoder's feature maps (only when a term reads them).
    """

    inputs: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    n_labelled: int
    features: list[torch.Tensor] | None = None
    soft: torch.Tensor | None = None  # the teachers' stored probabilities of ``inputs``


class StepInputs(Protocol):
    """What a term reads in one step (the loop provides it)."""

    net: torch.nn.Module
    cfg: Any  # the run's ExperimentConfig
    gen: torch.Generator  # the step's seeded CPU generator (augmentation draws)
    average: torch.nn.Module | None  # the moving average of the weights, when the unit keeps one
    progress: float  # the step's share of the unit's steps, in [0, 1)

    def seg(self) -> SegForward: ...

    def batch(self, key: str) -> dict[str, torch.Tensor]: ...


class Term:
    """One weighted loss of a training step.

    Class attributes say what the term reads: ``reads_seg`` (the shared segmentation forward),
    ``reads_unlabelled`` (unlabelled slices in that forward), ``reads_features`` (its encoder
    features). A term with batches of its own returns their makers from :meth:`streams`.
    """

    name: str = "term"
    reads_seg = False
    reads_unlabelled = False
    reads_features = False
    reads_soft = False  # the shared segmentation batches carry the teachers' stored maps

    def __init__(self, weight: float = 1.0):
        self.weight = float(weight)

    def modules(self) -> dict[str, torch.nn.Module]:
        """Trainable modules besides the network, by the name they are checkpointed under."""
        return {}

    def streams(
        self, study: Any, batch_size: int, use_unlabelled: bool
    ) -> dict[str, tuple[int, BatchMaker]]:
        """Batch streams of its own: ``{key: (stream number, make(step, rng))}``."""
        return {}

    def to(self, device: torch.device) -> Term:
        for m in self.modules().values():
            m.to(device).train()
        return self

    def loss(self, x: StepInputs) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, net: torch.nn.Module) -> None:
        """Called after each optimiser step (a momentum encoder's update)."""
