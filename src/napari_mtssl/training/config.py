"""Typed configuration of an experiment, with every METHOD.md default exposed as a field.

Values the paper did not publish (lambda, alpha, temperature, student init, ...) are fields with
the documented default, so users can change them and benchmarks can sweep them. ``to_dict`` /
``from_dict`` round-trip through JSON; unknown keys are refused by name (a typo in a sweep must not
silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

NORMALISATIONS = ("auto", "zscore", "mri", "ct", "window", "none")  # "mri": same as "zscore"
EXECUTORS = ("inline", "local", "ray")
STAGE1_MODES = ("auto", "joint", "pretrain", "both")
STUDENT_INITS = ("auto", "fresh", "best_teacher", "best")
STAGE2_METHODS = ("semi", "paper")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# Budget presets (seconds for the whole run); "tiny" has fixed step counts, for tests.
PRESETS: dict[str, float] = {"quick": 600.0, "standard": 3600.0, "overnight": 8 * 3600.0}
PROFILES = ("tiny", *PRESETS)
DEFAULT_TASKS = ["sdm", "inpaint"]  # vicreg: the weakest teacher measured (0.621 at 60 min, L = 3)

# A field left at 0 (or "auto") is chosen by the planner (training/planning/) from the data, the
# device and the budget; any value set here wins over the plan.


@dataclass
class DataConfig:
    """Resolution, patches, intensity normalisation, augmentation and batching."""

    target_spacing: float = 0.0  # in-plane mm; 0: planned (median); -1: each scan's own
    patch_size: int = 0  # square patch side (multiple of 2**depth); 0: planned
    normalisation: str = "auto"  # auto: by modality, CT -> "ct", anything else -> "zscore"
    clip_low: float = 0.5  # zscore: percentile clip of each scan before its z-score
    clip_high: float = 99.5
    ct_level: float = 40.0  # "window" (and CT without labelled foreground): HU window
    ct_width: float = 400.0
    fg_oversample: float = 0.33  # share of each segmentation batch centred on foreground
    infer_overlap: float = 0.5  # sliding-window overlap (Gaussian blending) at prediction
    # Augmentation of segmentation batches (on the device, identical for image and label).
    flip: bool = True
    rotate90: bool = True
    affine_prob: float = 0.5
    affine_degrees: float = 20.0
    affine_scale: float = 0.2
    intensity_prob: float = 0.3
    intensity_scale: float = 0.1  # multiply by 1 +- this
    intensity_shift: float = 0.1  # add +- this (in z-score units)
    gamma_prob: float = 0.2
    gamma_low: float = 0.7
    gamma_high: float = 1.5
    batch_size: int = 0  # 0: planned
    task_batch_size: int = 0  # 0: same as batch_size
    use_unlabelled: bool = True  # unlabelled slices feed the self-supervised tasks
    val_fraction: float = 0.2  # scans held out when the workspace has no "val" split
    prefetch: int = 4  # batches prepared ahead by the background thread
    cache: bool = True  # keep preprocessed volumes in <workspace>/cache (memory-mapped)

    def validate(self) -> None:
        if self.patch_size and (self.patch_size < 16 or self.patch_size % 16):
            raise ValueError(f"data.patch_size must be a multiple of 16, got {self.patch_size}")
        ts = self.target_spacing
        if not (ts == 0 or ts == -1 or (ts > 0 and math.isfinite(ts))):
            raise ValueError(f"data.target_spacing must be > 0, 0 (planned) or -1, got {ts}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"data.normalisation must be one of {NORMALISATIONS}")
        if not 0 <= self.clip_low < self.clip_high <= 100:
            raise ValueError("data.clip_low/clip_high must satisfy 0 <= low < high <= 100")
        if self.ct_width <= 0:
            raise ValueError("data.ct_width must be positive")
        if self.batch_size < 0 or self.task_batch_size < 0:
            raise ValueError("data.batch_size and task_batch_size must be >= 0 (0: planned)")
        for name in ("affine_prob", "intensity_prob", "gamma_prob", "fg_oversample"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"data.{name} must be a probability")
        if not 0 <= self.infer_overlap < 1:
            raise ValueError("data.infer_overlap must be in [0, 1)")
        if not 0 < self.gamma_low <= self.gamma_high:
            raise ValueError("data.gamma_low/gamma_high must satisfy 0 < low <= high")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("data.val_fraction must be in [0, 1)")
        if self.prefetch < 1:
            raise ValueError("data.prefetch must be >= 1")


@dataclass
class ModelConfig:
    width: int = 0  # channels of the first U-Net level (doubles per level); 0: planned
    depth: int = 0  # number of 2x poolings (2..7); 0: planned from the patch size
    dropout: float = 0.0
    norm: str = "instance"  # "instance" | "batch" | "group" (build_unet)
    binary_sigmoid: bool = True  # binary tasks: 1 output channel + sigmoid (METHOD.md)

    def validate(self) -> None:
        if self.width < 0:
            raise ValueError("model.width must be >= 1 (0: planned)")
        if self.depth and not 2 <= self.depth <= 7:
            raise ValueError("model.depth must be in 2..7 (0: planned)")
        if not 0 <= self.dropout < 1:
            raise ValueError("model.dropout must be in [0, 1)")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # Mixed precision: "auto" times bf16 against fp32 on the CPU and keeps the faster (where the
    # CPU has bf16 instructions), bf16 on CUDA where supported (else fp16 with loss scaling).
    precision: str = "auto"
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    warmup_steps: int = 0
    cosine: bool = True  # cosine decay of lr to 1% over each model's budget

    def validate(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ValueError("optim: lr > 0, weight_decay >= 0, grad_clip >= 0, warmup >= 0")
        if self.precision not in PRECISIONS:
            raise ValueError(f"optim.precision must be one of {PRECISIONS}")


@dataclass
class Stage1Config:
    """One elite teacher per task: joint and/or pretrain+finetune, then selection."""

    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    # "joint" | "pretrain" | "both" (both: train each, keep the better) | "auto": both where the
    # budget gives every model JOINT_PAYS_STEPS, else pre-training only (training/planning/planner.py)
    modes: str = "auto"
    lambda_: dict[str, float] = field(default_factory=dict)  # task -> weight (default 1.0)
    joint_steps: int = 0  # 0 (all three): from the budget, the same for every model
    pretrain_steps: int = 0
    finetune_steps: int = 0
    pretrain_ratio: float = 0.5  # budgeted runs: pre-training steps per fine-tuning step
    eval_every: int = 0  # validation Dice every N steps (and at the end); 0: halfway
    # Successive halving between the two modes: both train this share of their segmentation
    # steps, then only the leader goes on, unless they are within `halving_margin` Dice.
    halving: float = 0.34
    halving_margin: float = 0.01
    # A teacher against the run's baseline (a semi-supervised student only): at this share of
    # its segmentation steps (the halving point when two modes train) a mode goes on only if
    # its validation Dice leads the baseline's at the same step by at least `baseline_lead`;
    # the others stop there, join no ensemble, and the student gets their time. Pre-trained
    # models lead early and the lead fades: on ACDC (one hour, docs/benchmarks.md) teachers
    # that led by 0.054, 0.061 and 0.065 at a third of their steps ended level with their
    # run's baseline (+0.006, -0.002 and about 0), one that led by 0.135 ended 0.08 ahead; at
    # L = 3, seed 0, stopping a teacher that led by 0.04 raised the student from 0.832 to
    # 0.851. 0: teachers always train to the end.
    baseline_rung: float = 0.34
    baseline_lead: float = 0.1
    # Budgeted runs for a semi-supervised student that learns from the run's baseline: when
    # the budget gives each teacher fewer segmentation steps than this, the plan trains no
    # teacher (the student's ensemble is the baseline) and the baseline and the student share
    # the time. On ACDC (L = 3, 2-core CPU) no teacher led the baseline at about 480 steps
    # (20-minute budgets) and one in three did at 1600-1800 (an hour; docs/benchmarks.md);
    # at an hour the rule at 2000 raised the student by 0.015, 0.012 and 0.000 (three seeds)
    # over training the teachers until the lead rule stopped them at their rung. 0: teachers are trained
    # whatever the budget.
    min_teacher_steps: int = 2000
    cache_pretext: bool = True  # reuse label-free pre-training across runs of a workspace
    task_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lam(self, task: str) -> float:
        return float(self.lambda_.get(task, 1.0))

    def validate(self) -> None:
        if self.modes not in STAGE1_MODES:
            raise ValueError(f"stage1.modes must be one of {STAGE1_MODES}, got {self.modes!r}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError("stage1.tasks lists a task twice")
        for name in ("joint_steps", "pretrain_steps", "finetune_steps", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"stage1.{name} must be >= 1 (0: from the budget)")
        if self.min_teacher_steps < 0:
            raise ValueError("stage1.min_teacher_steps must be >= 0 (0: always train teachers)")
        if not 0 <= self.halving < 1:
            raise ValueError("stage1.halving must be in [0, 1) (0: no successive halving)")
        if self.halving_margin < 0 or self.pretrain_ratio <= 0:
            raise ValueError("stage1.halving_margin must be >= 0 and pretrain_ratio > 0")
        if not 0 <= self.baseline_rung < 1 or not -1 <= self.baseline_lead <= 1:
            raise ValueError(
                "stage1.baseline_rung must be in [0, 1) (0: teachers always train to the end) "
                "and stage1.baseline_lead in [-1, 1]"
            )
        unknown = sorted(set(self.lambda_) - set(self.tasks))
        if unknown:
            raise ValueError(f"stage1.lambda_ names tasks that are not selected: {unknown}")


@dataclass
class Stage2Config:
    """The student: what the teachers' ensemble teaches it, and how.

    ``method``: "semi" (default): warm-started from the best stage-1 model, ground truth at full
    weight, the ensemble's confident predictions on unlabelled slices through bidirectional
    copy-paste and a strong view, an exponential moving average of its weights kept
    (METHOD.md, "Stage 2 beyond the paper"); "paper": the paper's ensemble distillation,
    (1 - alpha) l_seg + alpha l_kd, a fresh student (Hu & Qin 2024).
    """

    method: str = "semi"
    alpha: float = 0.5  # paper: weight of the distillation term
    temperature: float = 1.0
    distil_unlabelled: bool = True  # paper: distillation term also on unlabelled slices
    steps: int = 0  # 0: from the budget
    # "auto": "best" for semi, "fresh" for paper; "best_teacher": the best selected teacher;
    # "best": the best ensemble member (the baseline included)
    init: str = "auto"
    feature_distillation: bool = False  # encoder-feature matching (Biswas 2024), off by default
    feature_weight: float = 0.1
    retrain_steps: int = 0  # "retrain-quick": fine-tune the student after corrections; 0: budget
    eval_every: int = 0  # validation Dice every N steps (and at the end); 0: halfway
    # Ensemble members: the selected teachers and (semi) the run's baseline, less any member
    # whose validation Dice trails the best member's by more than `member_margin`.
    with_baseline: bool = True
    member_margin: float = 0.05
    stored: bool = True  # the ensemble's predictions computed once and stored (soft_labels.py)
    # semi: when the ensemble is the student's own start (no teacher kept: the run's baseline),
    # nothing is stored: the student's moving average, which starts as that very model, labels
    # the unlabelled windows from the first step (the stored maps would repeat it at a cost)
    own_start_online: bool = True
    # semi: pseudo-labels kept where the ensemble's probability is at least `confidence`,
    # weighted `unlabelled_weight` against ground truth (1); pasted box of `box` x the patch side.
    # 0.7 rather than the published 0.9-0.95: on ACDC (L = 3, 20 minutes, three seeds) the
    # student gained 0.014 / 0.003 / 0.010 from it over 0.9, paired by seed (docs/benchmarks.md)
    confidence: float = 0.7
    unlabelled_weight: float = 0.5
    box: float = 2 / 3
    ema: float = 0.99  # semi: decay of the weights' moving average kept as the student; 0: off
    # semi: the student's own moving average joins the pseudo-labeller (Mean Teacher): its
    # probabilities on the clean window are blended with the ensemble's stored ones, with a
    # weight rising linearly from 0 to `refresh` over the first `refresh_ramp` of the steps
    # (the student outgrows the ensemble it starts from). 0: the ensemble alone.
    refresh: float = 1.0
    refresh_ramp: float = 0.5
    # semi: the share of labelled/unlabelled pairs that are copy-pasted into each other; the
    # rest are trained whole (each window strongly perturbed, with its own target). 0: pasted
    # boxes taught the student stray blobs on ACDC (docs/method.md)
    mix: float = 0.0
    # semi: pseudo-labels keep only each window's largest connected foreground component
    pseudo_lcc: bool = False
    # Budgeted runs: the share of the training time (after stage 1's fixed costs) that the
    # student gets (semi); 0: the same steps as every other model (the paper's comparison).
    share: float = 0.5
    # A student warm-started from a trained model: its peak learning rate as a share of
    # optim.lr (1: the same restart as a fresh model)
    lr_scale: float = 1.0
    # semi: the share of each step's windows that are labelled (the rest unlabelled); a step
    # has as many windows as a baseline step
    labelled_share: float = 0.5

    def learns_online(self) -> bool:
        """Whether a new student whose ensemble is its own start stores no maps and learns from
        its moving average alone (semi, ``own_start_online``, a moving average kept)."""
        return self.method == "semi" and self.own_start_online and self.ema > 0

    def resolved_init(self) -> str:
        if self.init != "auto":
            return self.init
        return "best" if self.method == "semi" else "fresh"

    def validate(self) -> None:
        if self.method not in STAGE2_METHODS:
            raise ValueError(f"stage2.method must be one of {STAGE2_METHODS}, got {self.method!r}")
        if not 0 <= self.alpha <= 1:
            raise ValueError("stage2.alpha must be in [0, 1]")
        if self.temperature <= 0:
            raise ValueError("stage2.temperature must be positive")
        if self.init not in STUDENT_INITS:
            raise ValueError(f"stage2.init must be one of {STUDENT_INITS}")
        if self.steps < 0 or self.retrain_steps < 0:
            raise ValueError("stage2.steps and retrain_steps must be >= 0 (0: from the budget)")
        if self.eval_every < 0:
            raise ValueError("stage2.eval_every must be >= 1 (0: halfway)")
        if not 0 <= self.confidence <= 1 or self.unlabelled_weight < 0 or not 0 < self.box < 1:
            raise ValueError("stage2: confidence in [0, 1], unlabelled_weight >= 0, box in (0, 1)")
        if not 0 <= self.ema < 1:
            raise ValueError("stage2.ema must be in [0, 1) (0: no moving average)")
        if not 0 <= self.refresh <= 1 or not 0 < self.refresh_ramp <= 1:
            raise ValueError("stage2: refresh in [0, 1], refresh_ramp in (0, 1]")
        if not 0 <= self.mix <= 1:
            raise ValueError("stage2.mix must be in [0, 1]")
        if not 0 <= self.share < 0.9:
            raise ValueError("stage2.share must be in [0, 0.9) (0: equal steps)")
        if self.member_margin < 0:
            raise ValueError("stage2.member_margin must be >= 0")
        if not 0 < self.labelled_share < 1:
            raise ValueError("stage2.labelled_share must be in (0, 1)")
        if not 0 < self.lr_scale <= 1:
            raise ValueError("stage2.lr_scale must be in (0, 1]")


@dataclass
class BaselineConfig:
    steps: int = 0  # 0: the same as every other model (stage1.joint_steps, or the budget's)


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    budget_s: float = 0.0  # wall-clock budget of the whole run; 0: step counts as given
    all_joint: bool = False  # also train the "all tasks jointly" comparison
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps"
    seed: int = 0
    num_threads: int = 0  # torch CPU threads; 0: the plan's thread policy
    checkpoint_every_s: float = 300.0  # resumable checkpoint this often: a crash loses at most it
    profile: str = "custom"
    # Where the units of a run train (training/running/executors.py): "inline" (the run's own process),
    # "local" (units side by side in processes), "ray" (a Ray cluster at ray_address).
    executor: str = "local"
    units_at_once: int = 0  # 0: as many as fit (budgeted runs: where that gives more steps)
    ray_address: str | None = None  # "auto", "ray://host:port"; None: a local Ray instance

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
        if self.budget_s < 0 or not math.isfinite(self.budget_s):
            raise ValueError("budget_s must be >= 0 seconds (0: use the step counts)")
        if not self.checkpoint_every_s > 0:
            raise ValueError("checkpoint_every_s must be a positive number of seconds")
        if self.executor not in EXECUTORS:
            raise ValueError(
                f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}"
            )
        if self.units_at_once < 0:
            raise ValueError("units_at_once must be >= 0 (0: as many as fit)")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or dev.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {dev!r}")
        return self

    def steps_given(self) -> bool:
        """Whether every step count the run needs was set (then no budget is needed)."""
        s1 = self.stage1
        return bool(
            s1.joint_steps and s1.pretrain_steps and s1.finetune_steps and self.stage2.steps
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        return _from_dict(cls, d, "").validate()

    def scaled(self, factor: float) -> ExperimentConfig:
        """A copy with every explicit step budget multiplied by ``factor`` (at least 1 step
        each; steps left to the budget stay so), and the time budget too."""
        c = ExperimentConfig.from_dict(self.to_dict())

        def s(n: int) -> int:
            return max(1, round(n * factor)) if n else 0

        c.stage1.joint_steps = s(c.stage1.joint_steps)
        c.stage1.pretrain_steps = s(c.stage1.pretrain_steps)
        c.stage1.finetune_steps = s(c.stage1.finetune_steps)
        c.stage1.eval_every = s(c.stage1.eval_every)
        c.stage2.steps = s(c.stage2.steps)
        c.stage2.retrain_steps = s(c.stage2.retrain_steps)
        c.stage2.eval_every = s(c.stage2.eval_every)
        c.baseline.steps = s(c.baseline.steps)
        c.budget_s = c.budget_s * factor
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


def parse_budget(text: str | float | int) -> float:
    """``"10m"``, ``"1h"``, ``"1h30m"``, ``"90s"``, ``"8h"`` or a plain number of minutes ->
    seconds. Refuses anything else with a message that shows the accepted forms."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        minutes = float(text)
    else:
        t = str(text).strip().lower().replace(" ", "")
        if t in PRESETS:
            return PRESETS[t]
        try:
            minutes = float(t)
        except ValueError:
            m = re.fullmatch(
                r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?", t
            )
            if not t or m is None or not any(m.groups()):
                raise ValueError(
                    f"budget {text!r} not understood; write it like 10m, 1h, 1h30m, 90s or a "
                    f"number of minutes (presets: {', '.join(PRESETS)})"
                ) from None
            h, mi, se = (float(g) if g else 0.0 for g in m.groups())
            minutes = h * 60 + mi + se / 60
    if not math.isfinite(minutes) or minutes <= 0:
        raise ValueError(f"budget must be a positive time; got {text!r}")
    return minutes * 60.0


