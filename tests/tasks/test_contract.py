"""One contract every registered auxiliary task honours (STYLE.md: a shared contract test)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_mtssl.tasks import (
    TASKS,
    AuxTask,
    DataSummary,
    build_task,
    task_class,
    task_config,
    task_info,
)
from tests.tasks.conftest import NUM_CLASSES, SMALL, make_batch, make_ctx, make_task

NAMES = list(TASKS)


def test_registry_is_the_method_list() -> None:
    assert NAMES == ["sdm", "rubik", "moco", "vicreg", "slices", "simsiam", "inpaint"]


@pytest.mark.parametrize("name", NAMES)
def test_class_metadata(name: str) -> None:
    cls = TASKS[name]
    assert issubclass(cls, AuxTask) and cls.name == name
    assert cls.level in ("encoder", "dense")
    assert isinstance(cls.summary, str) and 10 < len(cls.summary) < 120 and "\n" not in cls.summary
    assert isinstance(cls.paper, str) and cls.paper
    assert dataclasses.is_dataclass(cls.Config)
    assert cls.needs_labels == (name == "sdm")
    expected_level = "encoder" if name in ("rubik", "moco", "vicreg", "simsiam") else "dense"
    assert cls.level == expected_level


@pytest.mark.parametrize("name", NAMES)
def test_samples_deterministic_and_consistent(name: str) -> None:
    _, task = make_task(name)
    ctx = make_ctx(z=4)
    a = task.make_sample(ctx, np.random.default_rng(7))
    b = task.make_sample(ctx, np.random.default_rng(7))
    c = task.make_sample(ctx, np.random.default_rng(8))
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert isinstance(a[k], np.ndarray)
        assert a[k].dtype in (np.float32, np.int64), (k, a[k].dtype)
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a), "another seed gave the same sample"
    # Other slices give the same keys, shapes and dtypes (the trainer stacks them).
    for z in range(8):
        s = task.make_sample(make_ctx(z=z), np.random.default_rng(z))
        assert {k: (v.shape, v.dtype) for k, v in s.items()} == {
            k: (v.shape, v.dtype) for k, v in a.items()
        }


@pytest.mark.parametrize("name", NAMES)
def test_loss_finite_and_gradients_reach_head_and_shared_part(name: str) -> None:
    net, task = make_task(name)
    net.train(), task.train()
    out = task(net, make_batch(task))
    loss = out["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    for k, v in out.items():
        if k != "loss":
            assert not torch.as_tensor(v).requires_grad, k
            assert torch.isfinite(torch.as_tensor(v)).all(), k
    loss.backward()

    trainable = [(n, p) for n, p in task.named_parameters() if p.requires_grad]
    assert trainable, "the task has no head"
    for n, p in trainable:
        assert p.grad is not None, f"no gradient reaches task parameter {n}"
    assert sum(float(p.grad.abs().sum()) for _, p in trainable) > 0

    def part_grad(prefix: str) -> float:
        return sum(
            float(p.grad.abs().sum())
            for n, p in net.named_parameters()
            if n.startswith(prefix) and p.grad is not None
        )

    assert part_grad("encoder.") > 0
    if task.level == "dense":
        assert part_grad("decoder.") > 0
    else:
        assert part_grad("decoder.") == 0
    assert net.seg_head.weight.grad is None  # the segmentation head is not the task's


@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases_on_a_fixed_batch(name: str) -> None:
    net, task = make_task(name)
    batch = make_batch(task, n=4)
    params = [p for p in [*net.parameters(), *task.parameters()] if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = task(net, batch)["loss"]
        loss.backward()
        opt.step()
        task.after_step(net)
        losses.append(float(loss.detach()))
    assert all(np.isfinite(losses))
    assert min(losses[-5:]) < losses[0] - 1e-3 * max(1.0, abs(losses[0])), losses


@pytest.mark.parametrize("name", NAMES)
def test_default_config_builds_full_size_heads(name: str) -> None:
    cfg = task_config(name)
    assert isinstance(cfg, TASKS[name].Config)
    net, task = make_task(name)
    task2 = build_task(name, net, None, num_classes=NUM_CLASSES)
    assert task2.cfg == cfg
    assert task.cfg == task_config(name, **SMALL.get(name, {}))


def test_unknown_task_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        task_class("mocco")
    msg = str(err.value)
    assert "'moco'" in msg and all(n in msg for n in NAMES)
    with pytest.raises(ValueError, match="Valid tasks: sdm, rubik"):
        build_task("jigsaw", make_task("sdm")[0])


def test_unknown_config_fields_are_named() -> None:
    with pytest.raises(ValueError, match="momentum") as err:
        task_config("moco", momentun=0.9)
    assert "momentun" in str(err.value)
    with pytest.raises(ValueError, match="momentum"):
        task_config("moco", momentum=1.5)
    with pytest.raises(ValueError, match="crop_size"):
        task_config("rubik", crop_size=48)
    with pytest.raises(ValueError, match="t"):
        task_config("slices", t=0)


def test_task_info_lists_every_task_with_defaults() -> None:
    info = task_info()
    assert [i["name"] for i in info] == NAMES
    for i in info:
        assert set(i) == {"name", "summary", "level", "needs_labels", "paper", "config"}
    moco = next(i for i in info if i["name"] == "moco")["config"]
    assert moco["momentum"] == 0.99 and moco["temperature"] == 1.0 and moco["queue_size"] == 0
    vic = next(i for i in info if i["name"] == "vicreg")["config"]
    assert (vic["w_invariance"], vic["w_variance"], vic["w_covariance"]) == (25.0, 25.0, 1.0)
    assert vic["expander"] == 1024
    rub = next(i for i in info if i["name"] == "rubik")["config"]
    assert rub["hidden"] == 1024 and rub["patch_dim"] == 64
    assert next(i for i in info if i["name"] == "slices")["config"]["t"] is None


def _summary(**kw: object) -> DataSummary:
    base = dict(
        n_scans=4,
        n_labelled_slices=10,
        n_unlabelled_slices=30,
        min_slices=8,
        max_slices=10,
        num_classes=4,
        slice_spacing=10.0,
    )
    base.update(kw)
    return DataSummary(**base)  # type: ignore[arg-type]


def test_check_data() -> None:
    ok = _summary()
    assert all(TASKS[n].check_data(ok) is None for n in NAMES)
    msg = TASKS["sdm"].check_data(_summary(n_labelled_slices=0))
    assert msg and "sdm" in msg and "label" in msg
    flat = _summary(min_slices=1, max_slices=1)
    for n in ("slices", "simsiam"):
        msg = TASKS[n].check_data(flat)
        assert msg and n in msg and "single 2D images" in msg and "3 slices" in msg
    for n in ("sdm", "rubik", "moco", "vicreg", "inpaint"):
        assert TASKS[n].check_data(flat) is None
    one = _summary(n_labelled_slices=0, n_unlabelled_slices=1, min_slices=1, max_slices=1)
    assert TASKS["moco"].check_data(one) and TASKS["vicreg"].check_data(one)
    assert TASKS["inpaint"].check_data(one) is None


def test_needs_answer_for_every_task_without_torch() -> None:
    """The torch-free answers (napari_mtssl.task_needs) are the task classes' own."""
    from napari_mtssl import task_needs

    assert list(task_needs.NAMES) == NAMES
    assert {n: TASKS[n].min_batch for n in NAMES} == {
        n: (2 if n in ("moco", "vicreg", "simsiam") else 1) for n in NAMES
    }
    assert all(task_needs.min_batch(n) == TASKS[n].min_batch for n in NAMES)
    flat = _summary(min_slices=1, max_slices=1, n_labelled_slices=0)
    assert {n: task_needs.check(n, flat) for n in NAMES} == {
        n: TASKS[n].check_data(flat) for n in NAMES
    }
    with pytest.raises(ValueError, match="Did you mean 'sdm'"):
        task_needs.check("sdn", flat)


