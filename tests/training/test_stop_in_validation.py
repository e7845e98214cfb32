"""A stop request that arrives while a unit validates is answered at the next slab of windows,
not after the whole validation pass; the unit is saved at that step and resumes from it."""

from __future__ import annotations

import pytest
import torch

from napari_mtssl import api
from napari_mtssl.training import stages
from napari_mtssl.training.data import StudyData
from napari_mtssl.training.plan import fingerprint, make_plan
from napari_mtssl.training.terms import build_term
from napari_mtssl.training.trainer import UnitSpec, train_unit


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ws = api.create_workspace(tmp_path_factory.mktemp("stop") / "ws", source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu")
    plan = make_plan(fingerprint(ws), cfg, "baseline", allocate_steps=False)
    return StudyData.from_workspace(ws, plan.preprocessing(), plan.patch), plan.apply(cfg)


def _drive(gen, events=None):
    while True:
        try:
            ev = next(gen)
        except StopIteration as done:
            return done.value
        if events is not None:
            events.append(ev)


def test_a_stop_during_validation_ends_the_unit_there_and_it_resumes(tiny, tmp_path):
    study, cfg = tiny
    spec = UnitSpec("baseline", "baseline", 4, [build_term("seg")], model="baseline", eval_every=2)
    calls = {"n": 0}

    def stop() -> bool:  # the loop asks once per step; the third question is the validation's
        calls["n"] += 1
        return calls["n"] >= 3

    net = stages.new_net(cfg, study.num_classes)
    dev = torch.device("cpu")
    events: list[dict] = []
    res = _drive(train_unit(spec, net, study, cfg, dev, ckpt_dir=tmp_path, stop=stop), events)
    assert res == {"stopped": True, "step": 2, "name": "baseline"}
    # it ended inside the validation of step 2: no progress event for step 2 came (a stop seen
    # only at the next step would have come after the whole pass and step 2's event)
    assert [e["step"] for e in events if e["type"] == "progress"] == [1]
    assert list(tmp_path.glob("baseline*"))  # its resumable checkpoint

    net2 = stages.new_net(cfg, study.num_classes)
    res2 = _drive(train_unit(spec, net2, study, cfg, dev, ckpt_dir=tmp_path, stop=lambda: False))
    assert not res2["stopped"] and res2["steps"] == 4 and res2["val_dice"] is not None
