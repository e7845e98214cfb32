"""When a unit validates: at a multiple of its interval only where that many steps are left
after it (its pace moves the end), at its end, and never twice on the same model."""

from __future__ import annotations

import time

import torch

from napari_mtssl import api
from napari_mtssl.training.loop import stages, trainer
from napari_mtssl.training.loop.terms import build_term
from napari_mtssl.training.loop.trainer import UnitSpec, _Validation, train_unit


def _due_steps(every: int, total: int) -> list[int]:
    spec = UnitSpec("baseline", "baseline", 571, [build_term("seg")], model="baseline",
                    eval_every=every)  # fmt: skip

    class Study:
        val = [object()]

    check = _Validation(spec, None, Study(), None, None, "fp32")
    return [s for s in range(1, total + 1) if check.due(s, total)]


def test_a_unit_validating_at_its_end_validates_once_when_its_pace_grows_the_count():
    # a budgeted run plans one validation, at the planned count (571); the pace grew it to 612:
    # the planned end is no longer the end, and is not validated
    assert _due_steps(571, 612) == [612]
    assert _due_steps(571, 571) == [571]
    assert _due_steps(571, 540) == [540]  # shrunk: at the new end


def test_a_halfway_validation_is_not_repeated_just_before_the_end():
    # halfway of 571 is 285; its second multiple, 570, is one step before the end
    assert _due_steps(285, 571) == [285, 571]
    assert _due_steps(100, 400) == [100, 200, 300, 400]


def test_a_unit_ended_by_its_deadline_just_after_a_pass_scores_that_pass(tiny_study, monkeypatch):
    study, cfg = tiny_study
    calls = []
    predict = trainer.predict_labelled

    def counted(*a, **kw):
        calls.append(1)
        return predict(*a, **kw)

    monkeypatch.setattr(trainer, "predict_labelled", counted)
    scored = []  # the hd95 flag of each scoring
    score = trainer.score_predictions
    monkeypatch.setattr(
        trainer, "score_predictions", lambda *a, hd95: scored.append(hd95) or score(*a, hd95=hd95)
    )
    spec = UnitSpec("baseline", "baseline", 4, [build_term("seg")], model="baseline", eval_every=1)
    net = stages.new_net(cfg, study.num_classes)
    # a deadline already past: the first step is taken, validated (every step), and the unit
    # ends there; its final scores (with HD95) come from the maps of that pass
    res = api.run(train_unit(spec, net, study, cfg, torch.device("cpu"), deadline=time.monotonic()))
    assert res["ended_early"] and res["steps"] == 1
    assert len(calls) == 1
    assert scored == [False, True]  # the pass at step 1, then its maps scored with HD95
    assert res["metrics"] is not None


def test_a_passes_maps_are_let_go_at_the_next_step(tiny_study, monkeypatch):
    # kept past the next step they would hold every validation scan's label map while the unit
    # trains on (hundreds of MB for large CT studies), for nothing: the model has moved on
    study, cfg = tiny_study
    calls = []
    predict = trainer.predict_labelled
    monkeypatch.setattr(
        trainer, "predict_labelled", lambda *a, **kw: calls.append(1) or predict(*a, **kw)
    )
    spec = UnitSpec("baseline", "baseline", 4, [build_term("seg")], model="baseline", eval_every=2)
    net = stages.new_net(cfg, study.num_classes)
    check = _Validation(spec, net, study, cfg, torch.device("cpu"), "fp32")
    first = check.scores(hd95=False, step=2)
    again = check.scores(hd95=True, step=2)  # the same model: its maps, with HD95
    assert len(calls) == 1 and again["mean_dice"] == first["mean_dice"]
    check.forget()  # what the loop does when it takes the next step
    assert check._last is None
    check.scores(hd95=False, step=2)
    assert len(calls) == 2
