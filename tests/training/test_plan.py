"""The planner: fingerprints, the shape it picks for very different scans, budgets, messages."""

from __future__ import annotations

import re

import numpy as np
import pytest

from napari_mtssl import api
from napari_mtssl.training.config import format_budget, parse_budget, profile
from napari_mtssl.training.planning import lanes as L
from napari_mtssl.training.planning import machine as M
from napari_mtssl.training.planning import plan as P
from napari_mtssl.training.planning import planner
from napari_mtssl.training.planning import shape as S
from napari_mtssl.training.planning import timing as T
from napari_mtssl.training.planning.fingerprint import Fingerprint, fingerprint
from napari_mtssl.training.planning.plan import Plan, PlanError
from napari_mtssl.training.planning.planner import make_plan


def fp(size, spacing, slices=(10, 10, 10), slice_spacing=5.0, n_val=2, mods=None, **kw):
    z = slices[1]
    return Fingerprint(
        n_train=10,
        n_val=n_val,
        n_labelled_scans=3,
        labelled_slices=3 * z,
        unlabelled_slices=7 * z,
        spacing=spacing,
        spacing_range=(min(spacing), max(spacing)),
        size=size,
        size_range=(min(size), max(size)),
        slice_spacing=slice_spacing,
        slices=slices,
        modalities=mods or {"MR": 10},
        intensity=kw.pop("intensity", {}),
        class_freq={"0": 0.9, "1": 0.1},
        num_classes=kw.pop("num_classes", 4),
        val_shapes=[(z, *size)] * n_val,
        **kw,
    )


def plan(f: Fingerprint, budget="1h", what="baseline", **over) -> Plan:
    """A plan from nominal step costs (``probe=False``): the same on every machine."""
    cfg = profile("quick", budget_s=parse_budget(budget), device="cpu", **over)
    return make_plan(f, cfg, what, probe=False)


def test_thick_slice_cine_mri_keeps_its_resolution():
    p = plan(fp((256, 216), (1.5, 1.5)), "10m")
    assert p.spacing == (1.5, 1.5) and p.patch == 128 and p.patch % 2**p.depth == 0
    assert p.preprocessing().norm_for("MR").scheme == "zscore"
    assert any("covers" in r or "cover" in r for r in p.reasons)


def test_ct_volume_uses_dataset_statistics_and_fits_the_patch():
    ct = {"CT": {"p0.5": -950.0, "p99.5": 1200.0, "mean": 50.0, "std": 300.0, "n": 1000}}
    p = plan(
        fp(
            (512, 512),
            (0.7, 0.7),
            slices=(300, 300, 300),
            slice_spacing=1.0,
            mods={"CT": 10},
            intensity=ct,
        ),
        "1h",
    )
    norm = p.preprocessing().norm_for("CT")
    assert norm.scheme == "ct" and norm.lower == -950 and norm.std == 300
    assert p.patch <= S.CPU_PATCH_MAX and p.patch >= 0.5 * 512 * 0.7 / p.spacing[0] - 16
    # CT without labelled foreground: a fixed soft-tissue window, said so
    q = plan(fp((512, 512), (0.7, 0.7), mods={"CT": 10}), "1h")
    assert q.preprocessing().norm_for("CT").scheme == "window"
    assert any("window" in r for r in q.reasons)


def test_single_large_xray_is_coarsened_to_fit_a_cpu_patch():
    p = plan(fp((2048, 2048), (0.15, 0.15), slices=(1, 1, 1), slice_spacing=1.0), "1h")
    assert p.spacing[0] == pytest.approx(0.15 * 4)  # 4x coarser, the most the planner allows
    assert p.patch == S.CPU_PATCH_MAX
    assert any("4x the median" in r for r in p.reasons)


