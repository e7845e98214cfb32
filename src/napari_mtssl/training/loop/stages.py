"""The models of the method, each a generator over :func:`trainer.train_unit` (METHOD.md):
which loss terms (:mod:`.terms`) a model learns from, with which weights.

* :func:`baseline`: segmentation loss only (the conventional model every claim is measured by).
* :func:`joint`: l_seg + lambda * l_task, each term on its own batch.
* :func:`pretrain`: l_task alone, transfer the shared part (``task.level``), fine-tune l_seg with
  a fresh segmentation head and fresh non-shared parts.
* :func:`select_mode`: keep the mode with the higher validation mean foreground Dice.
* :func:`all_joint`: one network, every task head, summed losses (Cerberus-style comparison).
* :func:`student`: the student from the teachers' ensemble (semi-supervised self-training by
  default, the paper's ensemble distillation as an option).

Each returns ``{"net": module, "steps": int, "seconds": float, "stopped": bool}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from napari_mtssl import task_needs
from napari_mtssl.events import Events
from napari_mtssl.ids import Stage, trained
from napari_mtssl.models import build_unet
from napari_mtssl.tasks import build_task, task_class, task_config
from napari_mtssl.tasks.base import DataSummary
from napari_mtssl.training.config import ExperimentConfig
from napari_mtssl.training.data.slices import StudyData
from napari_mtssl.training.loop import checkpoints
from napari_mtssl.training.loop.terms import build_term
from napari_mtssl.training.loop.trainer import UnitSpec, train_unit

StopFn = Callable[[], bool] | None
Result = Events[dict]


def out_channels(cfg: ExperimentConfig, num_classes: int) -> int:
    """Binary segmentation uses one sigmoid channel (METHOD.md), multi-class one per class."""
    return 1 if num_classes == 2 and cfg.model.binary_sigmoid else num_classes


def new_net(cfg: ExperimentConfig, num_classes: int) -> torch.nn.Module:
    """A fresh U-Net; seeded, so every model of an experiment starts from the same weights."""
    torch.manual_seed(cfg.seed)
    return build_unet(
        in_channels=1,
        out_channels=out_channels(cfg, num_classes),
        width=cfg.model.width,
        dropout=cfg.model.dropout,
        norm=cfg.model.norm,
        depth=cfg.model.depth or 4,
    )


def new_task(name: str, net: torch.nn.Module, cfg: ExperimentConfig, num_classes: int):
    torch.manual_seed(cfg.seed + 1)
    overrides = cfg.stage1.task_overrides.get(name, {})
    return build_task(name, net, task_config(name, **overrides), num_classes)


def check_tasks(
    summary: DataSummary, names: Sequence[str], cfg: ExperimentConfig
) -> dict[str, str | None]:
    """Why each task cannot run on data like ``summary`` (None: it can), before any training:
    what the data must hold, the task batch, and the task's settings in ``cfg``."""
    tbsz = cfg.data.task_batch_size or cfg.data.batch_size
    out = task_needs.check_names(summary, names, tbsz)
    for name in names:
        if out[name] is None:
            try:
                task_config(name, **cfg.stage1.task_overrides.get(name, {}))
            except (ValueError, KeyError, TypeError) as exc:
                out[name] = str(exc).strip("'\"")
    return out


def require_tasks(summary: DataSummary, names: Sequence[str], cfg: ExperimentConfig) -> None:
    problems = {k: v for k, v in check_tasks(summary, names, cfg).items() if v}
    if problems:
        lines = "; ".join(f"{k}: {v}" for k, v in problems.items())
        raise ValueError(f"cannot train with the selected tasks: {lines}")


def baseline(study, cfg, device, ckpt_dir, stop: StopFn = None, **kw: Any) -> Result:
    net = new_net(cfg, study.num_classes)
    spec = UnitSpec(
        "baseline",
        Stage.BASELINE,
        cfg.baseline_steps,
        [build_term("seg")],
        model="baseline",
        eval_every=cfg.stage1.eval_every,
    )
    res = yield from train_unit(spec, net, study, cfg, device, ckpt_dir=ckpt_dir, stop=stop, **kw)
    return {**res, "net": net}


def joint(task: str, study, cfg, device, ckpt_dir, stop: StopFn = None, **kw: Any) -> Result:
    """``kw``: ``pause_at`` / ``deadline`` of :func:`train_unit`."""
    net = new_net(cfg, study.num_classes)
    t = new_task(task, net, cfg, study.num_classes)
    spec = UnitSpec(
        str(trained(task, "joint")),
        Stage.STAGE1,
        cfg.stage1.joint_steps,
        [build_term("seg"), build_term("task", task=t, weight=cfg.stage1.lam(task))],
        task_label=task,
        mode="joint",
        model=str(trained(task, "joint")),
        eval_every=cfg.stage1.eval_every,
    )
    res = yield from train_unit(spec, net, study, cfg, device, ckpt_dir=ckpt_dir, stop=stop, **kw)
    return {**res, "net": net}


