"""The synthetic study: deterministic, several classes, smooth from slice to slice, fast."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from napari_mtssl.sample import make_sample_study, napari_sample_study


@pytest.mark.parametrize("varied", [False, True])
def test_deterministic_for_a_seed(varied):
    a, b = make_sample_study(seed=3, varied=varied), make_sample_study(seed=3, varied=varied)
    c = make_sample_study(seed=4, varied=varied)
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


@pytest.mark.parametrize("varied", [False, True])
def test_slices_vary_smoothly(varied):
    study = make_sample_study(varied=varied)
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


def _organ_areas(study) -> np.ndarray:
    return np.array([(mask > 0).sum() for mask in study.labels], dtype=float)


def test_the_varied_study_differs_from_scan_to_scan_as_a_real_one_does():
    """What makes one or two labelled scans too few: organs of very different sizes, and the
    muscle wall barely darker than the tissue around it, by a different margin in each scan."""
    alike = make_sample_study(n_scans=12, seed=0)
    varied = make_sample_study(n_scans=12, seed=0, varied=True)
    spread = [np.std(a) / np.mean(a) for a in (_organ_areas(alike), _organ_areas(varied))]
    assert spread[1] > 2 * spread[0], spread

    def wall_contrast(study) -> np.ndarray:
        out = []
        for scan, mask in zip(study.scans, study.labels):
            near = binary_dilation(mask > 0, iterations=4) & (mask == 0)
            out.append(scan.array[near].mean() - scan.array[mask == 2].mean())
        return np.array(out)

    low, high = wall_contrast(varied), wall_contrast(alike)
    assert low.max() < high.min(), (low, high)  # a fainter wall in every varied scan
    assert low.std() > 2 * high.std(), (low, high)  # and fainter by different margins
    for mask in varied.labels:
        assert set(np.unique(mask)) == {0, 1, 2, 3}  # every class in every scan


def test_the_built_in_study_has_few_labels_and_many_unlabelled_scans(tmp_path):
    """What ``source="sample"`` (the demo, ``train sample``) imports, in a process of its own
    (the other tests train on the alike study: tests/conftest.py)."""
    code = (
        "from napari_mtssl import api\n"
        "ws = api.create_workspace('ws', source='sample')\n"
        "train = ws.scan_ids('train')\n"
        "print(len(train), len(ws.scan_ids('val')), sum(bool(ws.labelled_slices(s)) for s in train))"
    )
    got = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.split() == ["10", "2", "2"]
