"""A short baseline started by a click trains at once: where no timing could change its shape,
its plan times nothing (an untimed plan), and the run checks its budget against its own steps
in its first window instead."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from napari_mtssl.training import kept_timings as K
from napari_mtssl.training.config import parse_budget, profile
from napari_mtssl.training.loop import pace
from napari_mtssl.training.loop.pace import Pace, TooFewSteps
from napari_mtssl.training.planning import planner as P
from napari_mtssl.training.planning import shape as S
from napari_mtssl.training.planning import timing as T
from napari_mtssl.training.planning.plan import MIN_STEPS, MIN_STEPS_SHORTENED, PlanError
from napari_mtssl.training.prediction import inference
from napari_mtssl.training.running import units

from .test_plan import SettledLoad, fp

ACDC_LIKE = fp((256, 216), (1.4, 1.4), num_classes=4)


@pytest.fixture
def no_timing(monkeypatch, tmp_path):
    """Nothing kept, a settled load, and any timing of the machine counted (and fast)."""
    monkeypatch.setenv(K.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(T, "_COST_CACHE", {})
    monkeypatch.setattr(T, "_TIMED_STEPS", {})
    monkeypatch.setattr(T, "KEPT_FITS", set())
    monkeypatch.setattr(pace, "_HISTORY", SettledLoad(0.1))
    timed: list[str] = []

    def fit(*a, **k):
        timed.append("fit")
        return T.StepCost(0.01, 1e-12)

    def bf16():
        timed.append("bf16")
        return 1.5

    def network(plan, *a, **k):
        timed.append("network")
        t = {"seg": 0.01, "fwd": 0.003}
        return T._with_derived_timings(t, plan, a[0], a[1], T._StepTimer(plan.device))

    monkeypatch.setattr(S, "step_cost", fit)
    monkeypatch.setattr(inference, "time_bf16_speedup", bf16)
    inference.cpu_bf16_speedup.cache_clear()
    monkeypatch.setattr(T, "probe_step", lambda *a, **k: pytest.fail("a network was timed"))
    real = P.time_steps
    monkeypatch.setattr(
        P, "time_steps", lambda plan, *a, **k: real(plan, *a) if plan.untimed else network(plan, *a)
    )
    yield timed
    inference.cpu_bf16_speedup.cache_clear()


def _cfg(budget: str, **over):
    return profile("quick", budget_s=parse_budget(budget), device="cpu", **over)


def test_a_short_baseline_plans_its_cheapest_shape_without_timing(no_timing):
    cfg = _cfg("10m")
    plan = P.make_plan(ACDC_LIKE, cfg, "baseline", interactive=True, quick_start=True)
    assert no_timing == []  # neither the fit, nor bf16, nor the network
    assert plan.untimed
    assert (plan.patch, plan.width) == (128, 16)  # the narrowest, the least patch
    assert any(r.startswith(S.UNTIMED_REASON_START) for r in plan.reasons)
    assert any("bf16 instructions" in r or "no bf16 instructions" in r for r in plan.reasons)
    # the steps from the guess: what the guessed step leaves of the budget
    guess = T.untimed_timings(plan, cfg, ACDC_LIKE)
    assert plan.timings["seg"] == pytest.approx(guess["seg"], rel=1e-3)
    assert MIN_STEPS <= plan.steps["seg"] < cfg.budget_s / guess["seg"]
    assert f"about {plan.steps['seg']} steps per model" in " ".join(plan.reasons)


def test_timing_decides_wherever_it_could_change_the_plan(no_timing):
    """A budget a fast CPU would spend on a wider network, a run with teachers, a plan not
    started by a click, and a GPU: all timed as before."""
    for budget, what, quick in (("10h", "baseline", True), ("10m", "all", True),
                                ("10m", "baseline", False)):  # fmt: skip
        no_timing.clear()
        plan = P.make_plan(ACDC_LIKE, _cfg(budget), what, interactive=True, quick_start=quick)
        assert not plan.untimed, (budget, what, quick)
        assert "fit" in no_timing, (budget, what, quick)
        assert not any(r.startswith(S.UNTIMED_REASON_START) for r in plan.reasons)
    gpu = SimpleNamespace(type="cuda")
    assert S._untimed_shaper(ACDC_LIKE, _cfg("10m"), "baseline", gpu, 4, None, 1, True) is None


def test_a_fit_kept_by_an_earlier_session_is_taken_instead(no_timing, monkeypatch):
    monkeypatch.setattr(S, "has_fit", lambda *a: True)
    plan = P.make_plan(ACDC_LIKE, _cfg("10m"), "baseline", interactive=True, quick_start=True)
    assert not plan.untimed and "fit" in no_timing


def test_a_budget_the_guess_refuses_is_timed_before_it_is_refused(no_timing):
    """Refused at the guessed speed: the network is timed, and the plan goes on untimed no
    more (here the machine is fast: the budget fits); too short even so: the refusal says
    what the timed step needs."""
    cfg = _cfg("90s")
    plan = P.make_plan(ACDC_LIKE, cfg, "baseline", interactive=True, quick_start=True)
    assert "network" in no_timing and not plan.untimed
    assert plan.timings["seg"] == pytest.approx(0.01)
    assert not any(r.startswith(S.UNTIMED_REASON_START) for r in plan.reasons)
    assert plan.steps["seg"] >= MIN_STEPS
    with pytest.raises(PlanError, match="it needs at least 300"):
        P.make_plan(ACDC_LIKE, _cfg("2s"), "baseline", interactive=True, quick_start=True)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_first_window_refuses_a_budget_too_short_for_the_floor():
    clock = Clock()
    p = Pace(2000, 300.0, every_s=15, clock=clock, floor=300)
    p.start(0)
    clock.t = 15.0
    with pytest.raises(TooFewSteps) as e:
        p.tick(15)  # 1 s a step: about 270 more fit in the 285 s left, less the reserve
    assert e.value.floor == 300 and 250 < e.value.fits < 300
    assert e.value.seconds_per_step == pytest.approx(1.0)


def test_the_floor_is_checked_once_at_the_first_window():
    clock = Clock()
    p = Pace(1000, 300.0, grow=5, every_s=15, clock=clock, floor=300)
    p.start(0)
    clock.t = 15.0
    assert "instead of 1000" in p.tick(150)  # 0.1 s a step: about 2900 fit
    clock.t = 30.0
    p.tick(155)  # 3 s a step now: fewer steps, and no refusal after the first window
    assert p.total < MIN_STEPS


def test_the_runs_refusal_is_the_planners_message():
    ctx = SimpleNamespace(cfg=_cfg("5m"), plan=SimpleNamespace(models=["baseline"]))
    msg = units._refusal(ctx, TooFewSteps(120, 150, 2.4))
    assert msg.startswith("a 5 min budget gives each of the 1 model(s) of this run about 120")
    assert "it needs at least 300" in msg and "a budget of at least 14 min" in msg
    assert "2.40 s a step" in msg


def test_an_untimed_plans_baseline_is_given_the_floor_a_run_keeps(monkeypatch, tmp_path):
    """The baseline of an untimed plan checks its first window against half of MIN_STEPS (the
    floor a run keeps when it shortens a unit: its first window runs slow); a timed plan's
    baseline, and an untimed plan's other units, check nothing."""
    got = {}
    monkeypatch.setattr(units.stages, "baseline", lambda *a, **kw: got.update(kw))
    unit = units.Unit("baseline", "baseline", "baseline", 500)
    for untimed, floor in ((True, MIN_STEPS_SHORTENED), (False, 0)):
        ctx = SimpleNamespace(
            cfg=_cfg("10m"),
            plan=SimpleNamespace(untimed=untimed, timings={}, precision="bf16", overridden=[]),
            run=SimpleNamespace(checkpoint_dir=tmp_path),
            study=None,
            device="cpu",
        )
        units._generator(ctx, unit, lambda: False, None)
        assert got["floor"] == floor


