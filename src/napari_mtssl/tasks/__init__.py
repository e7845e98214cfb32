"""The auxiliary tasks: one file each, an explicit registry, and lookups that explain typos.

``TASKS`` maps the names used in configs, the CLI and the UI to the task classes (METHOD.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from napari_mtssl import task_needs
from napari_mtssl.models.unet import UNet2D
from napari_mtssl.tasks.base import AuxTask, DataSummary, SliceContext, TaskConfig
from napari_mtssl.tasks.inpaint import InpaintTask
from napari_mtssl.tasks.moco import MoCoTask
from napari_mtssl.tasks.rubik import RubikTask
from napari_mtssl.tasks.sdm import SDMTask
from napari_mtssl.tasks.simsiam import SimSiamTask
from napari_mtssl.tasks.slices import SlicesTask
from napari_mtssl.tasks.vicreg import VICRegTask

__all__ = [
    "TASKS",
    "AuxTask",
    "DataSummary",
    "SliceContext",
    "TaskConfig",
    "task_class",
    "build_task",
    "task_config",
    "task_info",
]

TASKS: dict[str, type[AuxTask]] = {
    "sdm": SDMTask,
    "rubik": RubikTask,
    "moco": MoCoTask,
    "vicreg": VICRegTask,
    "slices": SlicesTask,
    "simsiam": SimSiamTask,
    "inpaint": InpaintTask,
}


def task_class(name: str) -> type[AuxTask]:
    """The task class registered as ``name``; ValueError listing the valid names otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise task_needs.unknown_task(name) from None


def task_config(name: str, **overrides: Any) -> TaskConfig:
    """The config of task ``name`` with its defaults and ``overrides`` (validated)."""
    cls = task_class(name).Config
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"task {name!r} has no setting {', '.join(map(repr, unknown))}; "
            f"its settings are: {', '.join(valid)}"
        )
    return cls(**overrides)


def build_task(
    name: str, net: UNet2D, cfg: TaskConfig | dict[str, Any] | None = None, num_classes: int = 2
) -> AuxTask:
    """Task ``name`` with heads sized for ``net``. ``cfg``: its Config, a dict of overrides, or
    None for the defaults."""
    cls = task_class(name)
    if isinstance(cfg, dict):
        cfg = task_config(name, **cfg)
    return cls(net, cfg, num_classes=num_classes)


def task_info() -> list[dict[str, Any]]:
    """What the UI checklist and ``api.list_tasks`` show, one dict per task, registry order:
    ``name, summary, level, needs_labels, paper, config`` (setting -> default)."""
    out = []
    for name, cls in TASKS.items():
        defaults = dataclasses.asdict(cls.Config())
        out.append(
            {
                "name": name,
                "summary": cls.summary,
                "level": cls.level,
                "needs_labels": cls.needs_labels,
                "paper": cls.paper,
                "config": defaults,
            }
        )
    return out