def test_anisotropic_and_missing_spacing():
    p = plan(fp((200, 100), (0.5, 1.0)), "1h")
    assert p.spacing == (0.75, 0.75)  # one isotropic target from the median of both axes
    f = fp(
        (64, 64),
        (1.0, 1.0),
        slice_spacing=1.0,
        spacing_known=False,
        notes=["every scan has 1 mm voxels"],
    )
    q = plan(f, "10m")
    assert any("1 mm" in w for w in q.warnings)


def test_scan_smaller_than_any_patch():
    p = plan(fp((40, 30), (1.0, 1.0)), "10m")
    assert p.patch >= 32 and p.patch % 2**p.depth == 0 and 3 <= p.depth


@pytest.mark.slow
def test_user_settings_win_and_are_listed():
    p = plan(
        fp((256, 216), (1.5, 1.5)),
        "1h",
        data__patch_size=192,
        model__width=24,
        data__target_spacing=1.0,
        model__depth=5,
    )
    assert (p.patch, p.width, p.depth, p.spacing) == (192, 24, 5, (1.0, 1.0))
    assert {"data.patch_size", "model.width", "data.target_spacing"} <= set(p.overridden)
    with pytest.raises(PlanError, match="multiple of"):
        plan(fp((256, 216), (1.5, 1.5)), "1h", data__patch_size=80, model__depth=5)
    native = plan(fp((256, 216), (1.5, 1.5)), "1h", data__target_spacing=-1)
    assert native.spacing is None and native.preprocessing().spacing is None


def test_budget_shares_steps_equally_and_counts_halving():
    """The paper's comparison: every model the same steps, both modes with halving."""
    p = plan(
        fp((256, 216), (1.5, 1.5)),
        "1h",
        what="all",
        stage1__modes="both",
        stage1__tasks=["sdm", "vicreg", "inpaint"],
        stage2__method="paper",
    )
    assert p.models == [
        "baseline",
        "sdm:joint",
        "sdm:pretrain",
        "vicreg:joint",
        "vicreg:pretrain",
        "inpaint:joint",
        "inpaint:pretrain",
        "student",
    ]
    st = p.steps
    assert st["seg"] >= P.MIN_STEPS and st["student"] == st["seg"]
    assert st["halving_at"] == round(0.34 * st["seg"]) and st["pretext"] == round(0.5 * st["seg"])
    total = p.estimate_s["total"]
    assert total <= 3600 * 0.96 and total > 3600 * 0.5
    cfg = p.apply(profile("quick", device="cpu", stage2__method="paper"))
    assert cfg.baseline.steps == cfg.stage1.joint_steps == cfg.stage2.steps == st["seg"]
    assert cfg.data.patch_size == p.patch and cfg.model.width == p.width
    # the user sees why, and the model table
    rows = p.step_table()
    assert rows[2][0] == "sdm:pretrain" and "pre-training" in rows[2][1]
    assert Plan.from_dict(p.to_dict()) == p


@pytest.mark.slow
def test_the_default_plan_gives_the_student_its_share_and_pre_trains_below_joint_pays():
    """Default plan: below JOINT_PAYS_STEPS per model only the pre-training mode trains, the
    semi-supervised student gets `stage2.share` of the time (more steps than any teacher, its
    stored ensemble maps priced), and a baseline alone keeps the whole budget. (An hour gives
    each teacher fewer than stage1.min_teacher_steps here: kept whatever the budget.)"""
    f = fp((256, 216), (1.5, 1.5))
    p = plan(f, "1h", what="all", stage1__min_teacher_steps=0)
    assert p.modes == "pretrain" and p.steps["seg"] < P.JOINT_PAYS_STEPS
    assert p.models == ["baseline", "sdm:pretrain", "inpaint:pretrain", "student"]
    assert p.steps["student"] > 2 * p.steps["seg"]
    assert 1 <= p.steps["soft_scans"] <= f.n_train
    assert p.estimate_s["student"] > p.steps["student"] * p.timings["student"]  # + the maps
    assert p.estimate_s["total"] <= 3600 * 0.96
    cfg = p.apply(profile("quick", device="cpu"))
    assert cfg.stage1.modes == "pretrain" and cfg.stage2.steps == p.steps["student"]
    assert cfg.stage1.eval_every == p.steps["seg"]  # one validation: nothing decided halfway
    alone = plan(f, "1h", what="baseline")
    assert alone.steps["seg"] > 3 * p.steps["seg"]  # the whole hour, not a share
    # a budget where every model reaches JOINT_PAYS_STEPS trains both modes
    big = plan(f, "40h", what="all")
    assert big.modes == "both" and big.steps["seg"] >= P.JOINT_PAYS_STEPS
    assert "sdm:joint" in big.models


