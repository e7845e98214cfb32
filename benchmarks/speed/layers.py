"""Benchmark: what napari's layer operations cost the GUI thread (run it under ``xvfb-run -a``).

The walk's stalls over 200 ms fall where the docks make napari layers (opening a scan,
Compare's models, the end of an import). This times, in one fresh viewer beside ``load`` busy
processes, each operation a dock could choose for a scan of 10 x 256 x 256: adding an image
layer, adding a labels layer, removing a layer, hiding one, and giving an existing layer new
data (image and labels), each followed by the event loop's turn that draws it. The session's
first image and labels layers are timed apart (napari and vispy pay their own set-up there).
Repetitions alternate the operations. Nothing is asserted: the numbers go to
``benchmarks/results/speed.json`` (``layers_load<n>``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .common import spread
from .viewer import busy_processes, spin

SHAPE = (10, 256, 256)


def _timed(app: Any, action: Callable[[], Any]) -> tuple[float, Any]:
    """Milliseconds of ``action`` and the event-loop turn after it; its result."""
    t = time.perf_counter()
    out = action()
    app.processEvents()
    return (time.perf_counter() - t) * 1e3, out


def bench(load: int = 2, reps: int = 5) -> dict[str, Any]:
    import napari
    from qtpy.QtWidgets import QApplication

    rng = np.random.default_rng(0)

    def image() -> np.ndarray:
        return rng.random(SHAPE, dtype=np.float32)

    def labels() -> np.ndarray:
        return (rng.random(SHAPE) * 4).astype(np.uint8)

    procs = busy_processes(load)
    try:
        viewer = napari.Viewer(show=True)
        app = QApplication.instance()
        spin(1.0)
        first_image, shown = _timed(app, lambda: viewer.add_image(image(), name="scan"))
        spin(0.3)
        first_labels, mask = _timed(app, lambda: viewer.add_labels(labels(), name="mask"))
        spin(0.3)
        ms: dict[str, list[float]] = {
            k: []
            for k in ("add_image", "add_labels", "remove", "hide", "image_data", "labels_data")
        }
        kinds = (
            ("image", viewer.add_image, image, shown),
            ("labels", viewer.add_labels, labels, mask),
        )
        for i in range(reps):
            for kind, add, make, layer in kinds:
                t, extra = _timed(app, lambda a=add, m=make, n=f"{kind}{i}": a(m(), name=n))
                ms[f"add_{kind}"].append(t)
                spin(0.2)
                ms["remove"].append(_timed(app, lambda e=extra: viewer.layers.remove(e))[0])
                spin(0.2)
                refill = lambda ly=layer, m=make: setattr(ly, "data", m())  # noqa: E731
                ms[f"{kind}_data"].append(_timed(app, refill)[0])
                spin(0.2)
            ms["hide"].append(_timed(app, lambda: setattr(mask, "visible", False))[0])
            spin(0.2)
            mask.visible = True
            spin(0.2)
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
    }
    out.update({f"{k}_ms": spread(v) for k, v in ms.items()})
    for k, v in out.items():
        print(f"{k}: {v}", flush=True)
    return out
