"""One colour per class, everywhere: napari labels layers, the comparison grid, the report's
pictures and the DICOM-SEG segments' recommended display colour.

Class 0 is the background (transparent on the canvas, black where a colour is needed). Classes
1, 2, ... take ``PALETTE`` in order and cycle past its end, so any label value has a colour.
Pure numpy: the core (export, cli) and the widgets share it without importing napari.

DICOM stores a display colour as CIELab scaled to 16 bits (PS3.3 C.10.7.1.1). The conversion
from sRGB is written here (a dozen lines) rather than taken from an export dependency, so the
palette module stays importable without the export extra; it uses the D65 white point of sRGB,
as the DICOM toolkits that decode these values do, so a viewer shows the colour given here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "PALETTE",
    "class_rgb",
    "class_rgb255",
    "class_dicom_cielab",
    "dicom_cielab",
    "labels_colour_dict",
    "palette_rgb",
    "palette_rgb255",
    "srgb_to_cielab",
]

# Classes 1, 2, 3, ... (0..255 sRGB). Saturated and light, so they read over a grey scan at half
# opacity; neighbours differ in hue (the first three: a cardiac study's RV, myocardium, LV).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 80, 80),  # red
    (80, 200, 255),  # sky blue
    (255, 220, 60),  # yellow
    (120, 255, 120),  # green
    (220, 120, 255),  # violet
    (255, 150, 50),  # orange
    (60, 230, 200),  # teal
    (255, 120, 200),  # pink
    (190, 240, 80),  # lime
    (170, 130, 90),  # brown
    (110, 130, 255),  # indigo
)
BACKGROUND: tuple[int, int, int] = (0, 0, 0)


def class_rgb255(k: int) -> tuple[int, int, int]:
    """The sRGB colour (0..255) of class ``k``; black for the background (0)."""
    k = int(k)
    if k < 0:
        raise ValueError(f"class {k}: classes are non-negative")
    if k == 0:
        return BACKGROUND
    return PALETTE[(k - 1) % len(PALETTE)]


def class_rgb(k: int) -> tuple[float, float, float]:
    """The sRGB colour (0..1) of class ``k``."""
    r, g, b = class_rgb255(k)
    return (r / 255.0, g / 255.0, b / 255.0)


def palette_rgb255(n: int) -> np.ndarray:
    """``(n, 3)`` uint8: row ``c`` is the colour of class ``c`` (row 0 black)."""
    return np.array([class_rgb255(c) for c in range(int(n))], dtype=np.uint8).reshape(-1, 3)


def palette_rgb(n: int) -> np.ndarray:
    """``(n, 3)`` float in 0..1: row ``c`` is the colour of class ``c`` (for matplotlib)."""
    return palette_rgb255(n).astype(np.float64) / 255.0


def labels_colour_dict(
    n: int = 256, opacity: float = 1.0
) -> dict[int | None, tuple[float, float, float, float]]:
    """``{label: (r, g, b, a)}`` for a napari Labels layer's ``colormap`` (napari turns a dict
    into a ``DirectLabelColormap``): labels 0..n-1, 0 and unlisted labels (key None)
    transparent. 256 entries cover every value of a uint8 mask."""
    out: dict[int | None, tuple[float, float, float, float]] = {
        None: (0.0, 0.0, 0.0, 0.0),
        0: (0.0, 0.0, 0.0, 0.0),
    }
    for c in range(1, int(n)):
        out[c] = (*class_rgb(c), float(opacity))
    return out


# sRGB primaries to CIE XYZ (D65), IEC 61966-2-1; each row sums to the white point's X, Y, Z.
_SRGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_D65_WHITE = _SRGB_TO_XYZ.sum(axis=1)  # (0.95047, 1.0, 1.08883)
_EPS = (6.0 / 29.0) ** 3


def srgb_to_cielab(rgb: Sequence[float]) -> tuple[float, float, float]:
    """sRGB (each 0..1) -> CIE L*a*b* (L* 0..100), D65 white: white is (100, 0, 0)."""
    c = np.clip(np.asarray(rgb, dtype=np.float64).reshape(3), 0.0, 1.0)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    t = (_SRGB_TO_XYZ @ linear) / _D65_WHITE
    f = np.where(t > _EPS, np.cbrt(t), t / (3.0 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    return (
        float(116.0 * f[1] - 16.0),
        float(500.0 * (f[0] - f[1])),
        float(200.0 * (f[1] - f[2])),
    )


def dicom_cielab(rgb: Sequence[float]) -> tuple[int, int, int]:
    """sRGB (0..1) -> DICOM's encoded CIELab: L* 0..100 and a*, b* -128..127 each scaled
    linearly onto 0..65535 (so a* = 0 is 0x8080); white -> (65535, 32896, 32896)."""
    lab_l, lab_a, lab_b = srgb_to_cielab(rgb)
    scaled = (
        lab_l * 65535.0 / 100.0,
        (lab_a + 128.0) * 65535.0 / 255.0,
        (lab_b + 128.0) * 65535.0 / 255.0,
    )
    return tuple(int(min(max(round(v), 0), 65535)) for v in scaled)  # type: ignore[return-value]


def class_dicom_cielab(k: int) -> tuple[int, int, int]:
    """The DICOM RecommendedDisplayCIELabValue of class ``k``."""
    return dicom_cielab(class_rgb(k))
