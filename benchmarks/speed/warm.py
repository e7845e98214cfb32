"""Benchmark: more warm-up imports for napari's first layers? (run it under ``xvfb-run -a``).

The docks import, off the GUI thread, what napari's first image layer would import on it
(``napari_mtssl.widgets._warm.FIRST_LAYER_IMPORTS``: scipy.ndimage). napari's first labels
layer also imports pandas, scipy.linalg and scikit-image's colour modules on the GUI thread
(about 150 ms of it on an idle core, found by comparing ``sys.modules``). This measures whether
importing those too in the warm-up's thread, once the unit registry is installed ("more"),
shortens the event-loop stalls of the walk's first two phases (import the ACDC folder until
its first scan's image and labels layers are in; open another scan from the Study table)
against the warm-up as it is ("now"), beside ``load`` busy processes, repetitions
alternating, each in a fresh interpreter (a process imports a module once). The variant
"thawed" is the warm-up without its last step, the freeze of what lives
(``_warm.freeze_survivors``): ``--variants now,thawed`` measures what that step does for these
phases. Nothing is asserted: the numbers go to ``benchmarks/results/speed.json``
(``warm_load<n>``, ``warm_load<n>_now_thawed``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

VARIANTS = ("now", "more", "thawed")
# what napari 0.9's first labels layer imports besides what the warm-up imports
MORE_IMPORTS = (
    "pandas",
    "scipy.linalg",
    "skimage.color.colorconv",  # scikit-image loads its submodules lazily: name the module
    "skimage.util",
    "skimage.exposure",
    "napari.components.histogram",
)


def child(variant: str) -> dict[str, Any]:
    """One fresh viewer: the import and open-a-scan phases (the walk's), with ``variant``'s
    warm-up imports."""
    from napari_mtssl.widgets import _warm

    if variant == "more":
        install = _warm.install_unit_registry

        def install_then_import(registry: Any) -> bool:
            from napari_mtssl.widgets._jobs import run_in_thread

            done = install(registry)
            run_in_thread(_import_more, action="warming", on_error=lambda exc: None)
            return done

        _warm.install_unit_registry = install_then_import
    if variant == "thawed":
        _warm.freeze_survivors = lambda *_: None
    import napari

    from napari_mtssl.widgets import add_docks

    from .common import WORK
    from .viewer import spin
    from .walk import import_and_open

    WORK.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="warm_", dir=WORK)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    study = add_docks(viewer)["Study"]
    spin(2.0)  # as the walk: the docks open, then the user imports
    imported, opened = import_and_open(viewer, study, tmp)
    viewer.close()
    return {"variant": variant, "import": imported, "open": opened}


def _import_more() -> None:
    import importlib

    for name in MORE_IMPORTS:
        importlib.import_module(name)


def bench(
    load: int = 2, reps: int = 3, variants: tuple[str, ...] | list[str] = ("now", "more")
) -> dict[str, Any]:
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown warm-up variant(s) {sorted(unknown)}; choose from {VARIANTS}")
    from .viewer import busy_processes

    run = Path(__file__).resolve().parent / "run.py"
    hogs = busy_processes(load)
    rows: list[dict[str, Any]] = []
    try:
        for _ in range(reps):
            for variant in variants:
                out = subprocess.run(
                    [sys.executable, str(run), "_child_warm", variant],
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
                if out.returncode != 0 or not lines:
                    raise RuntimeError(f"the {variant} child failed: {out.stderr[-1500:]}")
                rows.append(json.loads(lines[-1]))
                r = rows[-1]
                print(
                    variant,
                    "import max",
                    r["import"]["max_stall_ms"],
                    "worst",
                    r["import"]["worst_stalls_at_s"][:2],
                    "open max",
                    r["open"]["max_stall_ms"],
                    flush=True,
                )
    finally:
        for p in hogs:
            p.kill()
    summary = {}
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        summary[variant] = {
            "import_max_ms": [r["import"]["max_stall_ms"] for r in mine],
            "import_second_ms": [
                (r["import"]["worst_stalls_at_s"][1:2] or [[0, 0]])[0][1] for r in mine
            ],
            "open_max_ms": [r["open"]["max_stall_ms"] for r in mine],
        }
    return {
        "reps": reps,
        "load_processes": load,
        "variants": list(variants),
        "summary": summary,
        "runs": rows,
    }
