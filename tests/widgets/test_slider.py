"""The slice slider spans the scan on screen: a hidden, longer scan does not stretch it."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _scan(viewer, scan_id: str, slices: int):
    from napari_mtssl.widgets._state import SCAN_ID_KEY, scan_layer_name

    return viewer.add_image(
        np.zeros((slices, 32, 32), np.float32),
        name=scan_layer_name(scan_id),
        metadata={SCAN_ID_KEY: scan_id},
    )


def test_the_slider_spans_the_shown_scan_not_the_hidden_ones(make_napari_viewer):
    from napari_mtssl.widgets._session import session_for
    from napari_mtssl.widgets._state import SCAN_ID_KEY, show_only_scan

    v = make_napari_viewer()
    session_for(v)  # what the docks open with: it keeps the slider fitted
    _scan(v, "short", 10)
    _scan(v, "long", 15)
    assert v.dims.range[0].stop == 14  # napari's own range: every layer, hidden or not
    v.dims.set_current_step(0, 13)
    show_only_scan(v, "short")
    assert v.dims.range[0].stop == 9
    assert v.dims.current_step[0] <= 9  # the slider's position moved into the shown scan
    # a layer added for the shown scan: napari widens the range again, the fit narrows it
    v.add_labels(np.zeros((10, 32, 32), np.uint8), name="mask", metadata={SCAN_ID_KEY: "short"})
    assert v.dims.range[0].stop == 9
    show_only_scan(v, "long")
    assert v.dims.range[0].stop == 14 and not v.layers["mask"].visible
    # the user shows every layer: the range is napari's own again
    for layer in v.layers:
        layer.visible = True
    assert v.dims.range[0].stop == 14
    v.layers["long"].visible = False  # the fit follows the eye toggle too
    assert v.dims.range[0].stop == 9
    v.layers.remove("long")
    assert v.dims.range[0].stop == 9
