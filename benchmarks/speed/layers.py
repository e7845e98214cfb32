"""Benchmark: what napari's layer operations cost the GUI thread (run it under ``xvfb-run -a``).

The walk's stalls over 200 ms fall where the docks make napari layers (opening a scan,
Compare's models, the end of an import). This times, in one fresh viewer beside ``load`` busy
processes, each operation a dock could choose for a scan of 10 x 256 x 256: adding an image
layer, adding a labels layer, removing a layer, hiding one, and giving an existing layer new
data (image and labels), and a full garbage collection, each followed by the event loop's turn
that draws it. The session's first image and labels layers are timed apart (napari and vispy pay
their own set-up there). Each repetition does all of it twice, the collector seeing every object
("thawed", napari alone) and with what lived before moved out of its sight as the docks do
("frozen", ``_warm.freeze_survivors``), so the two are measured side by side. Nothing is
asserted: the numbers go to ``benchmarks/results/speed.json`` (``layers_gc_load<n>``; the
earlier ``layers_load<n>`` had no frozen side).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_mtssl.widgets._warm import freeze_survivors

from .common import spread
from .viewer import busy_processes, spin

SHAPE = (10, 256, 256)
MODES = ("thawed", "frozen")


def _timed(app: Any, action: Callable[[], Any]) -> tuple[float, Any]:
    """Milliseconds of ``action`` and the event-loop turn after it; its result."""
    t = time.perf_counter()
    out = action()
    app.processEvents()
    return (time.perf_counter() - t) * 1e3, out


def _collector(frozen: bool) -> None:
    """The garbage collector as the docks leave it (``frozen``: what lives now is out of its
    sight, ``_warm.freeze_survivors``) or as napari alone does."""
    if frozen:
        freeze_survivors()
    else:
        gc.unfreeze()


def bench(load: int = 2, reps: int = 5) -> dict[str, Any]:
    import napari
    from qtpy.QtWidgets import QApplication

    rng = np.random.default_rng(0)

    def image() -> np.ndarray:
        return rng.random(SHAPE, dtype=np.float32)

    def labels() -> np.ndarray:
        return (rng.random(SHAPE) * 4).astype(np.uint8)

    ops = ("add_image", "add_labels", "remove", "hide", "image_data", "labels_data", "collect")
    ms = {mode: {k: [] for k in ops} for mode in MODES}
    procs = busy_processes(load)
    try:
        viewer = napari.Viewer(show=True)
        app = QApplication.instance()
        spin(1.0)
        first_image, shown = _timed(app, lambda: viewer.add_image(image(), name="scan"))
        spin(0.3)
        first_labels, mask = _timed(app, lambda: viewer.add_labels(labels(), name="mask"))
        spin(0.3)
        kinds = (
            ("image", viewer.add_image, image, shown),
            ("labels", viewer.add_labels, labels, mask),
        )
        for i in range(reps):
            for mode in MODES:
                _collector(mode == "frozen")
                got = ms[mode]
                for kind, add, make, layer in kinds:
                    name = f"{kind}{i}{mode}"
                    t, extra = _timed(app, lambda a=add, m=make, n=name: a(m(), name=n))
                    got[f"add_{kind}"].append(t)
                    spin(0.2)
                    got["remove"].append(_timed(app, lambda e=extra: viewer.layers.remove(e))[0])
                    spin(0.2)
                    refill = lambda ly=layer, m=make: setattr(ly, "data", m())  # noqa: E731
                    got[f"{kind}_data"].append(_timed(app, refill)[0])
                    spin(0.2)
                got["hide"].append(_timed(app, lambda: setattr(mask, "visible", False))[0])
                spin(0.2)
                mask.visible = True
                spin(0.2)
                got["collect"].append(_timed(app, gc.collect)[0])
                spin(0.2)
        gc.unfreeze()
        tracked = len(gc.get_objects())  # what a full collection walks, napari alone
        freeze_survivors()
        frozen = gc.get_freeze_count()  # what the docks take out of its sight
        gc.unfreeze()
        viewer.close()
    finally:
        for p in procs:
            p.kill()
    out: dict[str, Any] = {
        "shape": list(SHAPE),
        "load": load,
        "reps": reps,
        "first_image_ms": round(first_image, 1),
        "first_labels_ms": round(first_labels, 1),
        "tracked_objects": tracked,
        "frozen_objects": frozen,
    }
    for mode in MODES:
        out[mode] = {f"{k}_ms": spread(v) for k, v in ms[mode].items()}
    for k, v in out.items():
        print(f"{k}: {v}", flush=True)
    return out
