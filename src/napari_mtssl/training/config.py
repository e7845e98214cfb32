"""Typed configuration of an experiment, with every METHOD.md default exposed as a field.

Values the paper did not publish (lambda, alpha, temperature, student init, ...) are fields with
the documented default, so users can change them and benchmarks can sweep them. ``to_dict`` /
``from_dict`` round-trip through JSON; unknown keys are refused by name (a typo in a sweep must not
silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

NORMALISATIONS = ("auto", "mri", "ct", "none")
STAGE1_MODES = ("joint", "pretrain", "both")
STUDENT_INITS = ("fresh", "best_teacher")
PROFILES = ("tiny", "quick", "standard")


@dataclass
class DataConfig:
    """Slices, intensity normalisation, augmentation and batching."""

    image_size: int = 128  # square training size; the U-Net needs a multiple of 16
    normalisation: str = "auto"  # "auto" picks by Scan.modality: MR -> "mri", CT -> "ct"
    clip_low: float = 0.5  # MRI: percentile clip before the per-scan z-score
    clip_high: float = 99.5
    ct_level: float = 40.0  # CT window (soft tissue) in HU
    ct_width: float = 400.0
    # Augmentation of segmentation batches (on the device, identical for image and label).
    flip: bool = True
    rotate90: bool = True
    affine_prob: float = 0.3
    affine_degrees: float = 10.0
    affine_scale: float = 0.1
    intensity_prob: float = 0.3
    intensity_scale: float = 0.1  # multiply by 1 +- this
    intensity_shift: float = 0.1  # add +- this (in z-score units)
    gamma_prob: float = 0.2
    gamma_low: float = 0.7
    gamma_high: float = 1.5
    batch_size: int = 8
    task_batch_size: int = 0  # 0: same as batch_size
    use_unlabelled: bool = True  # unlabelled slices feed the self-supervised tasks
    val_fraction: float = 0.2  # scans held out when the workspace has no "val" split
    prefetch: int = 4  # batches prepared ahead by the background thread

    def validate(self) -> None:
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(f"data.image_size must be a multiple of 16, got {self.image_size}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"data.normalisation must be one of {NORMALISATIONS}")
        if not 0 <= self.clip_low < self.clip_high <= 100:
            raise ValueError("data.clip_low/clip_high must satisfy 0 <= low < high <= 100")
        if self.ct_width <= 0:
            raise ValueError("data.ct_width must be positive")
        if self.batch_size < 1 or self.task_batch_size < 0:
            raise ValueError("data.batch_size must be >= 1 and task_batch_size >= 0")
        for name in ("affine_prob", "intensity_prob", "gamma_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"data.{name} must be a probability")
        if not 0 < self.gamma_low <= self.gamma_high:
            raise ValueError("data.gamma_low/gamma_high must satisfy 0 < low <= high")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("data.val_fraction must be in [0, 1)")
        if self.prefetch < 1:
            raise ValueError("data.prefetch must be >= 1")


@dataclass
class ModelConfig:
    width: int = 32  # channels of the first U-Net level (doubles per level)
    dropout: float = 0.0
    norm: str = "instance"  # "instance" | "batch" | "group" (build_unet)
    binary_sigmoid: bool = True  # binary tasks: 1 output channel + sigmoid (METHOD.md)

    def validate(self) -> None:
        if self.width < 1:
            raise ValueError("model.width must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError("model.dropout must be in [0, 1)")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    amp: bool = True  # mixed precision on CUDA only (bf16 when supported, else fp16 + scaler)
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    warmup_steps: int = 0
    cosine: bool = True  # cosine decay of lr to 1% over each model's budget

    def validate(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ValueError("optim: lr > 0, weight_decay >= 0, grad_clip >= 0, warmup >= 0")


@dataclass
class Stage1Config:
    """One elite teacher per task: joint and/or pretrain+finetune, then selection."""

    tasks: list[str] = field(default_factory=lambda: ["sdm", "rubik", "moco", "vicreg", "slices"])
    modes: str = "both"  # "joint" | "pretrain" | "both" (both: train each, keep the better)
    lambda_: dict[str, float] = field(default_factory=dict)  # task -> weight (default 1.0)
    joint_steps: int = 4000
    pretrain_steps: int = 4000
    finetune_steps: int = 4000
    eval_every: int = 500  # validation Dice every N steps (and at the end)
    task_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lam(self, task: str) -> float:
        return float(self.lambda_.get(task, 1.0))

    def validate(self) -> None:
        if self.modes not in STAGE1_MODES:
            raise ValueError(f"stage1.modes must be one of {STAGE1_MODES}, got {self.modes!r}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError("stage1.tasks lists a task twice")
        for name in ("joint_steps", "pretrain_steps", "finetune_steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"stage1.{name} must be >= 1")
        unknown = sorted(set(self.lambda_) - set(self.tasks))
        if unknown:
            raise ValueError(f"stage1.lambda_ names tasks that are not selected: {unknown}")


@dataclass
class Stage2Config:
    """Ensemble knowledge distillation into one student."""

    alpha: float = 0.5  # weight of the distillation term
    temperature: float = 1.0
    distil_unlabelled: bool = True  # distillation term also on unlabelled slices
    steps: int = 4000
    init: str = "fresh"  # "fresh" | "best_teacher"
    feature_distillation: bool = False  # encoder-feature matching (Biswas 2024), off by default
    feature_weight: float = 0.1
    retrain_steps: int = 1000  # "retrain-quick": fine-tune the student after corrections

    def validate(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError("stage2.alpha must be in [0, 1]")
        if self.temperature <= 0:
            raise ValueError("stage2.temperature must be positive")
        if self.init not in STUDENT_INITS:
            raise ValueError(f"stage2.init must be one of {STUDENT_INITS}")
        if self.steps < 1 or self.retrain_steps < 1:
            raise ValueError("stage2.steps and retrain_steps must be >= 1")


@dataclass
class BaselineConfig:
    steps: int = 0  # 0: the same budget as a joint-mode model (stage1.joint_steps)


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    all_joint: bool = True  # also train the "all tasks jointly" comparison
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps"
    seed: int = 0
    num_threads: int = 0  # torch CPU threads; 0 leaves torch's default
    profile: str = "custom"

    @property
    def baseline_steps(self) -> int:
        return self.baseline.steps or self.stage1.joint_steps

    def validate(self) -> ExperimentConfig:
        self.data.validate()
        self.model.validate()
        self.optim.validate()
        self.stage1.validate()
        self.stage2.validate()
        if self.baseline.steps < 0:
            raise ValueError("baseline.steps must be >= 0")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or dev.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {dev!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        return _from_dict(cls, d, "").validate()

    def scaled(self, factor: float) -> ExperimentConfig:
        """A copy with every step budget multiplied by ``factor`` (at least 1 step each)."""
        c = ExperimentConfig.from_dict(self.to_dict())

        def s(n: int) -> int:
            return max(1, round(n * factor))

        c.stage1.joint_steps = s(c.stage1.joint_steps)
        c.stage1.pretrain_steps = s(c.stage1.pretrain_steps)
        c.stage1.finetune_steps = s(c.stage1.finetune_steps)
        c.stage1.eval_every = s(c.stage1.eval_every)
        c.stage2.steps = s(c.stage2.steps)
        c.stage2.retrain_steps = s(c.stage2.retrain_steps)
        if c.baseline.steps:
            c.baseline.steps = s(c.baseline.steps)
        return c


def _from_dict(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"config{where}: expected a mapping, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"config{where}: unknown keys {unknown}; valid keys are {sorted(known)}")
    kwargs = {}
    for name, value in d.items():
        sub = _SECTIONS.get(name) if cls is ExperimentConfig else None
        if sub is not None:
            kwargs[name] = _from_dict(sub, value, f"{where}.{name}")
        elif name == "tasks":
            if isinstance(value, str):
                value = [t for t in value.split(",") if t]
            kwargs[name] = list(value)
        else:
            kwargs[name] = value
    obj = cls(**kwargs)
    _check_types(obj, where)
    return obj


def _check_types(obj: Any, where: str) -> None:
    """Coerce ints to floats where a float is declared; refuse obviously wrong types."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"config{where}.{f.name}: expected true/false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    setattr(obj, f.name, int(value))
                else:
                    raise ValueError(f"config{where}.{f.name}: expected an integer, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"config{where}.{f.name}: expected a number, got {value!r}")
            setattr(obj, f.name, float(value))
        elif isinstance(default, str) and not isinstance(value, str):
            raise ValueError(f"config{where}.{f.name}: expected a string, got {value!r}")


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "stage1": Stage1Config,
    "stage2": Stage2Config,
    "baseline": BaselineConfig,
}


