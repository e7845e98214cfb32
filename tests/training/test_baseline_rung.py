"""Teachers held against the run's baseline at their rung: a teacher not ahead of it stops
there, joins no ensemble, and the student gets its time; one ahead of it trains to the end."""

from __future__ import annotations

import json

import pytest

from napari_mtssl import api
from napari_mtssl.training.running.halving import Stage1Decisions
from napari_mtssl.training.running.pipeline import run_training


def _train(tmp_path, monkeypatch, bar):
    ws = api.create_workspace(tmp_path / "w", source="sample", labelled=2)
    cfg = api.make_config(
        "tiny",
        device="cpu",
        tasks=["sdm"],
        stage1__modes="pretrain",
        stage1__baseline_rung=0.5,
    )
    seen = {}
    real = Stage1Decisions.bar

    def bar_at(self, at):
        seen["real"] = real(self, at)  # what the baseline's probe measured at the rung
        seen["at"] = at
        return bar if bar is not None else seen["real"]

    monkeypatch.setattr(Stage1Decisions, "bar", bar_at)
    events: list[dict] = []
    rep = api.run(run_training(ws, cfg, "all"), events.append)
    state = json.loads((ws.run(rep["run"]).path / "pipeline.json").read_text())
    return cfg, rep, events, state, seen


@pytest.mark.slow
def test_a_teacher_not_ahead_of_the_baseline_stops_at_its_rung(tmp_path, monkeypatch):
    cfg, rep, events, state, seen = _train(tmp_path, monkeypatch, bar=1.0)
    rung = round(0.5 * cfg.stage1.finetune_steps)
    # the baseline was validated at the rung: that score is the bar
    probe = state["baseline_probe"]
    assert probe["step"] == rung == seen["at"]
    assert 0.0 <= probe["dice"] <= 1.0 and seen["real"] == probe["dice"]
    # the teacher stopped there, marked, and left out of the ensemble with the reason
    assert rep["models"]["sdm:pretrain"]["steps"] == rung
    assert rep["models"]["sdm:pretrain"]["halted_by"] == "not ahead of the baseline"
    (halving,) = [e for e in events if e.type == "halving"]
    assert halving.continue_ == [] and "not ahead of the baseline" in halving.reason
    assert rep["selected"]["sdm"]["halving"]["baseline"] == 1.0
    assert rep["selected"]["sdm"]["halving"]["at_steps"] == rung
    assert rep["teachers"]["models"] == ["baseline"]
    assert "teacher:sdm" in rep["teachers"]["dropped"]
    assert "not ahead of the baseline" in rep["teachers"]["dropped"]["teacher:sdm"]
    assert rep["models"]["student"]["steps"] > 0


@pytest.mark.slow
def test_a_teacher_ahead_of_the_baseline_trains_to_the_end(tmp_path, monkeypatch):
    cfg, rep, events, state, _ = _train(tmp_path, monkeypatch, bar=-1.0)
    assert rep["models"]["sdm:pretrain"]["steps"] == cfg.stage1.finetune_steps
    assert "halted_by" not in rep["models"]["sdm:pretrain"]
    (halving,) = [e for e in events if e.type == "halving"]
    assert halving.continue_ == ["pretrain"]
    assert "teacher:sdm" in rep["teachers"]["models"]


@pytest.mark.slow
def test_the_rung_is_off_for_the_papers_student(tmp_path):
    ws = api.create_workspace(tmp_path / "w", source="sample", labelled=2)
    cfg = api.make_config(
        "tiny", device="cpu", tasks=["sdm"], stage1__modes="pretrain", stage2__method="paper"
    )
    cfg.stage1.baseline_rung = 0.5
    rep = api.run(run_training(ws, cfg, "all"))
    assert rep["models"]["sdm:pretrain"]["steps"] == cfg.stage1.finetune_steps
    assert not rep["selected"]["sdm"].get("halving")


def test_rung_config_is_checked():
    with pytest.raises(ValueError, match="baseline_rung"):
        api.make_config("tiny", stage1__baseline_rung=1.5)
    with pytest.raises(ValueError, match="baseline_lead"):
        api.make_config("tiny", stage1__baseline_lead=2.0)