def test_slice_ok() -> None:
    net, sdm = make_task("sdm")
    assert sdm.slice_ok(make_ctx(labelled=True))
    assert not sdm.slice_ok(make_ctx(labelled=False))
    ctx = make_ctx()
    ctx.labelled[ctx.z] = False
    assert not sdm.slice_ok(ctx)
    with pytest.raises(ValueError, match="no labels"):
        sdm.make_sample(ctx, np.random.default_rng(0))
    _, slices = make_task("slices")
    flat = make_ctx()
    flat.volume = flat.volume[:1]
    flat.z = 0
    assert not slices.slice_ok(flat)
    assert slices.slice_ok(make_ctx())


@pytest.mark.parametrize("name", ["moco", "vicreg", "simsiam"])
def test_batch_statistics_tasks_refuse_a_batch_of_one(name: str) -> None:
    net, task = make_task(name)
    with pytest.raises(ValueError, match="at least 2"):
        task(net, make_batch(task, n=1))


@pytest.mark.parametrize("name", NAMES)
def test_task_does_not_own_the_network(name: str) -> None:
    """The trainer optimises net and task together: no parameter may appear in both."""
    net, task = make_task(name)
    net_ids = {id(p) for p in net.parameters()}
    assert not any(id(p) in net_ids for p in task.parameters())
    assert not any(k.startswith(("encoder.", "decoder.", "seg_head.")) for k in task.state_dict())


def test_build_task_accepts_overrides_as_a_dict() -> None:
    net, _ = make_task("inpaint")
    task = build_task("inpaint", net, {"frac": 0.5})
    assert task.cfg.frac == 0.5
    with pytest.raises(ValueError, match="frac"):
        build_task("inpaint", net, {"fraction": 0.5})
    with pytest.raises(TypeError, match="InpaintConfig"):
        build_task("inpaint", net, task_config("sdm"))
