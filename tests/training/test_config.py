"""Config dataclasses: defaults from METHOD.md, profiles, dict round trip, validation."""

from __future__ import annotations

import json

import pytest

from napari_mtssl.training.config import (
    PRESETS,
    ExperimentConfig,
    format_budget,
    parse_budget,
    profile,
)


def test_method_defaults():
    c = ExperimentConfig()
    assert c.stage1.modes == "auto"  # the planner picks both modes or pre-training only
    assert c.stage1.lam("sdm") == 1.0
    assert c.stage2.alpha == 0.5 and c.stage2.temperature == 1.0
    assert c.stage2.distil_unlabelled and c.stage2.init == "auto"
    # the default student is the semi-supervised one, warm-started from the best model; the
    # paper's student starts fresh
    assert c.stage2.method == "semi" and c.stage2.resolved_init() == "best"
    c.stage2.method = "paper"
    assert c.stage2.resolved_init() == "fresh"
    assert not c.stage2.feature_distillation
    assert c.baseline_steps == c.stage1.joint_steps
    # planned fields are left to the planner
    assert c.data.patch_size == 0 and c.model.width == 0 and c.data.target_spacing == 0
    assert c.data.fg_oversample == 0.33 and c.optim.precision == "auto"


@pytest.mark.parametrize("name", ["tiny", "quick", "standard", "overnight"])
def test_profiles_round_trip(name):
    c = profile(name)
    d = json.loads(json.dumps(c.to_dict()))
    assert ExperimentConfig.from_dict(d) == c


def test_profiles_are_budgets():
    assert profile("quick").budget_s == 600 and profile("standard").budget_s == 3600
    assert profile("overnight").budget_s == 8 * 3600
    t = profile("tiny")
    assert t.budget_s == 0 and t.steps_given() and t.data.patch_size % 16 == 0


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("10m", 600),
        ("1h", 3600),
        ("1h30m", 5400),
        ("90s", 90),
        ("8h", 28800),
        ("5", 300),
        (2.5, 150),
        ("quick", PRESETS["quick"]),
        ("20 min", 1200),
    ],
)
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "0", "-5", "1h2", "10q", "nan"])
def test_parse_budget_refuses_with_the_accepted_forms(bad):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(bad)


def test_format_budget():
    assert format_budget(600) == "10 min" and format_budget(5400) == "1 h 30 min"
    assert format_budget(3600) == "1 h" and format_budget(45) == "45 s"


def test_unknown_keys_are_named():
    d = profile("tiny").to_dict()
    d["stage2"]["alpah"] = 0.3
    with pytest.raises(ValueError, match="alpah"):
        ExperimentConfig.from_dict(d)
    with pytest.raises(ValueError, match="bogus"):
        ExperimentConfig.from_dict({"bogus": 1})


def test_validation_and_overrides():
    c = profile("tiny", stage2__alpha=0.25, seed=3)
    assert c.stage2.alpha == 0.25 and c.seed == 3
    with pytest.raises(ValueError, match="multiple of 16"):
        profile("tiny", data__patch_size=40)
    with pytest.raises(ValueError, match="target_spacing"):
        profile("tiny", data__target_spacing=-3)
    with pytest.raises(ValueError, match="precision"):
        profile("tiny", optim__precision="fp8")
    with pytest.raises(ValueError, match="alpha"):
        profile("tiny", stage2__alpha=2)
    with pytest.raises(ValueError, match="modes"):
        profile("tiny", stage1__modes="sometimes")
    with pytest.raises(ValueError, match="unknown profile"):
        profile("huge")
    with pytest.raises(ValueError, match="integer"):
        ExperimentConfig.from_dict({"seed": "x"})


def test_scaled_budgets():
    c = profile("tiny").scaled(2)
    assert c.stage1.joint_steps == 8
    assert profile("tiny").scaled(0.01).stage2.steps == 1
    q = profile("quick").scaled(0.5)
    assert q.budget_s == 300 and q.stage1.joint_steps == 0  # left to the budget
