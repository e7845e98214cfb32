"""Damaged or hostile model files, sidecars and run state: a message naming the file."""

from __future__ import annotations

import json

import pytest
import torch

from napari_mtssl import api
from napari_mtssl.training.loop import checkpoints
from tests.faults.conftest import classify


@pytest.fixture
def run(trained_workspace):
    """The baseline run of the session's trained workspace (its files are copied, not changed)."""
    (only,) = trained_workspace.runs()
    return only


def _copy(run, tmp_path):
    src = run.model_path("baseline")
    dst = tmp_path / "baseline.safetensors"
    dst.write_bytes(src.read_bytes())
    dst.with_suffix(".json").write_text(src.with_suffix(".json").read_text())
    return dst


def _side(path, change):
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    change(meta)
    side.write_text(json.dumps(meta))


CASES = {
    "truncated weights": lambda p: p.write_bytes(p.read_bytes()[:100]),
    "garbage weights": lambda p: p.write_bytes(b"\0" * 64),
    "missing weights": lambda p: p.unlink(),
    "garbage sidecar": lambda p: p.with_suffix(".json").write_text("{nope"),
    "missing sidecar": lambda p: p.with_suffix(".json").unlink(),
    "sidecar width does not match": lambda p: _side(p, lambda m: m.update(width=m["width"] * 2)),
    "sidecar asks for width 200000": lambda p: _side(p, lambda m: m.update(width=200_000)),
    "sidecar asks for 10^8 classes": lambda p: _side(p, lambda m: m.update(out_channels=10**8)),
    "sidecar depth as text": lambda p: _side(p, lambda m: m.update(depth="deep")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_model_files(case, run, tmp_path, recorder):
    p = _copy(run, tmp_path)
    CASES[case](p)
    outcome, detail = classify(
        lambda: checkpoints.load_model(p), names=[p, p.with_suffix(".json")], expect_error=True
    )
    recorder.record(case, outcome, detail)
    assert outcome == "clear message", detail


def test_damaged_pipeline_state_on_resume(tmp_path, recorder):
    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu", baseline__steps=6)
    seen = {"n": 0}

    def count(ev):
        seen["n"] += ev.type == "progress"

    rep = api.run(api.train(ws, cfg, "baseline", stop=lambda: seen["n"] >= 2), count)
    run = ws.run(rep["run"])
    (run.path / "pipeline.json").write_text("garbage")
    outcome, detail = classify(
        lambda: api.run(api.train(ws, cfg, "baseline", resume=run.id)),
        names=[run.path / "pipeline.json"],
        expect_error=True,
    )
    recorder.record("garbage pipeline.json", outcome, detail)
    assert outcome == "clear message", detail


def test_torn_checkpoint_restarts_the_unit(tmp_path, recorder):
    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu", baseline__steps=6)
    seen = {"n": 0}

    def count(ev):
        seen["n"] += ev.type == "progress"

    rep = api.run(api.train(ws, cfg, "baseline", stop=lambda: seen["n"] >= 3), count)
    run = ws.run(rep["run"])
    state = next(run.checkpoint_dir.glob("*.safetensors"))
    state.write_bytes(state.read_bytes()[:50])
    events: list[dict] = []
    outcome, detail = classify(
        lambda: api.run(api.train(ws, cfg, "baseline", resume=run.id), events.append),
        names=[],
        expect_error=False,
        check=lambda r: r["models"]["baseline"]["steps"] == 6,
    )
    notes = [e.message for e in events if e.type == "note"]
    recorder.record("torn checkpoint on resume", outcome, detail)
    assert outcome == "read correctly", detail
    assert any("starts again" in n and state.name in n for n in notes), notes


def test_model_loads_on_cpu(run):
    net, meta = checkpoints.load_model(run.model_path("baseline"))
    assert isinstance(net, torch.nn.Module) and meta["name"] == "baseline"
