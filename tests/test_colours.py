"""The class palette and its DICOM CIELab encoding, checked against published values."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtssl.colours import (
    PALETTE,
    class_dicom_cielab,
    class_rgb,
    class_rgb255,
    dicom_cielab,
    labels_colour_dict,
    palette_rgb,
    palette_rgb255,
    srgb_to_cielab,
)


def test_class_colours_agree_in_every_form():
    assert class_rgb255(0) == (0, 0, 0)
    assert class_rgb255(1) == PALETTE[0]
    assert class_rgb255(len(PALETTE) + 1) == PALETTE[0]  # cycles past the end
    np.testing.assert_allclose(class_rgb(3), np.array(PALETTE[2]) / 255)
    table = palette_rgb255(20)
    assert table.shape == (20, 3) and table.dtype == np.uint8
    assert [tuple(int(v) for v in row) for row in table] == [class_rgb255(c) for c in range(20)]
    np.testing.assert_allclose(palette_rgb(20), table / 255.0)
    with pytest.raises(ValueError):
        class_rgb255(-1)


def test_neighbouring_classes_differ():
    lab = np.array([srgb_to_cielab(np.array(c) / 255) for c in PALETTE])
    gaps = np.linalg.norm(np.diff(lab, axis=0), axis=1)
    assert gaps.min() > 20  # CIE76 distance: clearly different colours side by side
    assert len(set(PALETTE)) == len(PALETTE)


def test_napari_colour_dict():
    d = labels_colour_dict(8, opacity=0.7)
    assert d[None][3] == 0 and d[0][3] == 0  # background and unlisted labels transparent
    assert set(d) == {None, *range(8)}
    assert d[2] == pytest.approx((*class_rgb(2), 0.7))
    assert len(labels_colour_dict()) == 257  # every uint8 value, and None


@pytest.mark.parametrize(
    "rgb, lab",
    [
        ((1, 1, 1), (100.0, 0.0, 0.0)),
        ((0, 0, 0), (0.0, 0.0, 0.0)),
        # sRGB primaries (D65), as colour-science references list them
        ((1, 0, 0), (53.2408, 80.0925, 67.2032)),
        ((0, 1, 0), (87.7347, -86.1827, 83.1793)),
        ((0, 0, 1), (32.2970, 79.1875, -107.8602)),
        ((0.5, 0.5, 0.5), (53.3890, 0.0, 0.0)),  # mid grey: neutral, L* of 0.2140 luminance
    ],
)
def test_srgb_to_cielab_known_values(rgb, lab):
    assert srgb_to_cielab(rgb) == pytest.approx(lab, abs=2e-3)


def test_dicom_encoding():
    assert dicom_cielab((1, 1, 1)) == (65535, 32896, 32896)
    assert dicom_cielab((0, 0, 0)) == (0, 32896, 32896)
    # red: L* 53.2408 -> 34891, a* 80.0925 -> 53480, b* 67.2032 -> 50167
    assert dicom_cielab((1, 0, 0)) == (34891, 53480, 50167)
    assert class_dicom_cielab(1) == dicom_cielab(class_rgb(1))


def test_dicom_encoding_agrees_with_highdicom():
    """highdicom's own converter rounds its constants a little differently: a few units."""
    hd = pytest.importorskip("highdicom")
    for c in range(1, len(PALETTE) + 1):
        theirs = hd.color.CIELabColor.from_rgb(*class_rgb255(c)).value
        assert np.abs(np.subtract(class_dicom_cielab(c), theirs)).max() <= 8, c
