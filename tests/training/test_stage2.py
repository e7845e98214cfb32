"""Stage 2: the teachers' predictions stored once, the semi-supervised student, the moving
average of its weights, and the line that says how it compared with the baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mtssl import api
from napari_mtssl.training.config import DataConfig
from napari_mtssl.training.data.slices import StudyData, augment, augment_with_soft
from napari_mtssl.training.loop import soft_labels, stages
from napari_mtssl.training.loop.terms import build_term
from napari_mtssl.training.loop.terms.semi import (
    CopyPasteSelfTraining,
    _boxes,
    masked_seg_loss,
    own_probs,
)
from napari_mtssl.training.loop.trainer import UnitSpec, train_unit
from napari_mtssl.training.planning.fingerprint import fingerprint
from napari_mtssl.training.planning.planner import make_plan
from napari_mtssl.training.running.pipeline import comparison


@pytest.fixture(scope="module")
def study_cfg(tmp_path_factory):
    ws = api.create_workspace(tmp_path_factory.mktemp("s2") / "ws", source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu")
    plan = make_plan(fingerprint(ws), cfg, "baseline", allocate_steps=False)
    shaped = plan.apply(cfg)
    return ws, StudyData.from_workspace(ws, plan.preprocessing(), plan.patch), shaped


def _teachers(cfg, n=2):
    nets = []
    for i in range(n):
        cfg2 = api.make_config("tiny", device="cpu", seed=10 + i)
        nets.append(stages.new_net(cfg2, 4).eval())
    return nets


def _drive(gen):
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


@pytest.fixture
def seen(monkeypatch):
    """What the semi term's last loss was computed against (``target``, ``weight``)."""
    from napari_mtssl.training.loop.terms import semi

    out = {}
    real = semi.masked_seg_loss

    def spy(logits, target, weight):
        out["target"], out["weight"] = target, weight
        return real(logits, target, weight)

    monkeypatch.setattr(semi, "masked_seg_loss", spy)
    return out


class Sure(torch.nn.Module):
    """A moving average certain of one class everywhere."""

    def __init__(self, num_classes: int, label: int):
        super().__init__()
        self.num_classes, self.label = num_classes, label

    def forward(self, image):
        logits = torch.zeros(image.shape[0], self.num_classes, *image.shape[-2:])
        logits[:, self.label] = 20.0
        return logits


def _inputs(cfg, study, bl, bu, *, gen=None, average=None):
    """A step's inputs for the semi term: the two batches, a fresh network, no progress."""

    class X:
        pass

    x = X()
    x.cfg, x.gen, x.average, x.progress = cfg, gen or torch.Generator().manual_seed(0), average, 0.0
    x.batch = {"semi_l": bl, "semi_u": bu}.__getitem__
    x.net = stages.new_net(cfg, study.num_classes)
    return x


def test_stored_maps_are_the_ensemble_mean_and_are_reused_until_the_teachers_change(
    study_cfg, tmp_path
):
    ws, study, cfg = study_cfg
    teachers = _teachers(cfg)
    dev = torch.device("cpu")
    args = dict(overlap=0.0, precision="fp32")
    got = _drive(soft_labels.attach(study, teachers, ["a", "b"], dev, tmp_path, **args))
    assert got["computed"] == len(study.train) and got["reused"] == 0
    s = study.train[0]
    assert s.soft.dtype == np.uint8 and s.soft.shape == (s.n_slices, 4, *s.shape)
    want = soft_labels._ensemble(teachers, s.image, study.patch, dev, 0.0, "fp32")
    np.testing.assert_allclose(s.soft / 255.0, want, atol=1 / 255 + 1e-6)
    # probabilities: every pixel sums to about 1
    assert np.abs(s.soft.astype(np.float32).sum(1) / 255 - 1).max() < 0.02
    again = _drive(soft_labels.attach(study, teachers, ["b", "a"], dev, tmp_path, **args))
    assert again["reused"] == len(study.train) and again["computed"] == 0
    other = _drive(soft_labels.attach(study, teachers, ["a", "c"], dev, tmp_path, **args))
    assert other["computed"] == len(study.train)  # a member changed: computed again
    # only the chosen scans get maps
    for x in study.train:
        x.soft = None
    part = _drive(soft_labels.attach(study, teachers, ["a", "b"], dev, tmp_path, scans=[1], **args))
    assert part["scans"] == 1 and study.train[1].soft is not None and study.train[0].soft is None


