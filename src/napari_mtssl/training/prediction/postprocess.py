"""Post-processing of predicted masks, chosen per model on the validation scans.

nnU-Net's rule: removing everything but the largest connected foreground component is kept only
when it improves the validation Dice. A network trained on patches sometimes paints small
structure-like blobs far from the organ (a patch sees no more than half a slice); they cost
Dice and, far more, HD95. Each model's decision is saved in its sidecar and applied by every
prediction (``predict``, ``compare``, the CLI).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["POSTPROCESS", "largest_component", "apply"]

POSTPROCESS = ("none", "largest_component")


def largest_component(labels: np.ndarray) -> np.ndarray:
    """``labels`` (any dimensions) with every foreground voxel outside the largest connected
    component of the foreground (all classes together, face connectivity) set to background."""
    fg = labels > 0
    comp, n = ndimage.label(fg)
    if n <= 1:
        return labels
    sizes = np.bincount(comp.reshape(-1), minlength=n + 1)
    sizes[0] = 0
    keep = comp == int(np.argmax(sizes))
    return np.where(keep, labels, 0).astype(labels.dtype, copy=False)


def apply(labels: np.ndarray, name: str | None) -> np.ndarray:
    if not name or name == "none":
        return labels
    if name == "largest_component":
        return largest_component(labels)
    raise ValueError(f"unknown post-processing {name!r}; known: {', '.join(POSTPROCESS)}")
