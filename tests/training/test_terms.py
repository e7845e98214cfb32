"""The loop knows only loss terms: the registry, the student's mix, a new term in one class."""

from __future__ import annotations

import pytest
import torch

from napari_mtssl import api
from napari_mtssl.training.data.slices import StudyData
from napari_mtssl.training.loop import stages, terms
from napari_mtssl.training.loop.terms import TERMS, Term, build_term
from napari_mtssl.training.loop.trainer import UnitSpec, train_unit
from napari_mtssl.training.planning.fingerprint import fingerprint
from napari_mtssl.training.planning.planner import make_plan


@pytest.fixture(scope="module")
def study_cfg(tmp_path_factory):
    ws = api.create_workspace(tmp_path_factory.mktemp("t") / "ws", source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu")
    plan = make_plan(fingerprint(ws), cfg, "baseline", allocate_steps=False)
    shaped = plan.apply(cfg)
    return StudyData.from_workspace(ws, plan.preprocessing(), plan.patch), shaped


def _nets(cfg, n=2):
    return [stages.new_net(cfg, 4) for _ in range(n)]


def test_unknown_term_names_the_valid_ones():
    with pytest.raises(ValueError, match="Valid terms: seg, task, kd, feature_kd"):
        build_term("kdd")


def test_student_mix_leaves_out_terms_of_zero_weight():
    cfg = api.make_config("tiny")
    teachers, net = _nets(cfg), stages.new_net(cfg, 4)
    cfg.stage2.alpha = 0.0
    assert [(t.name, t.weight) for t in stages.distillation_terms(teachers, net, cfg)] == [
        ("seg", 1.0)
    ]
    cfg.stage2.alpha = 1.0
    assert [t.name for t in stages.distillation_terms(teachers, net, cfg)] == ["kd"]
    cfg.stage2.alpha, cfg.stage2.feature_distillation = 0.3, True
    got = [(t.name, round(t.weight, 6)) for t in stages.distillation_terms(teachers, net, cfg)]
    assert got == [("seg", 0.7), ("kd", 0.3), ("feat", cfg.stage2.feature_weight)]


class _Counting(Term):
    """Reads the shared segmentation forward and counts how often the network ran."""

    name = "count"
    reads_seg = True

    def __init__(self, weight=0.0, calls=None):
        super().__init__(weight)
        self.calls = calls

    def loss(self, x):
        return x.seg().logits.float().mean() * 0


class _WeightDecay(Term):
    """A new kind of term: an L2 pull of the network's weights towards zero."""

    name = "l2"

    def loss(self, x):
        return sum((p.float() ** 2).sum() for p in x.net.parameters())


def test_a_new_term_is_one_class_and_one_registry_line(study_cfg, monkeypatch):
    study, cfg = study_cfg
    monkeypatch.setitem(TERMS, "l2", _WeightDecay)
    net = stages.new_net(cfg, study.num_classes)
    spec = UnitSpec("u", "baseline", 4, [build_term("seg"), build_term("l2", weight=1e-3)])
    events = []
    res = api.run(train_unit(spec, net, study, cfg, torch.device("cpu")), events.append)
    losses = [e.losses for e in events if e.type == "progress"]
    assert [e.step for e in events if e.type == "progress"] == [1, 2, 3, 4]
    assert set(losses[-1]) == {"seg", "l2", "total"}
    assert losses[-1]["l2"] < losses[0]["l2"]  # the term trains
    assert res["steps"] == 4 and res["val_dice"] is not None


def test_terms_share_one_forward_of_the_segmentation_batch(study_cfg, monkeypatch):
    study, cfg = study_cfg
    net = stages.new_net(cfg, study.num_classes)
    calls = []
    forward = type(net).forward
    monkeypatch.setattr(type(net), "forward", lambda self, x: calls.append(1) or forward(self, x))
    spec = UnitSpec(
        "u", "baseline", 3, [build_term("seg"), _Counting(), _Counting()], evaluate=False
    )
    api.run(train_unit(spec, net, study, cfg, torch.device("cpu")))
    assert len(calls) == 3  # one forward a step, whatever the number of terms reading it


def test_seg_term_needs_labelled_slices(study_cfg):
    study, cfg = study_cfg

    class _NoLabels:
        def __getattr__(self, name):
            return getattr(study, name)

        def labelled_slices(self):
            return []

    spec = UnitSpec("u", "baseline", 2, [terms.build_term("seg")], evaluate=False)
    net = stages.new_net(cfg, study.num_classes)
    with pytest.raises(ValueError, match="no labelled training slices"):
        api.run(train_unit(spec, net, _NoLabels(), cfg, torch.device("cpu")))
