"""The fair comparison of the budget benchmark, without training: what the method's jobs pass to
``make_config`` and the tables, target lines and plot built from small result dicts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "budget"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def summ():
    return _module("summarise")


@pytest.fixture(scope="module")
def run():
    return _module("run")


def _dice(v: float) -> dict:
    return {"mean_dice": v, "dice": {"right ventricle": v, "myocardium": v, "left ventricle": v}}


def _method(kind, L, budget, seed, student, *, teachers=(0.7, 0.6), base=0.65, wall=0.9, **b):
    models = {
        "baseline": {**_dice(base), "steps": 500},
        "teacher:sdm": {**_dice(teachers[0]), "steps": 500},
        "teacher:inpaint": {**_dice(teachers[1]), "steps": 450},
        "student": {**_dice(student), "steps": 900},
    }
    bs = {"20m": 1200, "60m": 3600}[budget]
    return {
        "models": models,
        "ensemble": {"members": ["teacher:sdm", "baseline"], "mean_dice": 0.72, "dice": {}},
        "benchmark": {"kind": kind, "L": L, "budget": budget, "budget_s": bs, "seed": seed}
        | {"wall_s": wall * bs, "share_of_budget": wall, "jobs": 1, "side_by_side": False, **b},
    }


def _alone(L, budget, seed, dice, wall=0.95, **b):
    bs = {"20m": 1200, "60m": 3600}[budget]
    return {
        "models": {"baseline": {**_dice(dice), "steps": 4000}},
        "benchmark": {"kind": "fair-baseline", "L": L, "budget": budget, "budget_s": bs}
        | {"seed": seed, "wall_s": wall * bs, "jobs": 1, "side_by_side": False, **b},
    }


def test_overrides_set_nothing_but_threads_and_stage2(run):
    assert run.fair_overrides("fair-method", jobs=1, pair=False, cores=2) == {}
    assert run.fair_overrides("fair-baseline", jobs=1, pair=False, cores=2) == {}
    assert run.fair_overrides("fair-paper", jobs=1, pair=False, cores=2) == {
        "stage2__method": "paper"
    }
    assert run.fair_overrides("fair-method", jobs=2, pair=False, cores=4) == {"num_threads": 2}
    assert run.fair_overrides("fair-baseline", jobs=2, pair=True, cores=4) == {"num_threads": 1}
    assert run.fair_method_kind("semi") == "fair-method"
    assert run.fair_method_kind("paper") == "fair-paper"


def test_baseline_alone_is_reused(run, tmp_path, monkeypatch):
    monkeypatch.setattr(run, "OUT", tmp_path)
    assert run.fair_pending("paper", 3, "20m", 0) == ["fair-paper", "fair-baseline"]
    (tmp_path / "fair-baseline_L3_20m_s0.json").write_text("{}")
    assert run.fair_pending("paper", 3, "20m", 0) == ["fair-paper"]
    assert run.fair_pending("semi", 3, "20m", 0) == ["fair-method"]


def test_the_method_report_names_the_baseline_alone_where_it_was_measured(run, tmp_path):
    import json

    run.OUT, before = tmp_path, run.OUT
    try:
        assert run._alone_result(3, "20m", 1) is None  # not measured: no line
        (tmp_path / "fair-baseline_L3_20m_s1.json").write_text("{not json")
        assert run._alone_result(3, "20m", 1) is None  # damaged: no line either
        (tmp_path / "fair-baseline_L3_20m_s1.json").write_text(json.dumps(_alone(3, "20m", 1, 0.8)))
        assert run._alone_result(3, "20m", 1) == {"mean_dice": 0.8, "budget": "20 min"}
    finally:
        run.OUT = before


def test_tables_targets_and_plot(summ, tmp_path):
    runs = [
        _method("fair-method", 3, "60m", 0, 0.86, teachers=(0.8, 0.7), base=0.75),
        _method("fair-method", 3, "60m", 1, 0.88, teachers=(0.82, 0.7), base=0.76),
        _alone(3, "60m", 0, 0.80),
        _alone(3, "60m", 1, 0.84),
        _method("fair-paper", 3, "60m", 0, 0.70),
        _method("fair-method", 3, "20m", 0, 0.70, wall=1.2, side_by_side=True),
        _alone(3, "20m", 0, 0.78, side_by_side=True),
        {"benchmark": {"kind": "baseline", "L": 3, "budget": "10m", "seed": 0}, "models": {}},
    ]
    plot = tmp_path / "fair.png"
    text = "\n".join(summ.fair_section(runs, plot_path=plot))
    assert plot.is_file()
    assert "**Fair comparison, L = 3, 60m budget**" in text
    assert "**Fair comparison, L = 3, 20m budget**" in text
    assert "student (paper)" in text and "not measured" in text  # paper seed 1 was not run
    assert "0 (side by side)" in text
    assert "| mean ± sd | 0.870 ± 0.014 |" in text
    assert "+0.060" in text and "+0.040" in text  # student - alone, paired by seed
    lines = {ln.split("**")[1]: ln for ln in text.splitlines() if ln.startswith("* **")}
    # semi: 0.87 >= 0.85, +0.05 >= 0.03, 0.87 > 0.81 > 0.755, walls 90 %: reached; paper: not reached
    assert "student (semi, older default): **reached**" in lines["L = 3, 60 min"]
    assert "student (the default): not measured" in lines["L = 3, 60 min"]
    assert "student (paper): **not reached**" in lines["L = 3, 60 min"]
    assert lines["L = 7, 60 min"].endswith("not measured.")
    assert "**not reached**" in lines["L = 3, 20 min"] and "wall ≤ 105 %" in lines["L = 3, 20 min"]
    assert "**not reached**" in lines["Every method run within 105 % of its budget"]


def test_missing_keys_and_no_results(summ, tmp_path):
    bare = _method("fair-method", 7, "60m", 0, 0.9)
    del bare["ensemble"]
    bare["benchmark"].pop("share_of_budget")
    bare["benchmark"].pop("wall_s")
    rows = summ.fair_rows([bare])
    row = rows[(7, "60m")][0]
    assert row["semi"]["ensemble"] is None and row["alone"] is None
    text = "\n".join(summ.fair_section([bare], plot_path=None))
    assert "student (the default): not measured" in text
    empty = "\n".join(summ.fair_section([], plot_path=tmp_path / "none.png"))
    assert "No fair comparison measured yet." in empty
    assert not (tmp_path / "none.png").exists()
    assert empty.count("not measured") >= 4


def test_the_current_default_measured_as_a_variant_is_judged_first(summ):
    """The default's settings were measured as a variant before they became the default
    (noteach2k): those runs lead the table and the targets, beside the earlier defaults'
    (online, lead, mix0, semi); an earlier default's run stands in for the default only where
    it took the same decision (no teacher trained: conf07 at 20 minutes, not lead10 at an
    hour); where the default was not measured, the earlier ones are shown and the default's
    target says so."""
    skipped = _method("fair-conf07", 3, "20m", 0, 0.81)
    skipped["plan"] = {"teachers_skipped": {"tasks": ["sdm", "inpaint"], "steps": 900}}
    runs = [
        _method("fair-method", 3, "60m", 0, 0.79),
        _method("fair-mix0", 3, "60m", 0, 0.83),
        _method("fair-lead", 3, "60m", 0, 0.87, teachers=(0.8, 0.7), base=0.75),
        _method("fair-lead10", 3, "60m", 0, 0.86, teachers=(0.8, 0.7), base=0.75),
        _alone(3, "60m", 0, 0.826),
        _method("fair-lead", 3, "20m", 0, 0.77),
        _method("fair-online", 3, "20m", 0, 0.80),
        skipped,
        _alone(3, "20m", 0, 0.785),
    ]
    text = "\n".join(summ.fair_section(runs, plot_path=None))
    tables = text.split("**Variants of the method side**")[0]
    hour, short = tables.split("**Fair comparison, L = 3, 60m budget**")[1], tables
    head = (
        "| student (lead, earlier default) | student (mix0, earlier default) | student (semi, older"
    )
    assert head in hour and "student (the default)" not in hour
    assert "| 0 | 0.870 | 0.830 | 0.790 |" in hour
    assert "| student (lead 0.1, earlier default) |" in hour and "| 0.860 |" in hour
    short = short.split("**Fair comparison, L = 3, 20m budget**")[1]
    head = "| student (the default) | student (confidence 0.9, earlier default) | student (lead, "
    assert head in short
    assert "| 0 | **0.810** | 0.800 | 0.770 |" in short
    line = next(ln for ln in text.splitlines() if ln.startswith("* **L = 3, 60 min"))
    assert "student (the default): not measured" in line
    assert line.index("student (the default)") < line.index(
        "student (lead, earlier default): **reached**"
    )
    assert line.index("earlier default") < line.index("older default")
    line = next(ln for ln in text.splitlines() if ln.startswith("* **L = 3, 20 min"))
    assert line.index("student (the default): **reached**") < line.index("confidence 0.9"), line
    assert "| conf07 |" in text.split("**Variants of the method side**")[1]


def test_named_variants_get_their_own_rows_with_their_settings(summ):
    variant = _method("fair-refresh", 3, "60m", 0, 0.81, side_by_side=True)
    variant["benchmark"]["overrides"] = {"num_threads": 1, "stage2__refresh": 1.0}
    runs = [_method("fair-method", 3, "60m", 0, 0.79), _alone(3, "60m", 0, 0.826), variant]
    text = "\n".join(summ.fair_section(runs, plot_path=None))
    rows = [ln for ln in text.splitlines() if "| refresh |" in ln]
    assert len(rows) == 1
    assert "stage2.refresh=1.0" in rows[0] and "num_threads" not in rows[0]
    assert "| 0.810 |" in rows[0] and "-0.016" in rows[0] and "| 0.826 |" in rows[0]
    # the default's table is untouched by the variant
    assert "| 0 | 0.790 |" in text.split("**Variants of the method side**")[0]
    assert "0.810" not in text.split("**Variants of the method side**")[0]
