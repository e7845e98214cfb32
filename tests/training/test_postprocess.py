"""Keeping the largest foreground component, and the validation decision to keep it or not."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtssl.training.prediction import postprocess


def test_largest_component_keeps_every_class_of_the_organ():
    lab = np.zeros((3, 40, 40), np.uint8)
    lab[:, 10:20, 10:20] = 1
    lab[:, 12:18, 12:18] = 2  # a second class inside the first: one component
    lab[1, 30:33, 30:33] = 1  # a blob elsewhere
    out = postprocess.largest_component(lab)
    assert out[1, 30:33, 30:33].max() == 0
    assert np.array_equal(out[:, :25, :25], lab[:, :25, :25])
    assert postprocess.apply(lab, "none") is lab
    empty = np.zeros((2, 5, 5), np.uint8)
    assert postprocess.largest_component(empty) is empty
    with pytest.raises(ValueError, match="post-processing"):
        postprocess.apply(lab, "magic")


def test_evaluate_keeps_the_post_processing_only_when_it_helps():
    import torch

    from napari_mtssl.training.data.preprocess import Preprocessing
    from napari_mtssl.training.data.slices import StudyData
    from napari_mtssl.training.loop.trainer import evaluate

    truth = np.zeros((2, 32, 32), np.uint8)
    truth[:, 8:16, 8:16] = 1

    class Painter(torch.nn.Module):
        """Predicts the truth, plus a blob where there is none when ``blob``."""

        def __init__(self, blob: bool):
            super().__init__()
            self.blob = blob
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            logits = torch.full((x.shape[0], 2, *x.shape[-2:]), -5.0)
            logits[:, 1, 8:16, 8:16] = 5.0
            if self.blob:
                logits[:, 1, 24:28, 24:28] = 5.0
            logits[:, 0] = -logits[:, 1]
            return logits + self.w

    study = StudyData.from_arrays(
        [np.zeros((2, 32, 32), np.float32)] * 2,
        [truth, truth],
        Preprocessing(),
        32,
        splits=["train", "val"],
        num_classes=3,
    )
    dev = torch.device("cpu")
    noisy = evaluate(Painter(True), study.val, study, dev, hd95=True)
    assert noisy["postprocess"] == "largest_component"
    assert noisy["mean_dice"] > noisy["raw_mean_dice"]
    clean = evaluate(Painter(False), study.val, study, dev)
    assert clean["postprocess"] == "none" and clean["mean_dice"] == clean["raw_mean_dice"]
