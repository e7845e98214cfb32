"""Predicting chosen slices of a scan gives what the whole scan's prediction has there: the
network is 2D and the scan is normalised as a whole either way (Propose predicts only the
slices it draws)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mtssl.models.unet import build_unet
from napari_mtssl.training.data.preprocess import Preprocessing
from napari_mtssl.training.prediction import postprocess
from napari_mtssl.training.prediction.inference import predict_scan


def _predict(net, vol, **kw):
    return predict_scan(
        net, vol, (5.0, 1.3, 1.3), Preprocessing(spacing=(1.0, 1.0)), 32, torch.device("cpu"), **kw
    )


def test_slices_match_the_whole_scan():
    torch.manual_seed(0)
    net = build_unet(out_channels=3, width=8)
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(6, 40, 48)).astype(np.float32)
    vol[:, 10:25, 12:30] += 3.0
    labels, probs = _predict(net, vol)
    some_labels, some_probs = _predict(net, vol, slices=[4, 1])
    assert some_labels.shape == (2, 40, 48) and some_probs.shape == (3, 2, 40, 48)
    np.testing.assert_allclose(some_probs, probs[:, [4, 1]], atol=1e-5)
    np.testing.assert_array_equal(some_labels, labels[[4, 1]])
    # post-processing applies to each chosen slice on its own (they need not touch)
    pp_labels, _ = _predict(net, vol, slices=[4], postprocess="largest_component")
    np.testing.assert_array_equal(pp_labels, postprocess.apply(labels[4:5], "largest_component"))
    with pytest.raises(IndexError, match="6 slices"):
        _predict(net, vol, slices=[6])