def pretrain(
    task: str,
    study,
    cfg,
    device,
    ckpt_dir,
    stop: StopFn = None,
    *,
    pretext_file: Path | None = None,
    reuse: bool = False,
    **kw: Any,
) -> Result:
    """Pre-train on the task alone, then fine-tune the transferred shared part on segmentation.

    ``pretext_file``: where the pre-trained network is kept (a workspace cache entry that later
    runs with the same data, task, seed and shape reuse); ``reuse``: load it instead of
    training when it exists. Without a file, the run's checkpoint folder holds it until
    fine-tuning ends. The result's ``pretext_loaded`` says whether it was loaded, and
    ``pretext_steps`` / ``pretext_s`` what the pre-training had cost.
    """
    name = str(trained(task, "pretrain"))
    own = Path(ckpt_dir) / f"{task}-pretext.safetensors" if ckpt_dir else None
    pre_file = pretext_file or own
    net = new_net(cfg, study.num_classes)
    level = task_class(task).level
    pre_net, seconds, steps = _load_pretext(pre_file, own, reuse, int(cfg.stage1.pretrain_steps))
    loaded = pre_net is not None
    if pre_net is None:
        t = new_task(task, net, cfg, study.num_classes)
        spec = UnitSpec(
            f"{task}:pretext",
            Stage.STAGE1,
            steps,
            [build_term("task", task=t, weight=1.0)],
            task_label=task,
            mode="pretrain",
            model=name,
            evaluate=False,
        )
        res = yield from train_unit(spec, net, study, cfg, device, ckpt_dir=ckpt_dir, stop=stop)
        if res["stopped"]:
            return {**res, "net": net}
        pre_net, seconds = net, res["seconds"]
        if pre_file is not None:
            meta = {**_arch(cfg, study), "seconds": seconds, "pretext_steps": steps, "task": task}
            checkpoints.save_model(pre_net, pre_file, meta)
    fine = new_net(cfg, study.num_classes)  # fresh head and non-shared parts
    fine.load_shared(pre_net.shared_state_dict(level), level)
    spec = UnitSpec(
        name,
        Stage.STAGE1,
        cfg.stage1.finetune_steps,
        [build_term("seg")],
        task_label=task,
        mode="finetune",
        model=name,
        eval_every=cfg.stage1.eval_every,
    )
    res = yield from train_unit(spec, fine, study, cfg, device, ckpt_dir=ckpt_dir, stop=stop, **kw)
    done = not res["stopped"] and not res.get("paused")
    if done and own is not None and pre_file == own:
        for p in (own, own.with_suffix(".json")):
            p.unlink(missing_ok=True)
    return {
        **res,
        "net": fine,
        "pretext_steps": steps,
        "pretext_s": seconds,
        "pretext_loaded": loaded,
        "seconds": res.get("seconds", 0.0) + (0.0 if loaded else seconds),
    }


def _load_pretext(
    pre_file: Path | None, own: Path | None, reuse: bool, steps: int
) -> tuple[Any, float, int]:
    """The pre-trained network kept in ``pre_file`` (the run's own, or a cache entry where
    ``reuse``), with the seconds and steps its pre-training cost; (None, 0, ``steps``) where
    there is none (a damaged entry is removed, to be trained again)."""
    if pre_file is None or not pre_file.is_file() or not (reuse or pre_file == own):
        return None, 0.0, steps
    try:
        pre_net, meta = checkpoints.load_model(pre_file)
        return pre_net, float(meta.get("seconds", 0.0)), int(meta.get("pretext_steps", steps))
    except (OSError, ValueError, KeyError, RuntimeError):
        pre_file.unlink(missing_ok=True)
        return None, 0.0, steps


def select_mode(scores: dict[str, float | None]) -> str:
    """The mode with the higher validation mean foreground Dice (ties and unknowns: joint)."""
    j = scores.get("joint")
    p = scores.get("pretrain")
    if p is None:
        return "joint"
    if j is None:
        return "pretrain"
    return "pretrain" if p > j else "joint"


def all_joint(
    tasks: Sequence[str], study, cfg, device, ckpt_dir, stop: StopFn = None, **kw: Any
) -> Result:
    net = new_net(cfg, study.num_classes)
    terms = [build_term("seg")] + [
        build_term(
            "task", task=new_task(t, net, cfg, study.num_classes), weight=cfg.stage1.lam(t), index=i
        )
        for i, t in enumerate(tasks)
    ]
    spec = UnitSpec(
        "all_joint",
        Stage.ALL_JOINT,
        cfg.stage1.joint_steps,
        terms,
        task_label="all",
        mode="joint",
        model="all_joint",
        eval_every=cfg.stage1.eval_every,
    )
    res = yield from train_unit(spec, net, study, cfg, device, ckpt_dir=ckpt_dir, stop=stop, **kw)
    return {**res, "net": net}


