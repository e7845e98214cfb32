"""Normalisation per modality, in-plane resampling and its exact inverse, the volume cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mtssl.training.data.preprocess import (
    NormSpec,
    Preprocessing,
    SliceMap,
    VolumeCache,
    normalise,
    resample_slices,
)


def test_zscore_clips_outliers():
    a = np.random.default_rng(0).gamma(2.0, 100.0, size=(4, 16, 16)).astype(np.float32)
    a[0, 0, 0] = 1e6  # an outlier the percentile clip removes
    n = normalise(a, NormSpec("zscore"))
    assert abs(n.mean()) < 1e-4 and abs(n.std() - 1) < 1e-3
    assert n.max() < 10


def test_ct_and_window_schemes():
    a = np.array([[-2000.0, 40.0, 3000.0]], np.float32)
    w = normalise(a, NormSpec("window", lower=-160, upper=240))
    assert w.tolist() == [[-1.0, 0.0, 1.0]]
    ct = normalise(a, NormSpec("ct", lower=-100, upper=200, mean=50, std=25))
    assert np.allclose(ct, [[-6.0, -0.4, 6.0]])
    assert normalise(a, NormSpec("none")).tolist() == a.tolist()


def test_nan_becomes_the_minimum():
    a = np.array([[1.0, np.nan, 3.0, np.inf]], np.float32)
    n = normalise(a, NormSpec("none"))
    assert np.isfinite(n).all() and n.tolist() == [[1.0, 1.0, 3.0, 1.0]]


def test_unknown_scheme_refused():
    with pytest.raises(ValueError, match="scheme"):
        NormSpec("magic")


def test_planned_shape_and_round_trip():
    prep = Preprocessing(spacing=(1.0, 1.0))
    # 0.7 mm CT-like slices shrink, 2 mm slices grow, anisotropic in-plane becomes square voxels
    assert prep.planned_shape((512, 512), (0.7, 0.7)) == (358, 358)
    assert prep.planned_shape((100, 50), (2.0, 2.0)) == (200, 100)
    assert prep.planned_shape((100, 100), (1.0, 3.0)) == (100, 300)
    assert prep.planned_shape((10, 10), (0.0, float("nan"))) == (10, 10)  # unknown: 1 mm
    assert Preprocessing(spacing=None).planned_shape((33, 44), (9.0, 9.0)) == (33, 44)
    # a mask resampled to the plan and back (through probabilities) lands where it was
    lab = np.zeros((2, 90, 70), np.uint8)
    lab[:, 20:60, 15:45] = 1
    planned = prep.planned_shape((90, 70), (0.8, 0.8))
    small = resample_slices(lab, planned, labels=True)
    assert small.shape == (2, *planned) and small.dtype == np.uint8
    onehot = torch.nn.functional.one_hot(torch.from_numpy(small.astype(np.int64)), 2)
    back = SliceMap((90, 70), planned).to_native(onehot.permute(3, 0, 1, 2).float())
    assert back.shape == (2, 2, 90, 70)
    assert (back.argmax(0).numpy() != lab).mean() < 0.02  # only boundary pixels may move


def test_identity_map_is_free():
    m = SliceMap((10, 12), (10, 12))
    x = torch.rand(3, 2, 10, 12)
    assert m.identity and m.to_native(x) is x
    v = np.ones((2, 5, 5), np.float32)
    assert resample_slices(v, (5, 5)) is v


def test_preprocessing_json_round_trip_and_validation():
    p = Preprocessing(
        spacing=(1.25, 1.25), norms={"CT": NormSpec("ct", lower=-50, upper=300, mean=60, std=40)}
    )
    q = Preprocessing.from_dict(p.to_dict())
    assert q == p and q.norm_for("ct").scheme == "ct" and q.norm_for("MR").scheme == "ct"
    assert p.key("CT") == q.key("CT")
    with pytest.raises(ValueError, match="spacing"):
        Preprocessing.from_dict({"spacing": [0, 1]})


def test_volume_cache(tmp_path):
    c = VolumeCache(tmp_path)
    calls = []

    def make():
        calls.append(1)
        return np.arange(12, dtype=np.float32).reshape(3, 4)

    k = c.key("a", 1)
    a = np.array(c.get(k, make))
    b = c.get(k, make)
    assert len(calls) == 1 and (c.hits, c.misses) == (1, 1)
    assert isinstance(b, np.memmap) and np.array_equal(a, b)
    del b
    (tmp_path / f"{k}.npy").write_bytes(b"garbage")  # a damaged entry is computed again
    assert np.array_equal(VolumeCache(tmp_path).get(k, make), a) and len(calls) == 2
    assert not list(tmp_path.glob(".*.tmp"))
    mem = VolumeCache(None)
    assert np.array_equal(mem.get("x", make), a) and mem.misses == 1
