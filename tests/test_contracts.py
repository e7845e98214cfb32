"""The typed contracts between layers: model ids, events, history rounds."""

from __future__ import annotations

import json

import pytest

from napari_mtssl import events as ev
from napari_mtssl import ids
from napari_mtssl.ids import ModelId, teacher, teachers, trained
from napari_mtssl.workspace import Round


@pytest.mark.parametrize(
    "name, kind, task, mode",
    [
        ("baseline", "baseline", None, None),
        ("student", "student", None, None),
        ("all_joint", "all_joint", None, None),
        ("teacher:sdm", "teacher", "sdm", None),
        ("sdm:joint", "task", "sdm", "joint"),
        ("inpaint:pretrain", "task", "inpaint", "pretrain"),
    ],
)
def test_model_ids_round_trip(name, kind, task, mode):
    mid = ModelId.parse(name)
    assert (mid.kind, mid.task, mid.mode) == (kind, task, mode)
    assert str(mid) == name and ModelId.parse(mid) is mid


@pytest.mark.parametrize("bad", ["", "teacher:", "sdm:finetune", "sdm", "a:b:c", "teacher:x:joint"])
def test_bad_model_names_say_what_exists(bad):
    assert not ModelId.is_valid(bad)
    with pytest.raises(ValueError, match="teacher:<task>"):
        ModelId.parse(bad)


def test_model_id_helpers():
    assert str(teacher("sdm")) == "teacher:sdm" and teacher("sdm").is_teacher
    assert trained("sdm", "joint").other_mode() == trained("sdm", "pretrain")
    assert teachers(["student", "teacher:b", "sdm:joint", "teacher:a", "junk"]) == [
        "teacher:b",
        "teacher:a",
    ]
    with pytest.raises(ValueError):
        ModelId("task", "sdm", "finetune")


def test_one_order_of_models_everywhere():
    """The report, the CLI, list_models and the Compare dock share ids.in_order."""
    from napari_mtssl.training.running import saved

    names = ["sdm:joint", "teacher:sdm", "baseline", "zz", "student", "teacher:inpaint"]
    want = ["student", "baseline", "teacher:inpaint", "teacher:sdm", "sdm:joint", "zz"]
    assert ids.in_order(names) == want
    assert sorted(names, key=saved.model_key) == want and saved.MODEL_ORDER == ids.FIRST