def format_budget(seconds: float) -> str:
    """``600`` -> ``"10 min"``, ``5400`` -> ``"1 h 30 min"``."""
    m = int(round(seconds / 60))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if m < 60:
        return f"{m} min"
    h, m = divmod(m, 60)
    return f"{h} h" + (f" {m} min" if m else "")


def profile(name: str = "quick", **overrides: Any) -> ExperimentConfig:
    """A ready configuration.

    * ``tiny``: seconds on a CPU, for tests (a handful of steps, 32 px patches, width 4; the
      units train in the run's own process).
    * ``quick`` (10 minutes), ``standard`` (1 hour), ``overnight`` (8 hours): a wall-clock
      budget for the whole run; the planner chooses resolution, patch, network and step counts
      from the data and the device (training/planning/).

    ``overrides`` use ``section__field=value`` (``stage2__alpha=0.3``) or top-level fields
    (``seed=1``, ``budget_s=1200``).
    """
    if name == "tiny":
        c = ExperimentConfig(
            data=DataConfig(patch_size=32, batch_size=4, prefetch=2, target_spacing=-1),
            model=ModelConfig(width=4, depth=4),
            optim=OptimConfig(precision="fp32"),
            stage1=Stage1Config(
                tasks=["sdm", "rubik"],
                joint_steps=4,
                pretrain_steps=3,
                finetune_steps=3,
                eval_every=2,
                halving=0.0,
                baseline_rung=0.0,
            ),
            stage2=Stage2Config(steps=4, retrain_steps=2, eval_every=2),
            profile="tiny",
            # a few steps per model: a process per unit would cost more than its training
            # (measured: a tiny run's CPU 16 s with a process per unit, 8.6 s in one)
            executor="inline",
        )
        c.optim.lr = 3e-3
    elif name in PRESETS:
        c = ExperimentConfig(budget_s=PRESETS[name], profile=name)
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
