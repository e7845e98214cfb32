"""Targets and losses by their properties and against written-out references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_mtssl.tasks import SliceContext
from napari_mtssl.tasks.inpaint import masked_mse
from napari_mtssl.tasks.moco import info_nce
from napari_mtssl.tasks.rubik import (
    PERMS,
    join_grid,
    shuffle_patches,
    split_grid,
    unshuffle_patches,
)
from napari_mtssl.tasks.sdm import sdm_loss, surface_distance_maps
from napari_mtssl.tasks.simsiam import neg_cosine, pair_candidates
from napari_mtssl.tasks.slices import auto_slice_step
from napari_mtssl.tasks.vicreg import vicreg_loss
from tests.tasks.conftest import make_batch, make_task

# -- sdm ----------------------------------------------------------------------------------------


def test_sdm_target_on_a_disk() -> None:
    yy, xx = np.mgrid[:64, :64]
    labels = (((yy - 32) ** 2 + (xx - 32) ** 2) <= 100).astype(np.int64)  # radius 10
    t = surface_distance_maps(labels, num_classes=3, scale=100.0)
    assert t.shape == (4, 64, 64) and t.dtype == np.float32
    inner, outer = t[0] * 100, t[1] * 100
    # centre: about a radius (10-11 px, the first pixel outside) from the background
    assert 10.0 <= inner[32, 32] <= 11.0
    # 20 px right of the centre: 10 px from the disk edge
    assert outer[32, 52] == pytest.approx(10.0, abs=0.01)
    assert outer[32, 43] == pytest.approx(1.0, abs=0.01)  # first pixel outside
    assert inner[32, 42] == pytest.approx(1.0, abs=0.01)  # last pixel inside
    assert np.all(inner[labels == 0] == 0) and np.all(outer[labels == 1] == 0)
    assert np.all(outer[labels == 0] > 0) and np.all(inner[labels == 1] > 0)
    # class 2 is absent: all-zero maps
    assert not t[2:].any()


def test_sdm_loss_only_counts_active_pixels() -> None:
    target = torch.zeros(1, 2, 4, 4)
    target[0, 0, 1, 1] = 0.5
    pred = torch.full((1, 2, 4, 4), -3.0)  # negative where the target is zero: not counted
    pred[0, 0, 1, 1] = 0.25
    assert float(sdm_loss(pred, target)) == pytest.approx(0.25)
    pred[0, 1, 0, 0] = 0.75  # a false positive is counted
    assert float(sdm_loss(pred, target)) == pytest.approx((0.25 + 0.75) / 2)


def test_sdm_empty_mask_gives_zero_loss_not_nan() -> None:
    labels = np.zeros((16, 16), dtype=np.int64)
    target = torch.from_numpy(surface_distance_maps(labels, 2))[None]
    assert not target.any()
    pred = torch.full((1, 2, 16, 16), -1.0, requires_grad=True)
    loss = sdm_loss(pred, target)
    assert float(loss) == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    # The same through the task on a slice that is labelled but empty.
    net, task = make_task("sdm")
    vol = np.random.default_rng(0).normal(size=(4, 32, 32)).astype(np.float32)
    ctx = SliceContext(vol, 1, np.zeros((4, 32, 32), np.int64), np.ones(4, bool), 3)
    s = task.make_sample(ctx, np.random.default_rng(0))
    batch = {k: torch.from_numpy(v[None]) for k, v in s.items()}
    with torch.no_grad():
        task.head.bias.fill_(-10.0)  # predictions all negative
    out = task(net, batch)
    assert float(out["loss"]) == 0.0 and torch.isfinite(out["loss"])


# -- inpaint ------------------------------------------------------------------------------------


def test_inpaint_loss_is_zero_for_exact_reconstruction_and_ignores_the_rest() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 1, 16, 16, generator=g)
    mask = torch.zeros_like(target)
    mask[:, :, 4:8, 6:10] = 1
    pred = target.clone()
    pred[mask == 0] = 99.0  # garbage outside the square
    assert float(masked_mse(pred, target, mask)) == 0.0
    pred2 = pred.clone()
    pred2[mask == 1] += 0.5
    base = float(masked_mse(pred2, target, mask))
    assert base == pytest.approx(0.25)
    pred2[mask == 0] = -7.0
    assert float(masked_mse(pred2, target, mask)) == pytest.approx(base)


def test_inpaint_sample_masks_a_quarter_square() -> None:
    _, task = make_task("inpaint")
    vol = np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32) + 5.0
    s = task.make_sample(SliceContext(vol, 0), np.random.default_rng(3))
    m = s["mask"][0].astype(bool)
    ys, xs = np.nonzero(m)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (8, 8) and m.sum() == 64
    assert np.all(s["image"][0][m] == 0.0)
    np.testing.assert_array_equal(s["image"][0][~m], s["target"][0][~m])


# -- vicreg -------------------------------------------------------------------------------------


def test_vicreg_terms() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 8, generator=g)
    parts = vicreg_loss(z, z.clone())
    assert float(parts["invariance"]) == 0.0
    wide = vicreg_loss(10 * z, 10 * z + 0.1)
    assert float(wide["variance"]) == 0.0  # every std above 1
    collapsed = vicreg_loss(torch.zeros(16, 8), torch.zeros(16, 8))
    assert float(collapsed["variance"]) == pytest.approx(1.0 - math.sqrt(1e-4), rel=1e-4)
    # Covariance penalises correlated dimensions only.
    a = torch.randn(256, 1, generator=g)
    corr = torch.cat([a, a], dim=1)
    indep = torch.randn(256, 2, generator=g)
    assert float(vicreg_loss(corr, corr)["covariance"]) > 10 * float(
        vicreg_loss(indep, indep)["covariance"]
    )
    p = vicreg_loss(z, z + 0.3)
    total = 25 * p["invariance"] + 25 * p["variance"] + 1 * p["covariance"]
    assert float(p["loss"]) == pytest.approx(float(total))


# -- moco ---------------------------------------------------------------------------------------


def _ref_info_nce(q: list[list[float]], k: list[list[float]], t: float, queue=None) -> float:
    def norm(v: list[float]) -> list[float]:
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b))

    q = [norm(v) for v in q]
    k = [norm(v) for v in k]
    total = 0.0
    for i, qi in enumerate(q):
        pos = dot(qi, k[i]) / t
        negs = (
            [dot(qi, kj) / t for j, kj in enumerate(k) if j != i]
            if queue is None
            else [dot(qi, norm(u)) / t for u in queue]
        )
        total += -pos + math.log(math.exp(pos) + sum(math.exp(x) for x in negs))
    return total / len(q)


@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_info_nce_matches_a_written_out_reference(temperature: float) -> None:
    g = torch.Generator().manual_seed(1)
    q, k, queue = (
        torch.randn(5, 7, generator=g),
        torch.randn(5, 7, generator=g),
        torch.randn(6, 7, generator=g),
    )
    got = float(info_nce(q, k, temperature))
    assert got == pytest.approx(_ref_info_nce(q.tolist(), k.tolist(), temperature), rel=1e-5)
    got_q = float(info_nce(q, k, temperature, queue))
    ref_q = _ref_info_nce(q.tolist(), k.tolist(), temperature, queue.tolist())
    assert got_q == pytest.approx(ref_q, rel=1e-5)


def test_moco_momentum_update_and_queue() -> None:
    net, task = make_task("moco", queue_size=8, temperature=0.2)
    key0 = [p.clone() for p in task.key_encoder.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(key0, net.encoder.parameters()))
    assert not any(p.requires_grad for p in task.key_encoder.parameters())
    opt = torch.optim.SGD(
        [p for p in [*net.parameters(), *task.parameters()] if p.requires_grad], lr=0.5
    )
    batch = make_batch(task, n=3)
    opt.zero_grad()
    task(net, batch)["loss"].backward()
    opt.step()
    queue0 = task.queue.clone()
    task.after_step(net)
    # key = 0.99 * old + 0.01 * new query weights
    for pk, p0, pq in zip(task.key_encoder.parameters(), key0, net.encoder.parameters()):
        torch.testing.assert_close(pk, 0.99 * p0 + 0.01 * pq.detach())
    assert int(task.queue_ptr) == 6  # 2 views x 3 keys
    assert not torch.equal(task.queue[:6], queue0[:6]) and torch.equal(task.queue[6:], queue0[6:])
    torch.testing.assert_close(task.queue.norm(dim=1), torch.ones(8))


# -- rubik --------------------------------------------------------------------------------------


def test_rubik_permutations_invert() -> None:
    assert len(PERMS) == 24 and len(set(PERMS)) == 24
    crop = np.arange(16 * 16, dtype=np.float32).reshape(1, 16, 16)
    patches = split_grid(crop)
    assert patches.shape == (4, 1, 8, 8)
    np.testing.assert_array_equal(join_grid(patches), crop)
    seen = set()
    for p in range(24):
        shuffled = shuffle_patches(patches, p)
        np.testing.assert_array_equal(join_grid(unshuffle_patches(shuffled, p)), crop)
        seen.add(join_grid(shuffled).tobytes())
    assert len(seen) == 24  # every permutation is a different puzzle


def test_rubik_sample_target_restores_the_slice() -> None:
    _, task = make_task("rubik", jitter=0.0, flip=False, scale_min=1.0)
    vol = np.random.default_rng(0).normal(size=(2, 64, 64)).astype(np.float32)
    targets = set()
    for seed in range(6):
        s = task.make_sample(SliceContext(vol, 1), np.random.default_rng(seed))
        assert s["patches"].shape == (4, 1, 32, 32) and s["target"].shape == ()
        restored = join_grid(unshuffle_patches(s["patches"], int(s["target"])))
        np.testing.assert_allclose(restored[0], vol[1], atol=1e-6)
        targets.add(int(s["target"]))
    assert len(targets) > 1


def test_rubik_extra_heads() -> None:
    net, task = make_task("rubik", flip_head=True, mask_head=True, mask_prob=0.5)
    batch = make_batch(task, n=3)
    assert batch["flipped"].shape == (3, 4) and batch["masked"].shape == (3, 4)
    out = task(net, batch)
    assert {"order_ce", "flip_bce", "mask_bce"} <= set(out)
    torch.testing.assert_close(
        out["loss"].detach(), out["order_ce"] + out["flip_bce"] + out["mask_bce"]
    )


# -- slices and simsiam -------------------------------------------------------------------------


def test_auto_slice_step() -> None:
    assert auto_slice_step(10.0, 10) == 1  # ACDC-like thick MRI
    assert auto_slice_step(5.0, 200) == 1
    assert auto_slice_step(1.0, 200) == 5 and auto_slice_step(2.5, 200) == 5
    assert auto_slice_step(4.0, 200) == 3
    assert auto_slice_step(1.0, 8) == 1  # few slices
    assert auto_slice_step(1.0, 13) == 3


def _ramp_ctx(z: int, n: int = 8, spacing: float = 1.0) -> SliceContext:
    vol = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 16, 16)).copy()
    return SliceContext(vol, z, spacing=(spacing, 1.0, 1.0))


def test_slices_targets_and_clipping() -> None:
    _, task = make_task("slices", t=2, flip=False)
    s = task.make_sample(_ramp_ctx(z=4), np.random.default_rng(0))
    assert s["image"].shape == (1, 16, 16) and s["target"].shape == (2, 16, 16)
    assert (s["image"][0, 0, 0], s["target"][0, 0, 0], s["target"][1, 0, 0]) == (4, 2, 6)
    s0 = task.make_sample(_ramp_ctx(z=1), np.random.default_rng(0))
    assert (s0["target"][0, 0, 0], s0["target"][1, 0, 0]) == (0, 3)  # j - t clipped to 0
    s7 = task.make_sample(_ramp_ctx(z=7), np.random.default_rng(0))
    assert (s7["target"][0, 0, 0], s7["target"][1, 0, 0]) == (5, 7)
    _, auto = make_task("slices", flip=False)  # t automatic: 10 mm slices -> 1
    sa = auto.make_sample(_ramp_ctx(z=4, spacing=10.0), np.random.default_rng(0))
    assert (sa["target"][0, 0, 0], sa["target"][1, 0, 0]) == (3, 5)


def test_simsiam_pairs() -> None:
    assert pair_candidates(5, 2, 20).tolist() == [1, 2, 8, 9]
    assert pair_candidates(0, 2, 20).tolist() == [3, 4]
    assert pair_candidates(0, 1, 3).tolist() == [2]
    assert pair_candidates(1, 1, 3).tolist() == [0, 2]  # none at distance 2: farthest stand in
    _, task = make_task("simsiam", t=1, jitter=0.0, flip=False)
    for seed in range(5):
        s = task.make_sample(_ramp_ctx(z=3), np.random.default_rng(seed))
        assert s["view1"][0, 0, 0] == 3 and s["view2"][0, 0, 0] in (1, 5)


def test_neg_cosine_stops_gradient_on_the_target_branch() -> None:
    p = torch.randn(4, 6, requires_grad=True)
    z = torch.randn(4, 6, requires_grad=True)
    loss = neg_cosine(p, z)
    loss.backward()
    assert p.grad is not None and z.grad is None
    assert float(neg_cosine(z.detach(), z.detach())) == pytest.approx(-1.0)
