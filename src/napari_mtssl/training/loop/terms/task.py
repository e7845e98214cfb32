"""An auxiliary (self-supervised) task: its own batches, its heads, its loss (``tasks/``)."""

from __future__ import annotations

import torch

from napari_mtssl.training.loop.terms.base import StepInputs, Term


class AuxiliaryTask(Term):
    """``task``: an :class:`~napari_mtssl.tasks.AuxTask`; ``index``: its place among the unit's
    tasks (its checkpoint name ``task<index>`` and its batch stream ``10 + index``)."""

    def __init__(self, task: torch.nn.Module, weight: float = 1.0, index: int = 0):
        super().__init__(weight)
        self.task = task
        self.index = int(index)
        self.name = task.name

    def modules(self) -> dict[str, torch.nn.Module]:
        return {f"task{self.index}": self.task}

    def streams(self, study, batch_size, use_unlabelled):
        pool = study.task_pool(self.task, use_unlabelled)
        if not pool:
            raise ValueError(
                f"task {self.task.name}: no slice of the training data can serve as a sample"
            )

        def make(step, rng):
            return study.task_batch(self.task, pool, batch_size, rng)

        return {f"task{self.index}": (10 + self.index, make)}

    def loss(self, x: StepInputs) -> torch.Tensor:
        return self.task(x.net, x.batch(f"task{self.index}"))["loss"].float()

    def after_step(self, net: torch.nn.Module) -> None:
        self.task.after_step(net)