@pytest.mark.slow
def test_tiny_budget_is_refused_with_what_fits():
    f = fp((256, 216), (1.5, 1.5))
    keep = {"stage1__min_teacher_steps": 0}  # teachers whatever the budget
    with pytest.raises(PlanError, match="allows baseline \\+ [12] tasks?") as e:
        plan(f, "10m", what="all", stage1__tasks=["sdm", "vicreg", "inpaint"], **keep)
    assert "give sdm, vicreg, inpaint a budget of at least" in str(e.value)
    # the budget it asks for is more than the one it refused, and is accepted
    asked = re.search(r"a budget of at least (.+)$", str(e.value)).group(1)
    assert parse_budget(asked.replace(" ", "")) > 600
    fits = plan(
        f, asked.replace(" ", ""), what="all", stage1__tasks=["sdm", "vicreg", "inpaint"], **keep
    )
    assert fits.steps["seg"] >= P.MIN_STEPS
    with pytest.raises(PlanError, match="give this run a budget"):
        plan(f, "5s", what="baseline")


@pytest.mark.slow
def test_a_budget_too_short_for_teachers_trains_the_baseline_and_the_student():
    """Below stage1.min_teacher_steps per teacher the plan trains no teacher, says why and
    from what budget they train; the baseline and the student share the time (more steps
    each than with the teachers), and a budget refused with teachers may fit without them."""
    f = fp((256, 216), (1.5, 1.5))
    tasks = ["sdm", "vicreg", "inpaint"]
    with_teachers = plan(f, "20m", what="all", stage1__tasks=tasks, stage1__min_teacher_steps=0)
    p = plan(f, "20m", what="all", stage1__tasks=tasks)  # the default: 2000 steps
    assert p.models == ["baseline", "student"]
    skip = p.teachers_skipped
    assert skip["tasks"] == tasks and skip["steps"] == with_teachers.steps["seg"] < 2000
    assert f"about {skip['steps']} segmentation steps" in skip["why"]
    assert "stage1.min_teacher_steps (2000" in skip["why"]
    assert any(skip["why"] in line for line in p.describe())
    # the network's reason gives the steps each model gets without the teachers
    per_model = [r for r in p.reasons if "steps per model" in r]
    assert per_model and all(f"about {p.steps['seg']} steps per model" in r for r in per_model)
    # ... and never calls those steps fewer than the planner aims for (they are more here)
    assert not any(f"about {p.steps['seg']} steps per model, fewer" in r for r in per_model)
    priced = [r for r in with_teachers.reasons if "steps per model, fewer" in r]
    assert [r.split("; width ")[0] for r in per_model] == [r.split("; width ")[0] for r in priced]
    said = re.search(r"about (\d+) steps per model", priced[0]).group(1)
    assert f"would leave about {said} steps per model with the teachers" in per_model[0]
    again = Plan.from_dict(p.to_dict())
    planner._restate_steps_per_model(again, 7)
    assert [r.count("no teacher: see below") for r in again.reasons if "per model" in r] == [
        1 for _ in per_model
    ]
    assert p.steps["seg"] > with_teachers.steps["seg"]
    assert p.estimate_s["total"] <= 1200 * 0.96
    cfg = p.apply(profile("quick", device="cpu", stage1__tasks=tasks, stage1__lambda_={"sdm": 2}))
    assert cfg.stage1.tasks == [] and cfg.stage1.lambda_ == {}
    assert Plan.from_dict(p.to_dict()) == p
    # the budget it names for teachers gives them their steps
    more = re.search(r"train from a budget of about (.+)$", skip["why"]).group(1)
    big = plan(f, more.replace(" ", ""), what="all", stage1__tasks=tasks)
    assert not big.teachers_skipped and big.steps["seg"] >= 1000
    assert big.models[1:-1] == ["sdm:pretrain", "vicreg:pretrain", "inpaint:pretrain"]
    # 10 minutes: refused with the three teachers (test above), trained without them
    short = plan(f, "10m", what="all", stage1__tasks=tasks)
    assert short.models == ["baseline", "student"] and "too few" in short.teachers_skipped["why"]
    # runs that keep their teachers whatever the budget: a baseline alone, the paper's
    # student, steps set by hand
    assert not plan(f, "20m", what="baseline").teachers_skipped
    paper = plan(f, "20m", what="all", stage2__method="paper")
    assert not paper.teachers_skipped and "sdm:pretrain" in paper.models
    with pytest.raises(ValueError, match="min_teacher_steps"):
        profile("quick", stage1__min_teacher_steps=-1)


