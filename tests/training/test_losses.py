"""Losses against written-out references and by their properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_mtssl.training.loop.losses import (
    SegLoss,
    class_probs,
    kd_loss,
    kl_to_target,
    soft_dice_loss,
)

SMOOTH = 1e-5  # MONAI's default smooth_nr / smooth_dr


def ref_dice_ce(logits: np.ndarray, target: np.ndarray) -> float:
    """Multi-class reference: mean CE + 1 - mean over classes of batch-wise Dice (softmax)."""
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    c = logits.shape[1]
    onehot = np.stack([(target == k) for k in range(c)], 1).astype(float)
    ce = -(onehot * np.log(p)).sum(1).mean()
    inter = (p * onehot).sum((0, 2, 3))
    denom = p.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = ((2 * inter + SMOOTH) / (denom + SMOOTH)).mean()
    return ce + 1 - dice


def ref_binary(logits: np.ndarray, target: np.ndarray) -> float:
    p = 1 / (1 + np.exp(-logits[:, 0]))
    t = (target > 0).astype(float)
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    dice = (2 * (p * t).sum() + SMOOTH) / (p.sum() + t.sum() + SMOOTH)
    return bce + 1 - dice


def test_seg_loss_multiclass_matches_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 4))
    target = rng.integers(0, 3, size=(2, 4, 4))
    got = SegLoss()(torch.tensor(logits, dtype=torch.float32), torch.tensor(target))
    assert got.item() == pytest.approx(ref_dice_ce(logits, target), rel=1e-4)


def test_seg_loss_binary_uses_sigmoid_path():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 1, 4, 4))
    target = rng.integers(0, 2, size=(2, 4, 4))
    got = SegLoss()(torch.tensor(logits, dtype=torch.float32), torch.tensor(target))
    assert got.item() == pytest.approx(ref_binary(logits, target), rel=1e-4)


def test_seg_loss_lower_for_correct_prediction_and_decreases():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    good = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 10 - 5
    loss = SegLoss()
    assert loss(good, target) < loss(-good, target)
    w = torch.zeros(2, 2, 8, 8, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.3)
    first = loss(w, target).item()
    for _ in range(20):
        opt.zero_grad()
        loss(w, target).backward()
        opt.step()
    assert loss(w, target).item() < first - 0.2


def test_class_probs_binary_and_temperature():
    logits = torch.tensor([[[[0.0, 2.0]]]])  # (1, 1, 1, 2): binary
    p = class_probs(logits)
    assert p.shape == (1, 2, 1, 2)
    assert torch.allclose(p.sum(1), torch.ones(1, 1, 2))
    assert p[0, 1, 0, 1].item() == pytest.approx(1 / (1 + math.exp(-2.0)))
    p2 = class_probs(logits, temperature=2.0)
    assert p2[0, 1, 0, 1].item() == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_kd_reference_values():
    """Soft Dice + KL written out on a 2-pixel, 2-class example."""
    s = torch.tensor([[[[1.0, -1.0]], [[0.0, 0.5]]]])  # (1, 2, 1, 2)
    q = torch.tensor([[[[0.7, 0.2]], [[0.3, 0.8]]]])
    ps = torch.softmax(s, 1)
    dice_ref = 1 - np.mean(
        [
            (2 * (ps[0, c] * q[0, c]).sum() + SMOOTH) / (ps[0, c].sum() + q[0, c].sum() + SMOOTH)
            for c in range(2)
        ]
    )
    kl_ref = (q * (q.log() - ps.log())).sum(1).mean()
    out = kd_loss(s, q)
    assert out["kd_dice"].item() == pytest.approx(float(dice_ref), rel=1e-5)
    assert out["kd_kl"].item() == pytest.approx(float(kl_ref), rel=1e-5)
    assert out["loss"].item() == pytest.approx(float(dice_ref + kl_ref), rel=1e-5)


def test_kl_zero_when_student_equals_ensemble():
    s = torch.randn(2, 3, 5, 5)
    for t in (1.0, 2.5):
        assert kl_to_target(s, class_probs(s, t), t).item() == pytest.approx(0.0, abs=1e-6)
    sb = torch.randn(2, 1, 5, 5)  # binary head
    assert kl_to_target(sb, class_probs(sb), 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_temperature_scaling_is_t_squared_times_softened_kl():
    s = torch.randn(1, 3, 4, 4)
    teacher = torch.randn(1, 3, 4, 4)
    t = 3.0
    q_t = class_probs(teacher, t)
    ref = (q_t * (q_t.log() - torch.log_softmax(s / t, 1))).sum(1).mean() * t * t
    assert kl_to_target(s, q_t, t).item() == pytest.approx(ref.item(), rel=1e-5)
    out = kd_loss(s, class_probs(teacher), t, q_t)
    assert out["kd_kl"].item() == pytest.approx(ref.item(), rel=1e-5)


def test_soft_dice_perfect_one_hot_is_zero():
    q = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 6, 6)), 3).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(q, q).item() == pytest.approx(0.0, abs=1e-6)
