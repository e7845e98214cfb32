"""Patches at the planned grid: split by scan, foreground oversampling, task windows,
augmentation and prefetching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mtssl.training.config import DataConfig
from napari_mtssl.training.data.preprocess import Preprocessing
from napari_mtssl.training.data.slices import BatchStream, StudyData, augment, pad_to


def _study(n_train_labelled=3, val=False, seed=0, size=(5, 32, 32), patch=32):
    rng = np.random.default_rng(0)
    images, labels, splits = [], [], []
    for i in range(4):
        images.append(rng.normal(size=size).astype(np.float32))
        lab = np.zeros(size, np.uint8)
        lab[:, 8:20, 8:20] = 1
        labels.append(lab if i < n_train_labelled or (val and i == 3) else None)
        splits.append("val" if val and i == 3 else "train")
    return StudyData.from_arrays(
        images, labels, Preprocessing(), patch, splits=splits, num_classes=2, seed=seed
    )


def test_split_by_scan_never_by_slice():
    s = _study(3)
    assert s.val_source == "held-out training scans"
    train_names = {x.name for x in s.train}
    val_names = {x.name for x in s.val}
    assert val_names and not (train_names & val_names)
    assert all(x.labels is not None and x.labels_native is not None for x in s.val)
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
        Preprocessing(),
        32,
        labelled=[mask, mask],
        splits=["train", "val"],
        num_classes=2,
    )
    assert s.labelled_slices() == [(0, 0), (0, 2)]
    assert s.train[0].labels[1].max() == 0  # unlabelled slices carry no label
    assert set(s.train[0].fg) == {1} and set(np.unique(s.train[0].fg[1][:, 0])) == {0, 2}
    summ = s.summary()
    assert summ.n_labelled_slices == 2 and summ.n_unlabelled_slices == 4


def test_small_slices_are_padded_and_windows_stay_inside():
    # 20 x 44 slices with a 32 px patch: padded to 32 x 44, every window lies inside.
    s = _study(3, size=(4, 20, 44), patch=32)
    scan = s.train[0]
    assert scan.shape == (32, 44) and scan.pad == (6, 0)
    assert scan.slice_map.planned == (20, 44)
    rng = np.random.default_rng(0)
    for _ in range(50):
        y0, x0, p = s._window(scan, rng)
        assert 0 <= y0 <= 0 and 0 <= x0 <= 44 - 32 and p == 32
    un = scan.unpad(torch.zeros(2, 4, 32, 44))
    assert tuple(un.shape) == (2, 4, 20, 44)
    vol, off = pad_to(np.ones((2, 10, 50), np.float32), 16)
    assert (
        vol.shape == (2, 16, 50) and off == (3, 0) and vol[:, 3:13].all() and not vol[:, :3].any()
    )


def test_foreground_oversampling_centres_patches_on_labels():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(6, 128, 128)).astype(np.float32)
    lab = np.zeros((6, 128, 128), np.uint8)
    lab[:, 100:108, 10:18] = 1  # a small structure in a corner
    s = StudyData.from_arrays([img, img], [lab, lab], Preprocessing(), 32, num_classes=2)
    pool = s.labelled_slices()

    def share(fg: float) -> float:
        hits = 0
        for step in range(40):
            b = s.seg_batch(pool, 8, np.random.default_rng([0, step]), fg)
            hits += int((b["label"].reshape(8, -1).max(1) > 0).sum())
        return hits / 320

    assert share(1.0) == 1.0  # every patch centred on the structure holds it
    assert share(0.0) < 0.3  # uniform windows rarely do
    b = s.seg_batch(pool, 8, np.random.default_rng(1), 0.5)
    assert b["image"].shape == (8, 1, 32, 32) and b["label"].dtype == np.int64


def test_batches_are_a_function_of_the_rng():
    s = _study(3)
    pool = s.labelled_slices()
    a = s.seg_batch(pool, 4, np.random.default_rng([1, 2, 3]), 0.33)
    b = s.seg_batch(pool, 4, np.random.default_rng([1, 2, 3]), 0.33)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_task_samples_come_from_patch_windows():
    from napari_mtssl.models import build_unet
    from napari_mtssl.tasks import build_task

    s = _study(3, size=(6, 48, 64), patch=32)
    net = build_unet(1, 1, 4)
    task = build_task("inpaint", net, None, 2)
    pool = s.task_pool(task, include_unlabelled=True)
    b = s.task_batch(task, pool, 3, np.random.default_rng(0))
    assert b["image"].shape == (3, 1, 32, 32)


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


def test_workspace_study_is_cached_memory_mapped(tmp_path):
    from napari_mtssl import api
    from napari_mtssl.task_needs import workspace_summary

    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    sid = ws.scan_ids("train")[-1]
    ws.set_labels(sid, np.zeros(ws.record(sid).shape, np.uint8), slices=[3], by="test")
    prep = Preprocessing(spacing=(2.0, 2.0))
    study = StudyData.from_workspace(ws, prep, 32)
    assert workspace_summary(ws) == study.summary()
    assert study.cache_misses > 0 and study.cache_hits == 0
    again = StudyData.from_workspace(ws, prep, 32)
    assert again.cache_misses == 0 and again.cache_hits == study.cache_misses
    assert isinstance(again.train[0].image, np.memmap)
    assert np.array_equal(np.asarray(again.train[0].image), np.asarray(study.train[0].image))
    # 96 px at 1.5 mm -> 72 px at 2 mm
    assert study.train[0].slice_map.planned == (72, 72)
    # a correction changes the cached labels (new key), the image stays cached
    lab = ws.labels(sid)
    lab[4, 10:20, 10:20] = 1
    ws.set_labels(sid, lab, slices=[4], by="test")
    third = StudyData.from_workspace(ws, prep, 32)
    assert third.cache_misses == 1
    files = list((ws.root / "cache" / "preprocessed").glob("*.npy"))
    assert files and all(f.stat().st_mode & 0o777 == 0o666 & ~_umask() for f in files)


def _umask() -> int:
    import os

    m = os.umask(0o022)
    os.umask(m)
    return m


def test_a_baseline_reads_only_labelled_training_scans_and_draws_the_same_batches(tmp_path):
    """``labelled_only`` (a baseline run) skips the unlabelled training scans; the labelled ones
    keep their random keys, so the seg batches (labels, foreground windows) are the same."""
    from napari_mtssl import api

    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    prep = Preprocessing(spacing=(2.0, 2.0))
    full = StudyData.from_workspace(ws, prep, 32, cache=False)
    lean_progress: list[tuple[int, int]] = []
    lean = StudyData.from_workspace(
        ws,
        prep,
        32,
        cache=False,
        labelled_only=True,
        progress=lambda i, n: lean_progress.append((i, n)),
    )
    unlabelled = [s.name for s in full.train if s.labels is None]
    assert unlabelled, "the sample study has unlabelled training scans"
    assert [s.name for s in lean.train] == [s.name for s in full.train if s.labels is not None]
    assert [s.name for s in lean.val] == [s.name for s in full.val]
    assert lean_progress[-1][1] == len(lean.train)  # the count it reads before the first step
    assert any("without labels not read" in note for note in lean.notes)
    a = full.seg_batch(full.labelled_slices(), 6, np.random.default_rng(3), fg_fraction=0.5)
    b = lean.seg_batch(lean.labelled_slices(), 6, np.random.default_rng(3), fg_fraction=0.5)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])


def test_validation_scans_are_read_at_their_first_use(tmp_path):
    """The training scans are read before the first step; the validation scans when a
    validation pass first asks for them (their number is known before)."""
    from napari_mtssl import api

    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=2)
    val_ids = [s for s in ws.scan_ids("val") if any(x != "unlabelled" for x in ws.slice_status(s))]
    assert val_ids, "the sample has labelled validation scans"
    read: list[str] = []
    real = ws.load_scan
    ws.load_scan = lambda sid: read.append(sid) or real(sid)
    study = StudyData.from_workspace(ws, Preprocessing(spacing=(2.0, 2.0)), 32, cache=False)
    assert not study.val.ready and len(study.val) == len(val_ids) and study.val
    assert not set(read) & set(val_ids) and read  # training scans only
    described = study.describe()["val_scans"]  # the run's start describes its data
    assert not study.val.ready and len(described) == len(val_ids)
    misses = study.cache_misses
    names = [s.name for s in study.val]  # the first use
    assert study.val.ready and set(val_ids) <= set(read)
    assert len(names) == len(val_ids) and study.cache_misses == misses + len(val_ids)
    assert all(s.split == "val" and s.labels is not None for s in study.val)
    assert described == names