def test_task_crops_fit_the_patch():
    tasks = ["rubik", "vicreg"]
    p = plan(fp((180, 180), (1.0, 1.0)), "1h", "all", stage1__tasks=tasks, data__patch_size=64)
    cfg = p.apply(profile("quick", device="cpu", stage1__tasks=tasks, data__patch_size=64))
    o = cfg.stage1.task_overrides
    assert o["vicreg"]["crop_size"] <= p.patch and o["rubik"]["crop_size"] <= p.patch
    assert o["rubik"]["crop_size"] % (2 * 2**p.depth) == 0
    kept = p.apply(
        profile("quick", stage1__tasks=tasks, stage1__task_overrides={"vicreg": {"crop_size": 32}})
    )
    assert kept.stage1.task_overrides["vicreg"]["crop_size"] == 32  # the user's choice stays


def test_fingerprint_of_a_workspace(tmp_path):
    ws = api.create_workspace(tmp_path / "w", source="sample", labelled=2)
    f = fingerprint(ws)
    assert f.spacing == (1.5, 1.5) and f.size == (96, 96) and f.slice_spacing == 8.0
    assert f.n_labelled_scans == 2 and f.labelled_slices == 24 and f.modalities == {"MR": 4}
    assert abs(sum(f.class_freq.values()) - 1) < 1e-6 and f.spacing_known
    assert Fingerprint.from_dict(f.to_dict()) == f


def test_one_labelled_slice_trains(tmp_path):
    """One labelled slice in the whole study: a plan, a run, and a note that the scores are
    optimistic (the model is validated on the slice it learnt from)."""
    ws = api.create_workspace(tmp_path / "w", source="sample", labelled=0)
    sid = ws.scan_ids("train")[0]
    lab = np.zeros(ws.record(sid).shape, np.uint8)
    lab[5, 30:60, 30:60] = 1
    ws.set_labels(sid, lab, slices=[5], by="test")
    for v in ws.scan_ids("val"):
        ws.set_split(v, "unused")
    rep = api.run(api.train(ws, api.make_config("tiny", device="cpu"), "baseline"))
    assert rep["data"]["labelled_slices"] == 1
    assert any("optimistic" in n for n in rep["data"]["notes"])


