"""Ranking strategies, proposals and the simulated annotator (``napari-mtssl simulate``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_mtssl import active, api
from napari_mtssl.cli import main
from napari_mtssl.simulate import Settings, _Simulation, annotator_name, simulate
from napari_mtssl.training.prediction import ranking
from tests.test_api import make_dataset

CASES = tuple(f"patient00{i}_frame01" for i in range(1, 7))


def _data(root):
    return make_dataset(root, cases=CASES, val=("patient009_frame01",), shape=(40, 48, 6))


# -- ranking ------------------------------------------------------------------------------------


def test_rank_takes_the_highest_scores_best_first():
    cands = {"a": [0, 1, 2], "b": [0, 1]}
    scores = {"a": np.array([0.1, 0.9, 0.3]), "b": np.array([0.5, 0.2])}
    got = ranking.rank("entropy", cands, 3, scores=scores)
    assert [(c.scan, c.z) for c in got] == [("a", 1), ("b", 0), ("a", 2)]
    assert got[0].score == pytest.approx(0.9)
    assert "rank 1 of 5" in got[0].reason and "unsure" in got[0].reason


def test_rank_only_proposes_candidates_and_takes_what_there_is():
    # slice 1 of "a" scores highest but is not a candidate (somebody labelled it)
    scores = {"a": np.array([0.1, 5.0, 0.3])}
    got = ranking.rank("disagreement", {"a": [0, 2]}, 10, scores=scores)
    assert [c.z for c in got] == [2, 0]


def test_fg_random_only_draws_slices_showing_structures():
    fg = {"a": np.array([True, False, True, False]), "b": np.array([False, False])}
    cands = {"a": [0, 1, 2, 3], "b": [0, 1]}
    for seed in range(5):
        got = ranking.rank("fg_random", cands, 4, foreground=fg, rng=np.random.default_rng(seed))
        assert sorted((c.scan, c.z) for c in got) == [("a", 0), ("a", 2)]
        assert "showing the structures" in got[0].reason


def test_random_is_reproducible_by_seed_and_varies_between_seeds():
    cands = {"a": list(range(50))}

    def draw(seed):
        return [c.z for c in ranking.rank("random", cands, 5, rng=np.random.default_rng(seed))]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert len(set(draw(3))) == 5


def test_scores_measure_what_they_say():
    sure = np.zeros((2, 3, 4, 4), np.float32)  # (classes, slices, y, x)
    sure[0] = 1.0  # every slice: background with certainty
    unsure = sure.copy()
    unsure[:, 1] = 0.5  # slice 1: a coin flip
    ent = ranking.entropy_scores(unsure)
    assert ent[1] == pytest.approx(np.log(2), rel=1e-3) and ent[0] < 1e-5
    other = sure.copy()
    other[:, 2] = 0.0
    other[1, 2] = 1.0  # a second teacher says class 1 on slice 2, confidently
    dis = ranking.disagreement_scores([sure, other])
    assert dis[2] == pytest.approx(np.log(2), rel=1e-3) and dis[0] < 1e-5
    pred = np.zeros((3, 4, 4), np.uint8)
    truth = pred.copy()
    truth[1, :2] = 1
    assert ranking.error_scores(pred, truth).tolist() == [0, 8, 0]
    assert ranking.foreground_slices(truth).tolist() == [False, True, False]


def test_unknown_strategy_is_named():
    with pytest.raises(ValueError, match="unknown strategy 'bald'.*disagreement"):
        ranking.rank("bald", {"a": [0]}, 1)
    with pytest.raises(ValueError, match="unknown strategy"):
        Settings(data="d", out="o", strategies=["bald"]).check()


# -- the simulated annotator --------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    data = _data(root / "data")
    out = root / "out"
    args = ["simulate", str(data), "--out", str(out), "--labelled", "2", "--per-round", "4"]
    args += ["--rounds", "2", "--strategy", "disagreement,none", "--profile", "tiny", "--quiet"]
    rc = main(args)
    return rc, data, out


@pytest.mark.slow
def test_simulate_command_writes_rounds_report_and_plot(simulated):
    rc, _, out = simulated
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["finished"] and set(res["strategies"]) == {"disagreement", "none"}
    rounds = res["strategies"]["disagreement"]["rounds"]
    assert [r["corrected"] for r in rounds] == [0, 4, 8]
    assert all(0.0 <= r["mean_dice"] <= 1.0 for r in rounds)
    assert rounds[-1]["stage2"]["run"].endswith("retrain-stage2")  # a full stage 2 at the end
    assert [r["corrected"] for r in res["strategies"]["none"]["rounds"]] == [0, 0, 0]
    assert res["reference"]["steps"] == res["initial"]["baseline"]["steps"]
    md = (out / "report.md").read_text()
    assert "| disagreement |" in md and "baseline with 7 labelled patients" in md
    assert (out / "dice_vs_corrected.png").stat().st_size > 5000


@pytest.mark.slow
def test_simulated_corrections_are_recorded_like_a_persons(simulated):
    _, _, out = simulated
    ws = api.open_workspace(out / "disagreement" / "workspace")
    state = json.loads((out / "disagreement" / "state.json").read_text())
    first = state["rounds"][1]["picked"]
    assert len(first) == 4 and all("teachers disagree" in c["reason"] for c in first)
    for c in first:
        assert ws.slice_status(c["scan"])[c["z"]] == "corrected"
        prov = ws.provenance(c["scan"], c["z"])[-1]
        assert prov["status"] == "corrected"
        assert prov["by"] == annotator_name("disagreement", 1)
    # the control workspace was never corrected, and the initial one is untouched
    for name in ("none/workspace", "initial"):
        w = api.open_workspace(out / name)
        assert not any(s == "corrected" for sid in w.scan_ids("train") for s in w.slice_status(sid))


def test_simulated_annotator_never_overwrites_a_persons_slice(tmp_path):
    data = _data(tmp_path / "data")
    s = Settings(data=str(data), out=str(tmp_path / "out"), labelled=2, profile="tiny")
    ws = api.create_workspace(tmp_path / "ws", data, labelled=2)
    sim = _Simulation(s, None)
    truth = sim.truth(ws)
    sid = next(iter(active.candidates(ws)))
    mine = np.zeros(ws.record(sid).shape, np.uint8)
    mine[0, :5, :5] = 2
    ws.set_labels(sid, mine, slices=[0], status="annotated", by="user")
    assert 0 not in active.candidates(ws)[sid]  # no longer proposed
    picked = [{"scan": sid, "z": 0}, {"scan": sid, "z": 1}]
    assert sim.correct(ws, "random", 1, picked, truth) == 1
    assert (ws.labels(sid)[0] == mine[0]).all()
    assert ws.provenance(sid, 0)[-1]["by"] == "user"
    assert (ws.labels(sid)[1] == truth[sid][1]).all()


@pytest.mark.slow
def test_more_slices_than_there_are_takes_them_all_and_says_so(tmp_path):
    data = _data(tmp_path / "data")
    s = Settings(
        data=str(data),
        out=str(tmp_path / "out"),
        strategies=["random"],
        labelled=2,
        per_round=100,
        rounds=1,
        stage2="none",
        reference=0,
        profile="tiny",
    )
    events = []
    res = api.run(simulate(s), events.append)
    notes = [e.message for e in events if e.type == "simulate_note"]
    assert any("100 slices asked for, only 24" in n for n in notes), notes
    assert res["strategies"]["random"]["rounds"][-1]["corrected"] == 24


@pytest.mark.slow
def test_a_stopped_simulation_resumes_at_its_last_finished_round(tmp_path):
    data = _data(tmp_path / "data")
    kw = dict(data=str(data), out=str(tmp_path / "out"), strategies=["entropy"], labelled=2)
    kw.update(per_round=3, rounds=2, stage2="none", reference=0, profile="tiny")
    seen = {"retrains": 0}

    def stop():  # stop inside round 2's retraining, after its corrections were written
        return seen["retrains"] >= 2

    def count(ev):
        if ev.type == "start" and ev.what == "retrain-quick":
            seen["retrains"] += 1

    stopped = api.run(simulate(Settings(**kw), stop=stop), count)
    assert stopped is not None and stopped["finished"] is False
    state = json.loads((tmp_path / "out" / "entropy" / "state.json").read_text())
    assert len(state["rounds"]) == 2 and state["pending"]["round"] == 2
    pending = [(c["scan"], c["z"]) for c in state["pending"]["picked"]]
    res = api.run(simulate(Settings(**kw)))
    rounds = res["strategies"]["entropy"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [(c["scan"], c["z"]) for c in rounds[2]["picked"]] == pending  # the same slices
    assert rounds[2]["corrected"] == 6


@pytest.mark.slow
def test_other_settings_in_the_same_folder_are_refused(simulated, capsys):
    _, data, out = simulated
    rc = main(["simulate", str(data), "--out", str(out), "--labelled", "3", "--profile", "tiny"])
    assert rc == 2
    assert "other settings (labelled" in capsys.readouterr().err


def test_simulate_refuses_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    (tmp_path / "scans").mkdir()
    assert main(["simulate", str(tmp_path / "scans"), "--out", str(tmp_path / "o")]) == 2
    assert "not a dataset folder" in capsys.readouterr().err


# -- proposals for the correction dock ----------------------------------------------------------


@pytest.mark.slow
def test_propose_slices_from_the_trained_models(simulated):
    _, _, out = simulated
    ws = api.open_workspace(out / "none" / "workspace")
    for strategy in ("disagreement", "entropy", "fg_random"):
        got = api.propose_slices(ws, 5, strategy, device="cpu")
        assert len(got) == 5
        free = active.candidates(ws)
        assert all(c.z in free[c.scan] for c in got)
        assert all(c.reason for c in got)
    with pytest.raises(ValueError, match="simulations only"):
        api.propose_slices(ws, 5, "oracle")


def _ranked_scans(ws, strategy: str, **kw) -> tuple[list, list[str]]:
    """Proposals and the scans ranked for them, in order (from the progress callback)."""
    seen: list[str] = []
    got = api.propose_slices(
        ws, 3, strategy, device="cpu", progress=lambda i, n, sid: seen.append(sid), **kw
    )
    return got, [sid for sid in seen if sid]  # the last call says "done" with no scan


@pytest.mark.slow
def test_propose_ranks_a_bounded_sample_of_scans_and_can_be_cancelled(simulated):
    _, _, out = simulated
    ws = api.open_workspace(out / "none" / "workspace")
    free = active.candidates(ws)
    assert len(free) >= 3
    for strategy in ("entropy", "fg_random"):
        got, ranked = _ranked_scans(ws, strategy, max_scans=2)
        assert 1 <= len(ranked) <= 2 and set(ranked) <= set(free)
        assert got and {c.scan for c in got} <= set(ranked)
        assert all(c.z in free[c.scan] for c in got)
    # the same seed draws the same scans; without a bound, every candidate scan is ranked
    assert (
        _ranked_scans(ws, "entropy", max_scans=2)[1] == _ranked_scans(ws, "entropy", max_scans=2)[1]
    )
    assert sorted(_ranked_scans(ws, "entropy")[1]) == sorted(free)

    def cancel_after_one(i: int, n: int, sid: str) -> None:
        if i >= 1:
            raise active.Cancelled

    with pytest.raises(active.Cancelled):
        api.propose_slices(ws, 3, "entropy", device="cpu", progress=cancel_after_one)
    with pytest.raises(ValueError, match="max_scans"):
        api.propose_slices(ws, 3, "entropy", device="cpu", max_scans=0)