EXAMPLES = [
    ev.Status("planning"),
    ev.Start("r1", "all", "cpu", ["baseline", "sdm:joint"], False, {"train_scans": ["a"]}),
    ev.PlanMade({"patch": 128}, ["128 x 128 patches"]),
    ev.Note("hello"),
    ev.Progress(model="sdm:joint", step=3, total=10, losses={"seg": 0.5, "total": 0.7}),
    ev.Resumed("baseline", 4),
    ev.ModelDone(model="baseline", dice={"LV": 0.9}, mean_dice=0.9, hd95=3.0, steps=10),
    ev.Halving("sdm", 30, {"joint": 0.5, "pretrain": 0.6}, ["pretrain"], "pretrain leads"),
    ev.Selected("sdm", "joint", 0.7, None, {"joint": 10, "pretrain": 10}),
    ev.Stopped("r1", "baseline", 3),
    ev.Done("r1", 2),
    ev.SimulateNote("initial workspace: 3 labelled patients", "random"),
    ev.SimulateRound("random", 2, 20, 0.71, None),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_events_round_trip_through_json(event):
    d = json.loads(json.dumps(event.to_dict()))
    assert d["type"] == event.type
    assert ev.parse(d) == event


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_one_wording_of_events_for_the_cli_and_the_docks(event):
    """events.describe is the line the CLI logs and the docks show, whatever form arrives."""
    import io

    from napari_mtssl.cli import Progress

    line = ev.describe(event)
    assert line and line == ev.describe(json.loads(json.dumps(event.to_dict())))
    if isinstance(event, ev.ModelDone | ev.Halving | ev.Selected | ev.Start):
        out = io.StringIO()
        Progress(stream=out)(event)
        assert out.getvalue().strip() == line


def test_event_json_form_is_what_runs_log():
    h = ev.Halving("sdm", 30, {"joint": 0.5}, ["joint"], "r").to_dict()
    assert h["continue"] == ["joint"] and "continue_" not in h
    p = ev.Progress(model="m", step=1, total=2).to_dict()
    assert p["val_dice"] is None and "lr" not in p  # val_dice always present, unset fields not
    assert ev.parse(ev.Progress(losses={"total": 0.25}).to_dict()).loss == 0.25


def test_unknown_events_parse_as_other_and_keep_their_data():
    d = {"type": "from_a_newer_version", "round": 2}
    e = ev.parse(d)
    assert isinstance(e, ev.Other) and e.kind == "from_a_newer_version" and e.to_dict() == d


def test_rounds_read_new_and_old_entries():
    r = Round.from_dict(
        {
            "run": "r2",
            "what": "retrain-quick",
            "labelled_slices": 40,
            "corrections": {"slices": 3, "by": {"user": 3}, "timed_slices": 2, "effort_s": 61.5},
            "metrics": {
                "student": {"mean_dice": 0.8, "hd95": 4.0},
                "baseline": {"mean_dice": None},
            },
            "round": 2,
            "time": "2026-11-26T00:00:00Z",
        }
    )
    assert r.dice("student") == 0.8 and r.dice("baseline") is None and r.dice("x") is None
    assert r.corrections.slices == 3 and r.corrections.timed_slices == 2
    old = Round.from_dict({"trained": "all", "dice": {"student": 0.8}}, index=0)
    assert old.round == 1 and old.metrics == {} and old.corrections.slices == 0
    assert Round.from_dict(r.to_dict()) == r


def test_what_a_run_trains_is_one_type():
    from napari_mtssl.ids import What

    assert What.parse("all") == "all" and f"{What.ALL}" == "all"
    assert json.dumps({"what": What.ALL}) == '{"what": "all"}'
    assert [w for w in What if w.trains_teachers] == [What.STAGE1, What.ALL]
    assert [w for w in What if w.trains_baseline] == [What.BASELINE, What.ALL]
    assert [w.value for w in What if w.keeps_shape] == ["stage2", "retrain-quick", "retrain-stage2"]
    assert not What.RETRAIN_QUICK.trains_student and What.RETRAIN_STAGE2.trains_student
    with pytest.raises(ValueError, match="what must be one of baseline, stage1"):
        What.parse("stage3")


def test_the_cli_draws_a_tqdm_bar_on_a_terminal_and_plain_lines_in_a_log():
    import io

    from napari_mtssl.cli import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    steps = [
        ev.Progress(model="baseline", step=i, total=4, losses={"total": 0.5}, val_dice=0.7,
                    run_elapsed_s=90.0, run_budget_s=600.0)
        for i in range(1, 5)
    ]  # fmt: skip
    done = ev.ModelDone(model="baseline", mean_dice=0.7, steps=4, seconds=2.0)
    term, log = Terminal(), io.StringIO()
    for out in (term, log):
        show = Progress(stream=out)
        for e in [*steps[:2], ev.Note("hello"), *steps[2:], done]:
            show(e)
        show._newline()
    drawn = term.getvalue()
    assert "baseline: 100%" in drawn and "4/4" in drawn  # tqdm's bar, to the last step
    assert "loss 0.500, val Dice 0.700, run 1.5 of 10 min" in drawn
    assert "\nnote: hello\n" in drawn.replace("\r", "\n") and ev.describe(done) in drawn
    plain = log.getvalue()
    assert "\r" not in plain and "%|" not in plain  # a log file gets lines, not a bar
    assert "note: hello" in plain and ev.describe(done) in plain
    assert "baseline" in plain and "4/4" in plain