def test_the_stored_map_moves_with_its_image_under_augmentation():
    """Flips, quarter turns and the affine warp move the map exactly as the label."""
    g = torch.Generator().manual_seed(0)
    lab = torch.zeros(6, 32, 32, dtype=torch.long)
    lab[:, 4:14, 6:20] = 1
    lab[:, 18:28, 10:16] = 2
    img = lab[:, None].float() + 0.01 * torch.randn(6, 1, 32, 32, generator=g)
    soft = torch.nn.functional.one_hot(lab, 3).permute(0, 3, 1, 2).float()
    cfg = DataConfig(affine_prob=0.0, intensity_prob=0.0, gamma_prob=0.0)
    x, y, s = augment_with_soft(img, lab, soft, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(s.argmax(1), y)
    # the same draws as without the map
    x2, y2 = augment(img, lab, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    warp = DataConfig(affine_prob=1.0, intensity_prob=0.0, gamma_prob=0.0)
    _, y, s = augment_with_soft(img, lab, soft, warp, torch.Generator().manual_seed(4))
    agree = (s.argmax(1) == y).float().mean()
    assert agree > 0.97  # bilinear map vs nearest label: they differ on edges only


def test_masked_loss_ignores_weightless_pixels_and_copy_paste_boxes_have_their_size():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    w = torch.zeros(2, 8, 8)
    w[:, :4] = 1
    a = masked_seg_loss(logits, target, w)
    other = target.clone()
    other[:, 4:] = (other[:, 4:] + 1) % 3  # changes only where the weight is 0
    assert torch.allclose(a, masked_seg_loss(logits, other, w))
    a.backward()
    assert logits.grad[:, :, 4:].abs().sum() == 0 and logits.grad[:, :, :4].abs().sum() > 0
    m = _boxes(5, 30, 2 / 3, torch.Generator().manual_seed(0))
    assert m.shape == (5, 1, 30, 30) and torch.all(m.sum((1, 2, 3)) == 400)


def test_the_semi_student_learns_from_ground_truth_and_confident_pseudo_labels(study_cfg, tmp_path):
    """A few steps of the default student: finite losses, its unlabelled windows from scans with
    stored maps, and the model it keeps is the moving average of its weights."""
    ws, study, cfg = study_cfg
    teachers = _teachers(cfg)
    dev = torch.device("cpu")
    _drive(soft_labels.attach(study, teachers, ["x"], dev, tmp_path, overlap=0.0, precision="fp32"))
    assert any(s.soft_fg is not None for s in study.train)
    init = stages.new_net(cfg, 4)
    before = {k: v.clone() for k, v in init.state_dict().items()}
    cfg.stage2.ema = 0.5
    res = _drive(stages.student(teachers, study, cfg, dev, None, init=init, steps=3))
    assert not res["stopped"] and res["steps"] == 3 and np.isfinite(res["losses"]["semi"])
    after = res["net"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it learnt
    term = build_term("semi", confidence=0.9)
    assert term.name == "semi"


def test_the_students_average_joins_the_pseudo_labeller_as_the_ramp_rises(study_cfg):
    """Refresh: the ensemble alone at the start, the blend rising to ``refresh`` at the end of the
    ramp; the average's probabilities are its own (eval mode, no gradient), its mode kept."""
    _, _, cfg = study_cfg
    term = CopyPasteSelfTraining(refresh=0.8, refresh_ramp=0.5)
    assert term.refresh_weight(0.0) == 0.0
    assert term.refresh_weight(0.25) == pytest.approx(0.4)
    assert term.refresh_weight(0.5) == pytest.approx(0.8) == term.refresh_weight(0.9)
    assert CopyPasteSelfTraining(refresh=0.0).refresh_weight(0.9) == 0.0
    average = stages.new_net(cfg, 4).train()
    image = torch.randn(2, 1, 32, 32)
    own = own_probs(average, image)
    assert average.training and not own.requires_grad
    assert torch.allclose(own.sum(1), torch.ones(2, 32, 32), atol=1e-5)
    soft = torch.zeros(2, 4, 32, 32)
    soft[:, 0] = 1.0  # the ensemble says background everywhere

    class Inputs:
        progress = 0.25

    x = Inputs()
    x.average = average
    blended = term._refreshed(soft, image, x)
    assert torch.allclose(blended, 0.6 * soft + 0.4 * own, atol=1e-6)
    x.average = None  # no moving average kept (a retrain): the ensemble alone
    assert torch.equal(term._refreshed(soft, image, x), soft)


def test_the_moving_average_is_what_the_unit_keeps(study_cfg):
    _, study, cfg = study_cfg
    net = stages.new_net(cfg, 4)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    spec = UnitSpec("avg", "stage2", 2, [build_term("seg")], evaluate=False, ema=0.9)
    probe = stages.new_net(cfg, 4)
    probe.load_state_dict(start)
    res = _drive(train_unit(spec, net, study, cfg, torch.device("cpu")))
    assert res["steps"] == 2
    # plain training from the same start for the same steps, no average
    spec2 = UnitSpec("raw", "stage2", 2, [build_term("seg")], evaluate=False)
    _drive(train_unit(spec2, probe, study, cfg, torch.device("cpu")))
    k = next(n for n, _ in net.named_parameters())
    kept, raw, init = net.state_dict()[k], probe.state_dict()[k], start[k]
    # the average lies between the start and the trained weights (0.9 of the way back)
    assert not torch.equal(kept, raw)
    assert (kept - init).abs().sum() < (raw - init).abs().sum()


def test_the_comparison_line_says_how_the_student_did_against_the_runs_baseline():
    models = {
        "baseline": {"mean_dice": 0.80},
        "teacher:sdm": {"mean_dice": 0.78},
        "teacher:inpaint": {"mean_dice": 0.81},
        "student": {"mean_dice": 0.84},
    }
    c = comparison(models, {"mean_dice": 0.83})
    assert c["delta"] == pytest.approx(0.04)
    assert c["line"].startswith("student 0.840 mean Dice, better than the baseline of this run")
    assert "best teacher inpaint 0.810" in c["line"] and "ensemble 0.830" in c["line"]
    alone = comparison(models, alone={"mean_dice": 0.82, "budget": "20 min"})
    assert alone["alone"]["delta"] == pytest.approx(0.02)
    assert "the baseline trained alone for the same 20 min: 0.820 (+0.020)" in alone["line"]
    models["student"]["mean_dice"] = 0.75
    assert "worse than" in comparison(models)["line"]
    assert comparison({"baseline": {"mean_dice": 0.8}}) is None


def test_maps_are_stored_for_as_many_scans_as_the_student_can_use(study_cfg):
    _, study, _ = study_cfg
    unl = [i for i, s in enumerate(study.train) if (~s.labelled).any()]
    lab = [i for i, s in enumerate(study.train) if s.labelled.any()]
    assert soft_labels.scans_needed(study, 1, 1, 8) == 8
    assert soft_labels.scans_needed(study, 10_000, 4, 8) > len(study.train)
    one = soft_labels.choose_scans(study, 1, False, 0)
    assert len(one) == 1 and one[0] in unl
    assert one == soft_labels.choose_scans(study, 1, False, 0)  # the same for a seed: reused
    # the paper's student distils on labelled slices too
    assert set(lab) <= set(soft_labels.choose_scans(study, 1, True, 0))
    assert soft_labels.choose_scans(study, 99, False, 0) == unl


def test_the_papers_distillation_reads_the_stored_maps_as_it_would_the_teachers(
    study_cfg, tmp_path
):
    """Stored maps (uint8) give the same distillation loss as running the teachers, to the
    maps' resolution, on the same windows."""
    from napari_mtssl.training.loop.terms.base import SegForward

    _, study, cfg = study_cfg
    teachers = _teachers(cfg)
    dev = torch.device("cpu")
    _drive(soft_labels.attach(study, teachers, ["p"], dev, tmp_path, overlap=0.5, precision="fp32"))
    rng = np.random.default_rng(0)
    b = study.seg_batch(study.all_slices(), 4, rng, soft=True)
    x = torch.from_numpy(b["image"])
    student = stages.new_net(cfg, 4)
    logits = student(x)
    f = SegForward(x, logits, torch.zeros(0), 0, None, torch.from_numpy(b["soft"]).float() / 255)
    live = build_term("kd", teachers=teachers, unlabelled=True)
    stored = build_term("kd", teachers=teachers, unlabelled=True, stored=True)
    assert stored.reads_soft and not live.reads_soft

    class _In:
        net = student

        def seg(self):
            return f

    # the windows' maps come from whole-slice sliding windows, the live teachers see the
    # window alone: close, not equal
    a, c = float(live.loss(_In())), float(stored.loss(_In()))
    assert abs(a - c) < 0.25 * max(a, c)


def _run_stub(spent: float, est: dict, done: dict, student_steps: int, budget: float = 3600):
    """A run's step budget as re-budgeting reads it, without training anything."""
    from types import SimpleNamespace

    from napari_mtssl.ids import What
    from napari_mtssl.training.running.budget import StepBudget

    record = SimpleNamespace(
        cfg=SimpleNamespace(budget_s=budget),
        models={k: {"seconds": v} for k, v in done.items()},
        state={},
        spent=lambda: spent,
        save_state=lambda: None,
        log=lambda e: e,
    )
    plan = SimpleNamespace(
        estimate_s=dict(est), timings={"student": 0.3}, steps={"seg": 1000}, lanes=1
    )
    r = StepBudget(record, plan, What.ALL)
    r.steps = lambda unit: record.state.get("unit_steps", {}).get(unit.model, student_steps)
    r.state = record.state
    return r


def test_the_student_takes_the_time_the_earlier_models_left():
    """Stage 1 ran at 80 % of its timed pace: the student, last, fills the time left at that
    pace (its maps and validations counted), never past twice its planned steps; on a machine
    that ran slower, it gets fewer steps instead."""
    est = {"baseline": 500.0, "teacher": 1000.0, "student": 1800.0}  # 1800 = 5000 x 0.3 + 300
    r = _run_stub(spent=1200.0, est=est, done={"baseline": 400.0, "teacher": 800.0},
                  student_steps=5000)  # fmt: skip
    notes = list(r.rebudget(["student"]))
    new = r.state["unit_steps"]["student"]
    # left 2400 s: (2400 x 0.95 - 300 x 0.8) / (0.3 x 0.8) = 8500 steps
    assert new == 8500 and "8500 steps instead of 5000" in notes[0].message
    used = 300 * 0.8 + new * 0.3 * 0.8
    assert used <= 0.95 * 2400 + 1
    r = _run_stub(spent=300.0, est=est, done={"baseline": 100.0, "teacher": 200.0},
                  student_steps=5000)  # fmt: skip
    list(r.rebudget(["student"]))
    assert r.state["unit_steps"]["student"] == 10000  # capped at twice the plan
    r = _run_stub(spent=2400.0, est=est, done={"baseline": 900.0, "teacher": 1500.0},
                  student_steps=5000)  # fmt: skip
    notes = list(r.rebudget(["student"]))
    # slower than timed: 1200 s left for an 1800 s estimate -> fewer steps, never below the floor
    assert r.state["unit_steps"]["student"] < 5000 and "slower than timed" in notes[0].message


def test_pseudo_labels_keep_each_windows_largest_component():
    from napari_mtssl.training.loop.terms.semi import largest_component_2d

    lab = torch.zeros(2, 16, 16, dtype=torch.int64)
    lab[0, 2:8, 2:8] = 1  # the anatomy
    lab[0, 4:6, 6:8] = 2  # touching it: kept
    lab[0, 12:14, 12:14] = 3  # a stray blob: background
    lab[1, 10:12, 10:12] = 2  # the only blob of the second window: kept
    out = largest_component_2d(lab)
    assert out.dtype == lab.dtype and out.shape == lab.shape
    assert (out[0, 12:14, 12:14] == 0).all()
    assert torch.equal(out[0, :10, :10], lab[0, :10, :10])
    assert torch.equal(out[1], lab[1])


def test_unmixed_pairs_keep_each_window_whole(study_cfg, seen):
    """mix = 0: no box is pasted, each window is trained whole with its own target."""
    _, study, cfg = study_cfg
    term = CopyPasteSelfTraining(mix=0.0)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    lab = study.labelled_slices()
    bl = {k: torch.from_numpy(v) for k, v in study.seg_batch(lab, 2, rng, 0.3).items()}
    bu = {k: torch.from_numpy(v) for k, v in study.seg_batch(lab, 2, rng, 0.3).items()}
    c = study.num_classes  # an unsure ensemble: no pseudo-label is trusted (weight 0)
    bu["soft"] = torch.full((2, c, *bu["image"].shape[-2:]), 255 // c, dtype=torch.uint8)
    bu.pop("label")

    x = _inputs(cfg, study, bl, bu, gen=gen)
    term.loss(x)
    # first half: the unlabelled windows whole (nothing trusted); second half: the labelled
    # windows whole (full weight everywhere). A pasted box would put one into the other.
    assert not seen["weight"][:2].any()
    assert torch.equal(seen["weight"][2:], torch.ones_like(seen["weight"][2:]))
    CopyPasteSelfTraining(mix=1.0).loss(x)
    assert seen["weight"][:2].any() and not seen["weight"][2:].all()


def test_an_online_student_learns_from_its_own_average_with_no_stored_map(study_cfg, seen):
    """The ensemble is the student's own start (no teacher kept): every unlabelled slice is a
    candidate, none needs a stored map, and the pseudo-labels are the moving average's."""
    _, study, cfg = study_cfg
    term = CopyPasteSelfTraining(mix=0.0, online=True, unlabelled_weight=0.5)
    streams = term.streams(study, 4, True)
    rng = np.random.default_rng(0)
    bu = {k: torch.from_numpy(v) for k, v in streams["semi_u"][1](0, rng).items()}
    assert set(bu) == {"image"}  # no stored map, no label array
    lab = study.labelled_slices()
    bl = {k: torch.from_numpy(v) for k, v in study.seg_batch(lab, 2, rng, 0.3).items()}

    x = _inputs(cfg, study, bl, bu, average=Sure(study.num_classes, 2))
    assert torch.isfinite(term.loss(x))
    assert (seen["target"][:2] == 2).all()  # the unlabelled windows: the average's label
    assert torch.allclose(seen["weight"][:2], torch.full_like(seen["weight"][:2], 0.5))
    x.average = None
    with pytest.raises(ValueError, match="moving average"):
        term.loss(x)


def test_a_warm_started_student_restarts_below_the_peak_learning_rate(study_cfg, monkeypatch):
    """``stage2.lr_scale`` lowers the schedule of a student that starts from a trained model,
    not a fresh student's nor a retrain's; the schedule keeps its shape at the lower peak."""
    from napari_mtssl.ids import Stage
    from napari_mtssl.training.loop import trainer

    _, study, cfg = study_cfg
    monkeypatch.setattr(cfg.stage2, "lr_scale", 0.3)
    specs = {}

    def capture(spec, net, *a, **kw):
        specs[spec.stage, spec.name] = spec
        return {"stopped": False, "steps": 0}
        yield  # a generator, as train_unit is

    monkeypatch.setattr(stages, "train_unit", capture)
    teachers = _teachers(cfg, 1)
    dev = torch.device("cpu")
    _drive(stages.student(teachers, study, cfg, dev, None, init=teachers[0], steps=5))
    _drive(stages.student(teachers, study, cfg, dev, None, steps=5, unit="fresh"))
    _drive(stages.student(teachers, study, cfg, dev, None, init=teachers[0], steps=5,
                          unit="retrain", stage=Stage.RETRAIN))  # fmt: skip
    assert specs["stage2", "student"].lr_scale == 0.3
    assert specs["stage2", "fresh"].lr_scale == 1.0
    assert specs["retrain", "retrain"].lr_scale == 1.0
    lr = cfg.optim.lr
    assert trainer._lr(cfg, 0, 100, 0.3) == pytest.approx(0.3 * trainer._lr(cfg, 0, 100))
    assert trainer._lr(cfg, 99, 100, 0.3) == pytest.approx(0.3 * trainer._lr(cfg, 99, 100))
    assert trainer._lr(cfg, 0, 100, 0.3) <= 0.3 * lr < trainer._lr(cfg, 0, 100)


def test_a_step_can_hold_more_labelled_than_unlabelled_windows(study_cfg, seen):
    """``labelled_share`` splits a step's windows: 6 labelled and 2 unlabelled of 8, the six
    with their ground truth at full weight (two paired, four whole), the two with the
    pseudo-labels, as many images as a baseline step."""
    _, study, cfg = study_cfg
    term = CopyPasteSelfTraining(mix=1.0, online=True, labelled_share=0.75)
    assert term.split(8) == (6, 2) and CopyPasteSelfTraining().split(8) == (4, 4)
    assert CopyPasteSelfTraining(labelled_share=0.99).split(8) == (7, 1)
    streams = term.streams(study, 8, True)
    rng = np.random.default_rng(0)
    bu = {k: torch.from_numpy(v) for k, v in streams["semi_u"][1](0, rng).items()}
    bl = {k: torch.from_numpy(v) for k, v in streams["semi_l"][1](0, rng).items()}
    assert bl["image"].shape[0] == 6 and bu["image"].shape[0] == 2

    x = _inputs(cfg, study, bl, bu, average=Sure(study.num_classes, 3))
    assert torch.isfinite(term.loss(x))
    target, weight = seen["target"], seen["weight"]
    assert target.shape[0] == 8
    whole = slice(4, 8)  # the four labelled windows beyond the pairs: ground truth, weight 1
    assert (weight[whole] == 1).all() and not (target[whole] == 3).all()