def student(
    teachers: Sequence[torch.nn.Module],
    study: StudyData,
    cfg: ExperimentConfig,
    device: torch.device,
    ckpt_dir: Any,
    stop: StopFn = None,
    *,
    init: torch.nn.Module | None = None,
    steps: int | None = None,
    unit: str = "student",
    stage: Stage = Stage.STAGE2,
    online: bool = False,
    **kw: Any,
) -> Result:
    """Train the student (fresh, or a copy of ``init``) from the teachers' ensemble, by
    ``cfg.stage2.method``: "semi" (self-training on the unlabelled slices, :mod:`.terms.semi`)
    or "paper" (ensemble distillation). With ``stage2.stored`` the ensemble's predictions come
    with the batches (:mod:`.soft_labels` attached them to ``study``); ``online`` (semi, the
    ensemble being ``init`` itself): none are, the student's moving average labels the
    unlabelled windows from the first step."""
    if not teachers:
        raise ValueError("stage 2 needs at least one teacher; train stage 1 first")
    net = new_net(cfg, study.num_classes)
    if init is not None:
        net.load_state_dict(init.state_dict())
    semi = cfg.stage2.method == "semi"
    spec = UnitSpec(
        unit,
        stage,
        steps or cfg.stage2.steps,
        semi_terms(cfg, online) if semi else distillation_terms(teachers, net, cfg),
        model="student",
        eval_every=cfg.stage2.eval_every,
        # the average of a new student's weights; a retrain after corrections keeps its last
        # weights (a few hundred steps: an average would barely move from where it started)
        ema=cfg.stage2.ema if semi and stage == Stage.STAGE2 else 0.0,
        # a new student that starts from a trained model: its peak rate is lr_scale of optim.lr
        lr_scale=cfg.stage2.lr_scale if init is not None and stage == Stage.STAGE2 else 1.0,
    )
    res = yield from train_unit(spec, net, study, cfg, device, ckpt_dir=ckpt_dir, stop=stop, **kw)
    return {**res, "net": net}


def semi_terms(cfg: ExperimentConfig, online: bool = False) -> list:
    """The default student's loss: ground truth and confident pseudo-labels on copy-paste mixed,
    strongly perturbed views (:class:`.terms.semi.CopyPasteSelfTraining`); ``online``: the
    pseudo-labels from the student's moving average alone, no stored maps."""
    s2 = cfg.stage2
    return [
        build_term(
            "semi",
            confidence=s2.confidence,
            unlabelled_weight=s2.unlabelled_weight,
            box=s2.box,
            fg_oversample=cfg.data.fg_oversample,
            refresh=s2.refresh,
            refresh_ramp=s2.refresh_ramp,
            mix=s2.mix,
            pseudo_lcc=s2.pseudo_lcc,
            online=online,
            labelled_share=s2.labelled_share,
        )
    ]


def distillation_terms(
    teachers: Sequence[torch.nn.Module], net: torch.nn.Module, cfg: ExperimentConfig
) -> list:
    """The student's loss (METHOD.md): (1 - alpha) l_seg + alpha l_kd [+ feature distillation].
    A term whose weight is zero is left out, so alpha = 0 is exactly the segmentation loss."""
    s2 = cfg.stage2
    terms = [build_term("seg", weight=1 - s2.alpha)] if s2.alpha < 1 else []
    if s2.alpha > 0:
        terms.append(
            build_term(
                "kd",
                teachers=teachers,
                weight=s2.alpha,
                temperature=s2.temperature,
                unlabelled=s2.distil_unlabelled,
                stored=s2.stored,
            )
        )
        if s2.feature_distillation:
            terms.append(
                build_term(
                    "feature_kd",
                    teachers=teachers,
                    student=net,
                    weight=s2.feature_weight,
                    unlabelled=s2.distil_unlabelled,
                )
            )
    return terms


def _arch(cfg: ExperimentConfig, study: StudyData) -> dict[str, Any]:
    """What :func:`checkpoints.load_model` needs to rebuild the network, and what prediction
    needs to see a scan as the network was trained to (preprocessing, patch, overlap)."""
    return {
        "kind": "unet2d",
        "width": cfg.model.width,
        "depth": cfg.model.depth or 4,
        "dropout": cfg.model.dropout,
        "norm": cfg.model.norm,
        "out_channels": out_channels(cfg, study.num_classes),
        "num_classes": study.num_classes,
        "label_names": {str(k): v for k, v in study.label_names.items()},
        "patch": study.patch,
        "preprocessing": study.prep.to_dict(),
        "overlap": cfg.data.infer_overlap,
        "precision": cfg.optim.precision,
        "data": dict(cfg.data.__dict__),
    }


arch_meta = _arch