def test_a_gpu_plan_is_larger(monkeypatch):
    """No GPU here: the CUDA branch of the planner with the device's precision faked. A GPU
    budget buys the whole slice and a wider network, bf16, and threads only to feed it."""
    import torch

    from napari_mtssl.training.prediction import inference

    monkeypatch.setattr(inference, "resolve_precision", lambda dev, req="auto": "bf16")
    cfg = profile("quick", budget_s=parse_budget("15m"), device="cpu")
    p = make_plan(
        fp((256, 216), (1.5, 1.5)), cfg, "baseline", device=torch.device("cuda"), probe=False
    )
    assert p.device == "cuda" and p.precision == "bf16"
    assert p.width >= 32 and p.batch_size == 16
    assert p.patch >= 128 and p.threads <= 4


@pytest.mark.parametrize(
    ("free_gib", "cpus", "width", "lanes"),
    [
        (78, 16, 5, L.GPU_MAX_LANES),  # an empty H100: the cap
        (8 + 2 * 2.1 + 0.1, 16, 5, 2),  # room for two units beyond the reserve
        (8.5, 16, 5, 1),  # almost full: still one (the run's own)
        (78, 2, 5, 1),  # one core to feed the GPU, one left to the viewer
        (78, 16, 3, 3),  # no more than the units that can start together
    ],
)
def test_units_on_one_gpu_are_as_many_as_its_free_memory_holds(
    monkeypatch, free_gib, cpus, width, lanes
):
    """No GPU here: the card's memory faked. A unit whose dearest step peaked at 1000 MiB
    counts 1000 x ALLOC_SLACK + CUDA_CONTEXT_MB = 2100 MiB; 10 % of an 80 GiB card is kept."""
    import torch

    monkeypatch.setattr(L, "ALLOC_SLACK", 1.5)
    monkeypatch.setattr(L, "CUDA_CONTEXT_MB", 600.0)
    monkeypatch.setattr(L, "usable_cpus", lambda: cpus)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (free_gib * 2**30, 80 * 2**30))
    p = plan(fp((256, 216), (1.5, 1.5)), "10m")
    p.device = "cuda"
    p.timings = {**p.timings, "peak_mb": 1000.0}
    cfg = profile("quick", budget_s=0.0, device="cpu")
    n, why = L.gpu_lanes(p, cfg, width)
    assert n == lanes
    assert "about 2.1 GiB each (1000 MiB measured peak)" in why and f"{width} unit(s)" in why


def test_a_quick_retrain_fine_tunes_with_fewer_steps_than_a_new_model():
    """The correction dock's 3 minutes on one slow thread: a retrain of the trained student is
    accepted where a model from scratch would be refused."""
    from napari_mtssl.training.planning.planner import allocate

    f = fp((256, 216), (1.5, 1.5))
    p = plan(f, "1h")
    slow = {k: v * 0.6 for k, v in p.timings.items()}
    slow["student"] = 2.2 * slow["seg"]  # a distillation step: 3 minutes, ~200 steps
    cfg = profile("quick", budget_s=180, device="cpu")
    with pytest.raises(PlanError, match="needs at least 300"):  # a new student
        allocate(Plan.from_dict(p.to_dict()), cfg, "stage2", f, timings=slow)
    got = allocate(Plan.from_dict(p.to_dict()), cfg, "retrain-quick", f, timings=slow)
    assert P.MIN_RETRAIN_STEPS <= got.steps["retrain"] < P.MIN_STEPS
    # the retrain is the student's stage, not another model: its row counts the retrain steps
    assert got.models == ["student"] and got.what == "retrain-quick"
    assert got.step_table()[0][:2] == ("student", str(got.steps["retrain"]))
    # a plan written before (its unit named "student (retrain)") reads the same way
    old = got.to_dict()
    old.pop("what")
    old["models"] = ["student (retrain)"]
    old["estimate_s"] = {"student (retrain)": 99.0, "total": 99.0}
    back = Plan.from_dict(old)
    assert back.models == ["student"] and back.what == "retrain-quick"
    assert back.estimate_s == {"student": 99.0, "total": 99.0} and back.step_table() == [
        ("student", str(got.steps["retrain"]), format_budget(99.0))
    ]


