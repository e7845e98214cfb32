"""Config dataclasses: defaults from METHOD.md, profiles, dict round trip, validation."""

from __future__ import annotations

import json

import pytest

from napari_mtssl.training.config import ExperimentConfig, profile


def test_method_defaults():
    c = ExperimentConfig()
    assert c.stage1.modes == "both"
    assert c.stage1.lam("sdm") == 1.0
    assert c.stage2.alpha == 0.5 and c.stage2.temperature == 1.0
    assert c.stage2.distil_unlabelled and c.stage2.init == "fresh"
    assert not c.stage2.feature_distillation
    assert c.baseline_steps == c.stage1.joint_steps
    assert c.all_joint


@pytest.mark.parametrize("name", ["tiny", "quick", "standard"])
def test_profiles_round_trip(name):
    c = profile(name)
    d = json.loads(json.dumps(c.to_dict()))
    assert ExperimentConfig.from_dict(d) == c
    assert c.data.image_size % 16 == 0


def test_profile_sizes_ordered():
    q, s = profile("quick"), profile("standard")
    assert q.model.width < s.model.width and q.data.image_size < s.data.image_size
    assert q.stage1.joint_steps < s.stage1.joint_steps


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
        profile("tiny", data__image_size=40)
    with pytest.raises(ValueError, match="alpha"):
        profile("tiny", stage2__alpha=2)
    with pytest.raises(ValueError, match="modes"):
        profile("tiny", stage1__modes="sometimes")
    with pytest.raises(ValueError, match="unknown profile"):
        profile("huge")
    with pytest.raises(ValueError, match="integer"):
        ExperimentConfig.from_dict({"seed": "x"})


def test_scaled_budgets():
    c = profile("quick").scaled(0.5)
    assert c.stage1.joint_steps == 75
    assert profile("tiny").scaled(0.01).stage2.steps == 1
