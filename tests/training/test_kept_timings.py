"""Timings kept between sessions: a plan takes what an earlier session on this machine timed at
the same load, instead of timing again at the click."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from napari_mtssl.training import kept_timings as K
from napari_mtssl.training.config import parse_budget, profile
from napari_mtssl.training.loop import pace
from napari_mtssl.training.planning import shape as S
from napari_mtssl.training.planning import timing as T
from napari_mtssl.training.prediction import inference

from .test_plan import SettledLoad, fp


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv(K.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "timings.json"


def test_kept_values_come_back_on_this_machine_only_and_not_too_old(store):
    assert K.get("a") is None  # nothing kept yet
    K.put("a", {"x": 1.5})
    K.put("b", {"y": 2.0})
    assert K.get("a") == {"x": 1.5} and K.get("b") == {"y": 2.0}
    assert stat.S_IMODE(store.stat().st_mode) == 0o666 & ~_umask()  # normal permissions
    assert K.get("a", now=os.path.getmtime(store) + K.MAX_AGE_S + 60) is None  # too old

    data = json.loads(store.read_text())
    data["machine"]["cpu"] = "another CPU"
    store.write_text(json.dumps(data))
    assert K.get("a") is None  # timed on another machine
    K.put("c", {"z": 3.0})  # the other machine's entries are dropped, not mixed in
    assert K.get("c") == {"z": 3.0} and K.get("b") is None

    store.write_text("{not json")
    assert K.get("c") is None  # unreadable: nothing kept, no error
    K.put("d", {"w": 4.0})
    assert K.get("d") == {"w": 4.0}


def test_a_folder_that_cannot_be_written_leaves_the_timings_unkept(tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv(K.CACHE_ENV, str(blocker / "cache"))  # a folder under a file
    K.put("a", {"x": 1.0})
    assert K.get("a") is None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_next_sessions_plan_takes_the_fit_without_timing(store, monkeypatch):
    """A plan at load level 0 times the step-cost fit and keeps it; a new session's plan at
    the same level takes it (no network trained, the same costs, a reason saying so); at
    another level, or without a load history, it times."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(T, "_COST_CACHE", {})
    monkeypatch.setattr(T, "_TIMED_STEPS", {})
    monkeypatch.setattr(T, "KEPT_FITS", set())
    monkeypatch.setattr(pace, "_HISTORY", SettledLoad(0.1))
    f = fp((256, 216), (1.4, 1.4), num_classes=4)
    cfg = profile("quick", budget_s=parse_budget("10m"), device="cpu")
    try:
        first = S.shape_plan(f, cfg, "baseline", interactive=True)
        assert not any("earlier session" in r for r in first.reasons)
        (key,) = T._COST_CACHE
        fit, timed = T._COST_CACHE[key], dict(T._TIMED_STEPS)
        assert store.exists()

        # a new session: nothing timed in this process
        T._COST_CACHE.clear()
        T._TIMED_STEPS.clear()
        optimisers = []  # a timed training step makes one
        real_adamw = torch.optim.AdamW
        monkeypatch.setattr(
            torch.optim, "AdamW", lambda *a, **k: optimisers.append(1) or real_adamw(*a, **k)
        )
        second = S.shape_plan(f, cfg, "baseline", interactive=True)
        assert optimisers == []
        assert T._COST_CACHE[key] == pytest.approx(fit) and T._TIMED_STEPS == timed
        assert any("earlier session" in r for r in second.reasons)
        assert (second.patch, second.width, second.depth) == (first.patch, first.width, first.depth)

        monkeypatch.setattr(pace, "_HISTORY", SettledLoad(1.0))  # another load: timed
        S.shape_plan(f, cfg, "baseline", interactive=True)
        assert len(optimisers) == 1

        T._COST_CACHE.clear()
        monkeypatch.setattr(pace, "_HISTORY", None)  # no history: the load it ran at is unknown
        monkeypatch.setattr(S, "busy_cores", lambda: 0.0)
        S.shape_plan(f, cfg, "baseline", interactive=True)
        assert len(optimisers) == 2
        assert not any("level=-1" in k for k in json.loads(store.read_text())["entries"])
    finally:
        torch.set_num_threads(threads)