def test_the_lanes_run_jobs_as_the_scheduler_does():
    """Longest chain first, a job only after its dependencies: two lanes, two tasks' rungs
    (10 s) and the dearer mode's continuation (20 s after both its rungs)."""
    jobs = [
        L.Job("a:joint@rung", 0, 10),
        L.Job("a:pretrain@rung", 0, 10),
        L.Job("a:joint", 0, 20, ("a:joint@rung", "a:pretrain@rung")),
        L.Job("b:joint@rung", 0, 10),
        L.Job("b:pretrain@rung", 0, 10),
        L.Job("b:joint", 0, 20, ("b:joint@rung", "b:pretrain@rung")),
    ]
    ends = L.makespan(jobs, 0, 2)
    assert ends["a:joint"] >= max(ends["a:joint@rung"], ends["a:pretrain@rung"]) + 20
    assert max(ends.values()) == 40  # 4 rungs in two waves, then the two continuations
    assert max(L.makespan(jobs, 0, 1).values()) == 80  # one lane: the sum
    assert max(L.makespan(jobs, 0, 4).values()) == 30


@pytest.mark.parametrize(("slowdown", "lanes"), [(1.45, 2), (2.3, 1)])
def test_a_budget_trains_side_by_side_only_where_that_gives_more_steps(slowdown, lanes):
    """Steps timed beside another unit at 1.45x the time alone (this 2-core machine): two at
    once give each model more steps, and the plan says so. At 2.3x they would not: one at a
    time."""
    from napari_mtssl.training.planning.planner import allocate

    f = fp((256, 216), (1.5, 1.5))
    p = plan(f, "1h", what="stage1")
    alone = {k: v for k, v in p.timings.items() if not k.startswith("side:")}
    side = {f"side:{k}": v * slowdown for k, v in alone.items()}
    cfg = profile("quick", budget_s=3600, device="cpu")
    one = allocate(Plan.from_dict(p.to_dict()), cfg, "stage1", f, timings=alone)
    got = allocate(
        Plan.from_dict(p.to_dict()), cfg, "stage1", f, timings={**alone, **side}, lanes=2
    )
    assert got.lanes == lanes and "steps per model" in got.lanes_why
    how = "2 units at once" if lanes == 2 else "one unit at a time"
    assert f"- {how}: {got.lanes_why}" in got.describe()
    if lanes == 2:
        assert got.steps["seg"] > one.steps["seg"] * L.SIDE_GAIN
        # the wall time of the units laid out on two lanes still fits the budget
        assert got.estimate_s["total"] <= 3600 * 0.96
    else:
        assert got.steps["seg"] == one.steps["seg"]
        # asked for (--units-at-once 2), two at once it is, with the steps that fit that way
        cfg.units_at_once = 2
        asked = allocate(
            Plan.from_dict(p.to_dict()), cfg, "stage1", f, timings={**alone, **side}, lanes=2
        )
        assert asked.lanes == 2 and asked.steps["seg"] < one.steps["seg"] * L.SIDE_GAIN
        assert asked.estimate_s["total"] <= 3600 * 0.96


@pytest.mark.slow
def test_steps_are_timed_beside_a_process_that_trains_the_same_network(monkeypatch):
    """The side-by-side timing really runs a second process, and it is gone afterwards."""
    import multiprocessing as mp

    # A run gives up on the helper after START_S and prices one unit at a time; on a machine
    # busy that minute the spawned process's imports alone took longer than that, so the test
    # waits longer: only a helper that never starts fails it.
    monkeypatch.setattr(L, "START_S", 900.0)

    f = fp((64, 64), (1.0, 1.0), slices=(4, 4, 4), n_val=1)
    p = plan(f, "1h", data__patch_size=32, model__width=8, model__depth=2, data__batch_size=2)
    p.threads = 2
    cfg = p.apply(profile("quick", budget_s=3600, device="cpu", stage1__tasks=["sdm"]))
    t = L.time_side_by_side(p, cfg, f, 2)
    assert t["seg"] > 0 and t["task:sdm"] > 0 and t["eval"] > 0
    assert not mp.active_children()