class _NoQuietWindowYet:
    """A spare worker's load history just after its warm-up: no quiet window to read."""

    every_s = 0.5

    def recent(self, within_s: float) -> list[float]:
        return []


@pytest.mark.parametrize(("cpus", "measured"), [(2, False), (4, True)])
def test_a_job_from_napari_measures_the_load_only_where_it_sets_the_threads(
    no_timing, monkeypatch, cpus, measured
):
    """On two cores a job from napari trains on one thread whatever the load: the plan does not
    sleep through windows of its own to measure it (1.3 s of the click's wait where the spare
    worker had just finished importing). On four, the load decides between 1 and 3 threads."""
    from napari_mtssl.training.planning import machine as M

    monkeypatch.setattr(pace, "_HISTORY", _NoQuietWindowYet())
    monkeypatch.setattr(M, "usable_cpus", lambda: cpus)
    calls: list[int] = []
    monkeypatch.setattr(S, "busy_cores", lambda: calls.append(1) or 2.0)
    plan = P.make_plan(ACDC_LIKE, _cfg("10m"), "baseline", interactive=True, quick_start=True)
    assert bool(calls) is measured
    reason = next(r for r in plan.reasons if " CPU thread" in r)
    assert ("core(s) busy" in reason) is measured
    assert plan.threads == (2 if measured else 1)  # 4 cores, 2 busy: round(4 - 2 + .25)
