"""Dice / HD95 conventions and physical units."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtssl.training.loop.metrics import (
    dice_per_class,
    hd95_per_class,
    summarise,
    volume_scores,
)


def test_dice_values_and_empty_conventions():
    truth = np.zeros((2, 8, 8), int)
    truth[:, 2:4, 2:4] = 1  # 8 voxels
    pred = np.zeros_like(truth)
    pred[:, 2:4, 2:3] = 1  # 4 voxels, all inside
    d = dice_per_class(pred, truth, 3)
    assert d[0] == pytest.approx(2 * 4 / 12)
    assert d[1] == 1.0  # class 2 absent from both
    pred[0, 0, 0] = 2
    assert dice_per_class(pred, truth, 3)[1] == 0.0  # predicted but absent


def test_hd95_uses_spacing():
    truth = np.zeros((3, 20, 20), int)
    truth[:, 5:10, 5:10] = 1
    pred = np.roll(truth, 2, axis=2)  # shifted by 2 voxels along x
    (h,) = hd95_per_class(pred, truth, 2, spacing=(5.0, 1.0, 0.5))
    assert h == pytest.approx(1.0, abs=1e-4)  # 2 voxels * 0.5 mm
    (h2,) = hd95_per_class(pred, truth, 2, spacing=(5.0, 1.0, 2.0))
    assert h2 == pytest.approx(4.0, abs=1e-4)


def test_hd95_empty_conventions():
    truth = np.zeros((1, 8, 8), int)
    assert hd95_per_class(truth, truth, 2) == [0.0]
    pred = truth.copy()
    pred[0, 1, 1] = 1
    assert hd95_per_class(pred, truth, 2) == [None]


def test_volume_scores_subset_and_summary():
    truth = np.zeros((4, 8, 8), int)
    truth[1:3, 2:5, 2:5] = 1
    pred = truth.copy()
    pred[0] = 1  # wrong on slice 0, which is not labelled
    v = volume_scores(pred, truth, 2, slices=[1, 2])
    assert v["dice"] == [1.0]
    s = summarise([v, {"dice": [0.5], "hd95": [None]}], {1: "organ"}, 2)
    assert s["dice"] == {"organ": 0.75}
    assert s["mean_dice"] == 0.75
    assert s["hd95"] == 0.0
    assert summarise([], None, 2)["mean_dice"] is None
