"""A stop request that arrives while a unit validates is answered at the next slab of windows,
not after the whole validation pass; the unit is saved at that step and resumes from it."""

from __future__ import annotations

import torch

from napari_mtssl import api
from napari_mtssl.training.loop import stages
from napari_mtssl.training.loop.terms import build_term
from napari_mtssl.training.loop.trainer import UnitSpec, train_unit


def test_a_stop_during_validation_ends_the_unit_there_and_it_resumes(tiny_study, tmp_path):
    study, cfg = tiny_study
    spec = UnitSpec("baseline", "baseline", 4, [build_term("seg")], model="baseline", eval_every=2)
    calls = {"n": 0}

    def stop() -> bool:  # the loop asks once per step; the third question is the validation's
        calls["n"] += 1
        return calls["n"] >= 3

    net = stages.new_net(cfg, study.num_classes)
    dev = torch.device("cpu")
    events: list[dict] = []
    res = api.run(
        train_unit(spec, net, study, cfg, dev, ckpt_dir=tmp_path, stop=stop), events.append
    )
    assert res == {"stopped": True, "step": 2, "name": "baseline"}
    # it ended inside the validation of step 2: no progress event for step 2 came (a stop seen
    # only at the next step would have come after the whole pass and step 2's event)
    assert [e.step for e in events if e.type == "progress"] == [1]
    assert list(tmp_path.glob("baseline*"))  # its resumable checkpoint

    net2 = stages.new_net(cfg, study.num_classes)
    res2 = api.run(train_unit(spec, net2, study, cfg, dev, ckpt_dir=tmp_path, stop=lambda: False))
    assert not res2["stopped"] and res2["steps"] == 4 and res2["val_dice"] is not None