def profile(name: str = "quick", **overrides: Any) -> ExperimentConfig:
    """A ready configuration.

    * ``tiny``: seconds on a CPU, for tests (a handful of steps, 32 px, width 4).
    * ``quick``: minutes on two CPU cores for the built-in 4-scan sample (64 px, width 8,
      ~150 steps per model).
    * ``standard``: close to the paper, for a GPU (256 px, width 32, batch 16, thousands of steps).

    ``overrides`` use ``section__field=value`` (``stage2__alpha=0.3``) or top-level fields
    (``seed=1``).
    """
    if name == "tiny":
        c = ExperimentConfig(
            data=DataConfig(image_size=32, batch_size=4, prefetch=2),
            model=ModelConfig(width=4),
            stage1=Stage1Config(
                tasks=["sdm", "rubik"],
                joint_steps=4,
                pretrain_steps=3,
                finetune_steps=3,
                eval_every=2,
            ),
            stage2=Stage2Config(steps=4, retrain_steps=2),
            profile="tiny",
        )
        c.optim.lr = 3e-3
    elif name == "quick":
        c = ExperimentConfig(
            data=DataConfig(image_size=64, batch_size=8),
            model=ModelConfig(width=8),
            stage1=Stage1Config(
                tasks=["sdm", "rubik", "slices"],
                joint_steps=150,
                pretrain_steps=100,
                finetune_steps=150,
                eval_every=50,
            ),
            stage2=Stage2Config(steps=150, retrain_steps=50),
            profile="quick",
        )
        c.optim.lr = 3e-3
    elif name == "standard":
        c = ExperimentConfig(
            data=DataConfig(image_size=256, batch_size=16),
            model=ModelConfig(width=32),
            stage1=Stage1Config(
                joint_steps=6000, pretrain_steps=6000, finetune_steps=6000, eval_every=500
            ),
            stage2=Stage2Config(steps=6000, retrain_steps=1500),
            profile="standard",
        )
    else:
        raise ValueError(f"unknown profile {name!r}; choose one of {list(PROFILES)}")
    if overrides:
        d = c.to_dict()
        for key, value in overrides.items():
            section, _, sub = key.partition("__")
            if sub:
                if section not in d or not isinstance(d[section], dict):
                    raise ValueError(f"unknown config section {section!r} in {key!r}")
                if sub not in d[section]:
                    raise ValueError(f"unknown config key {key!r}")
                d[section][sub] = value
            else:
                if key not in d:
                    raise ValueError(f"unknown config key {key!r}")
                d[key] = value
        c = ExperimentConfig.from_dict(d)
    return c.validate()
