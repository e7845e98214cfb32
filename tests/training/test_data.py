"""Slice geometry, normalisation, split by scan, augmentation and prefetching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mtssl.training.config import DataConfig
from napari_mtssl.training.data import BatchStream, Geometry, StudyData, augment, normalise


def test_geometry_exact_when_no_resize():
    lab = np.random.default_rng(0).integers(0, 3, size=(2, 48, 64))
    g = Geometry(48, 64, 64)  # padded square is already the training size
    small = g.to_training(lab, labels=True)
    assert small.shape == (2, 64, 64)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(small), 3).permute(3, 0, 1, 2).float()
    back = g.to_scan(onehot)
    assert back.shape == (3, 2, 48, 64)
    assert np.array_equal(back.argmax(0).numpy(), lab)


@pytest.mark.parametrize("shape", [(3, 40, 56), (1, 70, 30)])
def test_geometry_round_trip_resized(shape):
    lab = np.zeros(shape, np.int64)
    z, h, w = shape
    lab[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
    g = Geometry(h, w, 96)
    small = g.to_training(lab, labels=True)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(small), 2).permute(3, 0, 1, 2).float()
    back = g.to_scan(onehot).argmax(0).numpy()
    assert back.shape == shape
    assert (back != lab).mean() < 0.02  # only boundary pixels may move


def test_normalisation_mri_and_ct():
    cfg = DataConfig()
    a = np.random.default_rng(0).gamma(2.0, 100.0, size=(4, 16, 16)).astype(np.float32)
    a[0, 0, 0] = 1e6  # an outlier the percentile clip removes
    n = normalise(a, "mri", cfg)
    assert abs(n.mean()) < 1e-4 and abs(n.std() - 1) < 1e-3
    assert n.max() < 10
    ct = normalise(np.array([[-2000.0, 40.0, 3000.0]], np.float32), "ct", cfg)
    assert ct.tolist() == [[-1.0, 0.0, 1.0]]


def _study(n_train_labelled=3, val=False, seed=0):
    rng = np.random.default_rng(0)
    images, labels, splits = [], [], []
    for i in range(4):
        images.append(rng.normal(size=(5, 32, 32)).astype(np.float32))
        lab = np.zeros((5, 32, 32), np.uint8)
        lab[:, 8:20, 8:20] = 1
        labels.append(lab if i < n_train_labelled or (val and i == 3) else None)
        splits.append("val" if val and i == 3 else "train")
    return StudyData.from_arrays(
        images, labels, DataConfig(image_size=32), splits=splits, num_classes=2, seed=seed
    )


def test_split_by_scan_never_by_slice():
    s = _study(3)
    assert s.val_source == "held-out training scans"
    train_names = {x.name for x in s.train}
    val_names = {x.name for x in s.val}
    assert val_names and not (train_names & val_names)
    assert all(x.labels is not None for x in s.val)
    s2 = _study(3, val=True)
    assert [x.name for x in s2.val] == ["scan3"] and s2.val_source == "val"
    s1 = _study(1)
    assert s1.val_source.startswith("training scans")


def test_partial_labels_and_summary():
    img = np.zeros((6, 32, 32), np.float32)
    lab = np.ones((6, 32, 32), np.uint8)
    mask = np.array([1, 0, 1, 0, 0, 0], bool)
    s = StudyData.from_arrays(
        [img, img],
        [lab, lab],
        DataConfig(image_size=32),
        labelled=[mask, mask],
        splits=["train", "val"],
        num_classes=2,
    )
    assert s.labelled_slices() == [(0, 0), (0, 2)]
    assert s.train[0].labels[1].max() == 0  # unlabelled slices carry no label
    summ = s.summary()
    assert summ.n_labelled_slices == 2 and summ.n_unlabelled_slices == 4


def test_augment_deterministic_and_label_preserving():
    cfg = DataConfig(affine_prob=1.0, intensity_prob=1.0, gamma_prob=1.0)
    x = torch.randn(4, 1, 32, 32)
    y = torch.zeros(4, 32, 32, dtype=torch.long)
    y[:, 4:12, 6:20] = 2
    a = augment(x, y, cfg, torch.Generator().manual_seed(1))
    b = augment(x, y, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[1].unique().tolist()) <= {0, 2}
    assert a[0].shape == x.shape and torch.isfinite(a[0]).all()
    # geometry only, no intensity change: image and label move together
    geo = DataConfig(affine_prob=0.0, intensity_prob=0.0, gamma_prob=0.0)
    img = (y[:, None] > 0).float()
    ai, al = augment(img, y, geo, torch.Generator().manual_seed(3))
    assert torch.equal(ai[:, 0] > 0.5, al > 0)


def test_batch_stream_is_a_function_of_step():
    def make(step):
        rng = np.random.default_rng([0, step])
        return {"x": rng.normal(size=(2, 3)).astype(np.float32)}

    s1 = BatchStream(make, 0, 5, prefetch=2)
    full = [s1.get()["x"] for _ in range(5)]
    with pytest.raises(StopIteration):
        s1.get()
    s1.close()
    s2 = BatchStream(make, 3, 5, prefetch=2)  # resumed at step 3
    assert torch.equal(s2.get()["x"], full[3])
    s2.close()
    assert s1.wait_s >= 0


def test_batch_stream_forwards_errors():
    def make(step):
        raise ValueError("bad slice")

    s = BatchStream(make, 0, 3)
    with pytest.raises(RuntimeError, match="bad slice"):
        s.get()
    s.close()


def test_workspace_summary_matches_the_loaded_study(tmp_path):
    from napari_mtssl import api
    from napari_mtssl.training.data import workspace_summary

    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    sid = ws.scan_ids("train")[-1]
    ws.set_labels(sid, np.zeros(ws.record(sid).shape, np.uint8), slices=[3], by="test")
    study = StudyData.from_workspace(ws, DataConfig(image_size=32))
    assert workspace_summary(ws) == study.summary()