@pytest.mark.slow
def test_a_process_that_cannot_start_beside_the_timing_is_reported_at_once(monkeypatch):
    """A helper that dies (here: a CUDA plan on a machine without CUDA) is a RuntimeError as
    soon as it has died, not after the wait for a slow start; the budget is then priced one
    unit at a time."""
    import time

    from napari_mtssl.training.planning.planner import allocate

    # The wait for a helper that is still starting, raised to 15 minutes (a hang guard only):
    # the error asserted is the one that says the helper died, with its exit code (a helper
    # given up on while it starts has none). How long that took is printed, not asserted.
    monkeypatch.setattr(L, "START_S", 900.0)
    f = fp((64, 64), (1.0, 1.0), slices=(4, 4, 4), n_val=1)
    p = plan(f, "1h", data__patch_size=32, model__width=8, model__depth=2, data__batch_size=2)
    p.device, p.threads = "cuda", 2
    cfg = p.apply(profile("quick", budget_s=3600, device="cpu", stage1__tasks=["sdm"]))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"could not start \(exit code [1-9]\d*\)"):
        L.time_side_by_side(p, cfg, f, 2)
    print(
        f"\n[side-by-side timing] a helper that died reported after {time.monotonic() - t0:.1f} s"
    )

    def broken(*a):
        raise RuntimeError("no room")

    q = plan(fp((256, 216), (1.5, 1.5)), "1h", what="stage1")
    alone = {k: v for k, v in q.timings.items() if not k.startswith("side:")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(L, "time_side_by_side", broken)
        got = allocate(
            q, profile("quick", budget_s=3600, device="cpu"), "stage1", f, lanes=2, timings=alone
        )
    assert got.lanes == 1 and "could not be timed side by side (no room)" in got.lanes_why
    assert "- one unit at a time: the steps could not be timed" in "\n".join(got.describe())


def test_a_baseline_plan_times_no_auxiliary_task(monkeypatch):
    """A baseline's click waits only for the steps it prices: no task is built or timed."""
    from napari_mtssl import tasks

    built: list[str] = []
    real = tasks.build_task
    monkeypatch.setattr(
        tasks, "build_task", lambda name, *a, **k: built.append(name) or real(name, *a, **k)
    )
    f = fp((64, 64), (1.0, 1.0), slices=(4, 4, 4), n_val=1, num_classes=3)
    cfg = profile("tiny", budget_s=0, device="cpu", stage1__tasks=["sdm", "inpaint"])
    p = make_plan(f, cfg, "baseline", probe=False)
    t = T.time_steps(p, cfg, f, "baseline")
    assert built == [] and not any(k.startswith("task:") for k in t)
    assert t["seg"] > 0 and t["eval"] > 0
    t = T.time_steps(p, cfg, f, "all")
    assert built == ["sdm", "inpaint"] and {"task:sdm", "task:inpaint"} <= set(t)


def test_a_planner_step_can_be_overridden():
    """The shape is decided in small steps a subclass may replace (nnU-Net's planner shape);
    the rest of the plan, and the budget shared afterwards, follow the replaced step."""

    class WideNarrowPatches(S.ShapePlanner):
        def widths(self) -> list[int]:
            return [48]

        def patches(self, s_side: float) -> list[int]:
            return [64]

    f = fp((256, 216), (1.5, 1.5))
    cfg = profile("quick", budget_s=parse_budget("1h"), device="cpu")
    default = make_plan(f, cfg, "baseline", probe=False)
    custom = make_plan(f, cfg, "baseline", probe=False, planner=WideNarrowPatches)
    assert (default.width, default.patch) != (48, 64)
    assert (custom.width, custom.patch, custom.depth) == (48, 64, S._depth_for(64))
    assert custom.spacing == default.spacing  # the steps not replaced decide as before
    assert "64 x 64 patches" in custom.reasons[1] and "width 48" in custom.reasons[1]
    assert custom.steps and custom.estimate_s  # the budget is shared for the replaced shape


class SettledLoad:
    """A load history whose last windows all read ``busy`` cores."""

    every_s = 0.01

    def __init__(self, busy: float) -> None:
        self.busy = busy

    def recent(self, within_s: float) -> list[float]:
        return [self.busy, self.busy]


def test_a_waiting_worker_times_ahead_what_its_jobs_plan_asks_for(monkeypatch):
    """The viewer's spare worker times, once the load settles, the step-cost fit and the two
    networks behind it; the job's plan at that load (a study with four classes) then times no
    network for its shape, nor the network it chose when that is one of them. At another load
    it times anew; once a plan began, nothing more is timed ahead; with no core free, nothing is
    timed ahead at all."""
    import threading
    import time

    import torch

    from napari_mtssl.training.loop import pace

    threads = torch.get_num_threads()
    monkeypatch.setattr(T, "_COST_CACHE", {})
    monkeypatch.setattr(T, "_TIMED_STEPS", {})
    monkeypatch.setattr(T.TimingAhead, "closed", False)
    monkeypatch.setattr(T.inference, "resolve_device", lambda requested: torch.device("cpu"))
    try:
        # every core busy: nothing is timed ahead (it would take the viewer's share)
        monkeypatch.setattr(pace, "_HISTORY", SettledLoad(float(M.usable_cpus())))
        ahead = threading.Thread(target=T.time_ahead, kwargs={"every_s": 0.001})
        ahead.start()
        time.sleep(0.3)
        T.TimingAhead.closed = True  # as a plan does
        ahead.join(30)
        assert not ahead.is_alive() and T._COST_CACHE == {}
        T.TimingAhead.closed = False

        monkeypatch.setattr(pace, "_HISTORY", SettledLoad(0.1))
        T.time_ahead(interactive=True, most=1, every_s=0.001)
        (key,) = T._COST_CACHE
        policy = M.thread_policy(torch.device("cpu"), True, 0.1)
        assert key[0] == "cpu" and key[2:4] == (policy, 0)  # threads, load level
        assert len(T._TIMED_STEPS) == 2  # width 16, depth 4: 64 and 128 px

        optimisers = []  # a timed training step makes one
        real_adamw = torch.optim.AdamW
        monkeypatch.setattr(
            torch.optim, "AdamW", lambda *a, **k: optimisers.append(1) or real_adamw(*a, **k)
        )
        f = fp((256, 216), (1.4, 1.4), num_classes=4)
        cfg = profile("quick", budget_s=parse_budget("10m"), device="cpu")
        p = S.shape_plan(f, cfg, "baseline", interactive=True)
        assert p.threads == key[2] and p.precision == key[1] and p.batch_size == key[4]
        assert optimisers == [] and T.TimingAhead.closed
        shaped = Plan.from_dict({**p.to_dict(), "patch": 128, "width": 16, "depth": 4})
        t = T.time_steps(shaped, cfg, f, "baseline")
        assert optimisers == []
        assert (
            t["seg"]
            == T._TIMED_STEPS[T._timed_key(shaped.device, p.precision, 0, 8, 16, 4, 128)]["seg"]
        )

        T.time_ahead(interactive=True, most=1, every_s=0.001)  # a plan began: returns at once
        assert len(T._COST_CACHE) == 1

        monkeypatch.setattr(pace, "_HISTORY", SettledLoad(2.0))  # two programs started since
        S.shape_plan(f, cfg, "baseline", interactive=True)
        assert len(optimisers) == 1 and len(T._COST_CACHE) == 2
    finally:
        torch.set_num_threads(threads)
