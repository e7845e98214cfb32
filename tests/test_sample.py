"""The synthetic study: deterministic, several classes, smooth from slice to slice, fast."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from napari_mtssl.sample import make_sample_study, napari_sample_study


def test_deterministic_for_a_seed():
    a, b = make_sample_study(seed=3), make_sample_study(seed=3)
    c = make_sample_study(seed=4)
    for x, y in zip(a.scans, b.scans):
        np.testing.assert_array_equal(x.array, y.array)
    for x, y in zip(a.labels, b.labels):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.labels[0], c.labels[0])
    assert not np.array_equal(a.labels[0], a.labels[1])  # scans differ from each other


def test_shapes_classes_and_labelled_count():
    study = make_sample_study(n_scans=5, n_labelled=3, shape=(10, 64, 72))
    assert len(study.scans) == len(study.labels) == 5
    assert study.labelled == [True, True, True, False, False]
    assert study.label_names[0] == "background" and len(study.label_names) >= 3
    for scan, mask in zip(study.scans, study.labels):
        assert scan.shape == mask.shape == (10, 64, 72)
        assert scan.array.dtype == np.float32 and mask.dtype == np.uint8
        assert scan.modality == "MR" and scan.spacing == (8.0, 1.5, 1.5)
        assert set(np.unique(mask)) == set(study.label_names)
        # Structures are visible: each class differs from the others and from the tissue
        # right around the organ.
        near = binary_dilation(mask > 0, iterations=4) & (mask == 0)
        means = [scan.array[near].mean()] + [scan.array[mask == c].mean() for c in (1, 2, 3)]
        assert min(np.diff(sorted(means))) > 0.05
    with pytest.raises(ValueError):
        make_sample_study(n_scans=2, n_labelled=3)


def test_slices_vary_smoothly():
    study = make_sample_study()
    for mask in study.labels:
        fg = mask > 0
        dice = [
            2 * (fg[k] & fg[k + 1]).sum() / (fg[k].sum() + fg[k + 1].sum())
            for k in range(len(fg) - 1)
        ]
        assert min(dice) > 0.8  # neighbouring slices overlap a lot ...
        assert not np.array_equal(fg[0], fg[-1])  # ... yet the shape changes along z
        areas = fg.reshape(len(fg), -1).sum(1)
        assert np.abs(np.diff(areas)).max() < 0.15 * areas.max()


def test_napari_sample_layers():
    layers = napari_sample_study()
    kinds = [kind for _, _, kind in layers]
    assert kinds.count("image") == 4 and kinds.count("labels") == 2
    for data, kwargs, kind in layers:
        assert data.ndim == 3 and tuple(kwargs["scale"]) == (8.0, 1.5, 1.5)
        if kind == "labels":
            assert kwargs["name"].endswith(" labels")
