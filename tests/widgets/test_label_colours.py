"""Labels layers the docks add take the shared class colours, as the comparison grid does."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_labels_layers_and_grid_use_the_class_palette(make_napari_viewer):
    from napari_mtssl.colours import palette_rgb, palette_rgb255
    from napari_mtssl.widgets._state import show_labels
    from napari_mtssl.widgets.compare import PALETTE, _layer_palette, overlay_rgb

    viewer = make_napari_viewer()
    mask = np.zeros((3, 8, 8), np.uint8)
    mask[1, 2:5, 2:5] = 3
    layer = show_labels(viewer, mask, "s_student", "s", (1.0, 1.0, 1.0), "prediction")
    rgba = np.asarray(layer.colormap.map(np.arange(40)))
    np.testing.assert_allclose(rgba[1:, :3], palette_rgb(40)[1:], atol=1e-6)
    assert rgba[0, 3] == 0  # background transparent
    np.testing.assert_allclose(
        _layer_palette(viewer, "s_student", 12), palette_rgb255(12), atol=1e-3
    )
    # the grid's own colours (no layer on the canvas) are the same palette, cycling alike
    grey = np.zeros((8, 8), np.float32)
    labels = np.zeros((8, 8), np.uint8)
    labels[0, 0], labels[0, 1] = 3, 3 + len(PALETTE) - 1
    out = overlay_rgb(grey, labels, 0.0, 1.0)
    expect = (0.5 * palette_rgb255(4)[3]).astype(np.uint8)
    np.testing.assert_array_equal(out[0, 0], expect)
    np.testing.assert_array_equal(out[0, 1], expect)
