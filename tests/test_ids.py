"""The typed vocabularies of ids.py keep the strings the workspace, the events and the units
stored before they were types."""

from __future__ import annotations

import json

import pytest

from napari_mtssl.ids import STUDENT, ModelId, Stage, What


def test_stages_are_the_strings_events_and_units_carried():
    assert [s.value for s in Stage] == ["baseline", "stage1", "all_joint", "stage2", "retrain"]
    assert Stage("retrain") is Stage.RETRAIN and Stage.STAGE2 == "stage2"
    assert f"{Stage.ALL_JOINT}" == "all_joint" and json.dumps([Stage.STAGE1]) == '["stage1"]'
    with pytest.raises(ValueError):
        Stage("stage3")


def test_retrains_are_the_two_rounds_after_corrections():
    assert [w for w in What if w.is_retrain] == [What.RETRAIN_QUICK, What.RETRAIN_STAGE2]


def test_a_unit_and_its_spec_read_a_stage_from_its_json_string():
    from napari_mtssl.training.loop.terms import build_term
    from napari_mtssl.training.loop.trainer import UnitSpec
    from napari_mtssl.training.running.units import Unit

    unit = Unit("student", "student", "student", 10, stage=Stage.RETRAIN)
    d = unit.to_dict()
    assert d["stage"] == "retrain" and type(d["stage"]) is str and json.loads(json.dumps(d)) == d
    back = Unit.from_dict(json.loads(json.dumps(d)))
    assert back == unit and back.stage is Stage.RETRAIN
    assert Unit("baseline", "baseline", "baseline", 1).stage is Stage.STAGE2  # the default
    spec = UnitSpec("u", "stage1", 2, [build_term("seg")])
    assert spec.stage is Stage.STAGE1
    with pytest.raises(ValueError):
        UnitSpec("u", "stage3", 2, [])


def test_a_round_reads_what_its_run_trained():
    from napari_mtssl.workspace import Round

    r = Round.from_dict({"round": 3, "what": "retrain-quick"})
    assert r.what is What.RETRAIN_QUICK and r.to_dict()["what"] == "retrain-quick"
    assert type(r.to_dict()["what"]) is str and Round.from_dict(r.to_dict()) == r
    assert Round.from_dict({"what": "no such run"}).what is None
    assert (
        Round.from_dict({"what": 3}).what is None and Round.from_dict({}).to_dict()["what"] is None
    )


def test_every_unit_is_named_by_a_model_id():
    """A unit writes a model, named as ModelId names it: a retrain is the student's stage, and
    a pseudo-name such as the "student (retrain)" of earlier plans is refused."""
    from napari_mtssl.training.running.units import Unit

    unit = Unit("sdm:joint@rung", "sdm:joint", "mode", 5, "sdm", "joint")
    assert unit.model_id == ModelId("task", "sdm", "joint")
    assert Unit("student", "student", "student", 3, stage=Stage.RETRAIN).model_id == STUDENT
    with pytest.raises(ValueError, match="not a model name"):
        Unit("student (retrain)", "student (retrain)", "student", 3)