def test_a_kept_fit_written_by_other_code_is_timed_again(store, monkeypatch):
    monkeypatch.setattr(T, "_COST_CACHE", {})
    monkeypatch.setattr(T, "_TIMED_STEPS", {})
    monkeypatch.setattr(T, "KEPT_FITS", set())
    monkeypatch.setattr(pace, "_HISTORY", SettledLoad(0.1))
    key = ("cpu", "fp32", torch.get_num_threads(), 0, 8)
    K.put(T._kept_key(key), {"overhead": "fast", "per_flop": 1e-12, "steps": {}})
    cost = T.step_cost(torch.device("cpu"), "fp32", 8, 2)
    assert not cost.kept and cost(1e9) > 0
    assert K.get(T._kept_key(key))["overhead"] == cost.overhead  # the timing replaced it


def test_a_bf16_speedup_is_kept_and_an_fp32_one_timed_again(store, monkeypatch):
    timings = iter([1.6, 0.9])
    monkeypatch.setattr(inference, "time_bf16_speedup", lambda: next(timings))
    inference.cpu_bf16_speedup.cache_clear()
    try:
        assert inference.cpu_bf16_speedup() == 1.6  # timed, bf16 chosen: kept
        inference.cpu_bf16_speedup.cache_clear()  # a new session
        assert inference.cpu_bf16_speedup() == 1.6  # taken, not timed (the next would be 0.9)

        store.unlink()
        inference.cpu_bf16_speedup.cache_clear()
        assert inference.cpu_bf16_speedup() == 0.9  # fp32 chosen: not kept
        assert K.get(inference._BF16_KEY) is None
    finally:
        inference.cpu_bf16_speedup.cache_clear()


class BusyItself(SettledLoad):
    """A load history whose windows were read while this process itself was busy: none
    of them says how busy the others are."""

    def recent(self, within_s: float) -> list[float]:
        return []


def test_a_plan_busy_timing_keeps_the_load_level_it_read(monkeypatch):
    """The level read before a plan timed its fit stays the level while the plan is too busy
    for its history to read the others, so the chosen network's timing is found at it; not
    for ever, and not in a process without a history."""
    from napari_mtssl.training.planning import machine as M

    monkeypatch.setattr(M, "_last_level", None)
    monkeypatch.setattr(pace, "_HISTORY", SettledLoad(2.0))
    assert M.load_level() == 2
    monkeypatch.setattr(pace, "_HISTORY", BusyItself(0.0))
    assert M.load_level() == 2  # held
    when, level = M._last_level
    monkeypatch.setattr(M, "_last_level", (when - M.LEVEL_HELD_S - 1, level))
    assert M.load_level() == -1  # held too long: unknown
    monkeypatch.setattr(M, "_last_level", (when, level))
    monkeypatch.setattr(pace, "_HISTORY", None)
    assert M.load_level() == -1  # no history at all


def test_flops_are_counted_once_a_process_and_scaled_by_area(store, monkeypatch):
    """A network's FLOPs are counted once per width, depth and head in a process (a small
    forward pass, milliseconds: nothing is kept between sessions) and scaled to the patch."""
    monkeypatch.setattr(T, "_FLOPS_CACHE", {})
    counted = []
    real = T._count_flops
    monkeypatch.setattr(T, "_count_flops", lambda *a: counted.append(a) or real(*a))
    at_128 = T.flops_per_sample(16, 4, 128, 2)
    assert counted == [(16, 4, 2)]
    assert T.flops_per_sample(16, 4, 64, 2) * 4 == at_128 and len(counted) == 1
    assert not store.exists()  # nothing written
