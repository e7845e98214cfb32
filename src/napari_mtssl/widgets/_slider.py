"""The slice slider spans the layers on screen, not every layer of the viewer.

napari sizes its sliders to the extent of all layers, hidden ones included: with a 15-slice scan
hidden behind a 10-slice one, the slider runs to 15 and half of it shows nothing. The docks show
one workspace scan at a time (:func:`._state.show_only_scan`), so the sliders of the axes not on
screen are fitted to the visible layers whenever a layer is added, removed, shown, hidden or
moved (each viewer's :class:`._session.Session` connects that once). napari recomputes its own
range on those events; the fit is connected after it, so it has the last word. With every layer visible (or none) the range is napari's own.
"""

from __future__ import annotations

import weakref
from typing import Any

from napari.components.dims import RangeTuple

# layer events after which napari recomputes the range (viewer_model._on_add_layer)
_LAYER_EVENTS = ("visible", "data", "scale", "translate", "affine", "rotate", "shear")


def fit_slider_to_shown(viewer: Any) -> None:
    """Set the range of every axis not on screen to the extent of the visible layers."""

    shown = [ly for ly in viewer.layers if ly.visible]
    if not shown:
        return
    ext = viewer.layers.get_extent(shown)
    lo, hi, step = ext.world[0], ext.world[1], ext.step
    dims = viewer.dims
    if len(lo) != dims.ndim:  # the visible layers have fewer axes: napari's range stands
        return
    ranges = list(dims.range)
    for ax in dims.not_displayed:
        ranges[ax] = RangeTuple(float(lo[ax]), float(hi[ax]), float(step[ax]))
    if tuple(ranges) != tuple(dims.range):
        dims.range = tuple(ranges)


def keep_slider_fitted(viewer: Any) -> None:
    """Fit the sliders after every layer change on which napari recomputes its range (called
    once per viewer, by its :class:`._session.Session`)."""
    ref = weakref.ref(viewer)

    def fit(_event: Any = None) -> None:
        v = ref()
        if v is not None:
            fit_slider_to_shown(v)

    def watch(layer: Any) -> None:
        for name in _LAYER_EVENTS:
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.connect(fit, position="last")

    for layer in viewer.layers:
        watch(layer)
    viewer.layers.events.inserted.connect(lambda e: (watch(e.value), fit()), position="last")
    viewer.layers.events.removed.connect(fit, position="last")
    viewer.layers.events.reordered.connect(fit, position="last")
    fit()
