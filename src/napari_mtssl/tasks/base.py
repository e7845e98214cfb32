"""What every auxiliary task is: a sample builder, a head, a loss, a config (STYLE.md).

A task never owns the U-Net: ``forward(net, batch)`` runs the shared network it is given and its
own heads, so the same task class serves joint training (net also has a segmentation loss) and
pre-training (net trained on the task alone).

Data flow, for the trainer:

1. ``task.check_data(summary)`` before training: a reason string if the task cannot run.
2. per sample: ``task.slice_ok(ctx)`` then ``task.make_sample(ctx, rng)`` (numpy, no batch dim).
3. the trainer stacks samples into tensors, calls ``task(net, batch)["loss"]``, steps, then
   ``task.after_step(net)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from napari_mtssl import task_needs
from napari_mtssl.models.unet import UNet2D
from napari_mtssl.task_needs import DataSummary

__all__ = ["SliceContext", "DataSummary", "AuxTask", "TaskConfig", "config_error", "mlp", "gap"]


@dataclass
class SliceContext:
    """One slice of one scan, with the scan around it (tasks may look at other slices)."""

    volume: np.ndarray  # (z, H, W) float32, normalised, H and W divisible by 16
    z: int  # the slice this sample is for
    labels: np.ndarray | None = None  # (z, H, W) int64 class map, None when unlabelled
    labelled: np.ndarray | None = None  # (z,) bool: which slices of labels are real annotations
    num_classes: int = 2  # including background
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (z, y, x) mm

    def __post_init__(self) -> None:
        if self.volume.ndim != 3:
            raise ValueError(f"SliceContext.volume must be (z, H, W); got {self.volume.shape}")
        if not 0 <= self.z < self.volume.shape[0]:
            raise ValueError(f"slice {self.z} is outside a volume of {self.volume.shape[0]}")
        if self.labels is not None and self.labels.shape != self.volume.shape:
            raise ValueError(
                f"labels {self.labels.shape} do not match the volume {self.volume.shape}"
            )

    @property
    def n_slices(self) -> int:
        return int(self.volume.shape[0])

    def image(self, z: int | None = None) -> np.ndarray:
        """Slice ``z`` (default: this sample's) as a ``(1, H, W)`` float32 channel."""
        zz = self.z if z is None else int(z)
        return np.ascontiguousarray(self.volume[zz][None], dtype=np.float32)

    def is_labelled(self, z: int | None = None) -> bool:
        zz = self.z if z is None else int(z)
        if self.labels is None:
            return False
        return True if self.labelled is None else bool(self.labelled[zz])


def config_error(cls_name: str, field: str, problem: str) -> ValueError:
    return ValueError(f"{cls_name}.{field}: {problem}")


@dataclass
class TaskConfig:
    """Base of the task configs: dict round trip and field listing."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def _positive(self, *names: str) -> None:
        for n in names:
            v = getattr(self, n)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise config_error(type(self).__name__, n, f"must be a positive number; got {v!r}")

    def _unit(self, *names: str) -> None:
        for n in names:
            v = getattr(self, n)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise config_error(type(self).__name__, n, f"must be in [0, 1]; got {v!r}")


def mlp(dims: list[int], bn: bool = False, last_bn: bool = False) -> nn.Sequential:
    """Linear layers with ReLU between (and BatchNorm1d before each ReLU when ``bn``).

    ``last_bn`` adds a non-affine BatchNorm1d on the output (MoCo v3 projector).
    """
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=not (bn and (not last or last_bn))))
        if not last:
            if bn:
                layers.append(nn.BatchNorm1d(dims[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        elif last_bn:
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=False))
    return nn.Sequential(*layers)


def gap(x: Tensor) -> Tensor:
    """Global average pool ``(B, C, h, w) -> (B, C)``."""
    return x.mean(dim=(2, 3))


class AuxTask(nn.Module):
    """An auxiliary task: sample builder, head(s) and loss. Subclasses set the class variables."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the UI checklist
    paper: ClassVar[str]  # citation line
    level: ClassVar[str]  # "encoder" or "dense"
    needs_labels: ClassVar[bool] = False
    min_batch: ClassVar[int] = 1  # contrastive / BN-projector tasks need 2
    Config: ClassVar[type]

    def __init__(self, net: UNet2D, cfg: Any = None, num_classes: int = 2):
        super().__init__()
        if cfg is None:
            cfg = self.Config()
        elif isinstance(cfg, dict):
            cfg = self.Config(**cfg)
        if not isinstance(cfg, self.Config):
            raise TypeError(f"{self.name}: cfg must be {self.Config.__name__}; got {type(cfg)}")
        if net.in_channels != 1:
            raise ValueError(
                f"{self.name}: auxiliary tasks build single-channel slices; "
                f"the network takes {net.in_channels} channels"
            )
        if num_classes < 2:
            raise ValueError(f"{self.name}: num_classes includes background, so >= 2")
        self.cfg = cfg
        self.num_classes = int(num_classes)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if getattr(cls, "name", None) in task_needs.NAMES:  # one source for both
            cls.min_batch = task_needs.min_batch(cls.name)

    @classmethod
    def check_data(cls, summary: DataSummary, cfg: Any = None) -> str | None:
        """None if the task can train on data like ``summary``, else the reason it cannot
        (:mod:`napari_mtssl.task_needs`, which answers without importing torch)."""
        if cls.name in task_needs.NAMES:
            return task_needs.check(cls.name, summary)
        if summary.n_slices < 1:
            return f"{cls.name} needs at least one image slice; the data holds none"
        return None

    def slice_ok(self, ctx: SliceContext) -> bool:
        """Can slice ``ctx.z`` serve as a sample for this task."""
        return True

    def make_sample(self, ctx: SliceContext, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def forward(self, net: UNet2D, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def after_step(self, net: UNet2D) -> None:
        """Called after each optimiser step (momentum encoders). Default: nothing."""

    def _check_batch(self, n: int) -> None:
        if self.training and n < self.min_batch:
            raise ValueError(
                f"{self.name} needs batches of at least {self.min_batch} samples; got {n}"
            )

    def extra_repr(self) -> str:
        return f"cfg={self.cfg}"
