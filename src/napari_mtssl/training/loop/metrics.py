"""3D Dice and HD95 per class per volume, and their averages over volumes.

Conventions (the common ones of the Medical Segmentation Decathlon / nnU-Net evaluation):

* Dice of a class that is absent from both prediction and truth is 1.0 (nothing to find, nothing
  found); absent from one of them only: 0.0.
* HD95 of a class absent from both: 0.0; absent from exactly one: undefined (``None``), and such
  cases are left out of the average (the Dice already penalises them). HD95 is in millimetres
  using the scan's spacing (``(z, y, x)``), so thick-slice MRI is measured correctly.
* Only the slices listed in ``slices`` are compared when a scan is partly labelled.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """3D Dice for classes 1..num_classes-1 of one volume: array of length num_classes - 1."""
    out = np.zeros(num_classes - 1, dtype=np.float64)
    for c in range(1, num_classes):
        p = pred == c
        t = truth == c
        denom = int(p.sum()) + int(t.sum())
        out[c - 1] = 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denom
    return out


def hd95_per_class(
    pred: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> list[float | None]:
    """95th-percentile symmetric Hausdorff distance (mm) per foreground class of one volume."""
    # imported here, when needed: the api and the CLI import this module's Dice without torch
    import torch
    from monai.metrics import compute_hausdorff_distance

    out: list[float | None] = []
    for c in range(1, num_classes):
        p = pred == c
        t = truth == c
        if not p.any() and not t.any():
            out.append(0.0)
            continue
        if not p.any() or not t.any():
            out.append(None)
            continue
        if p.shape[0] == 1:  # a single slice: 2D distance with the in-plane spacing
            pp, tt, sp = p[0], t[0], [float(s) for s in spacing[1:]]
        else:
            pp, tt, sp = p, t, [float(s) for s in spacing]
        with warnings.catch_warnings():  # MONAI's own internal deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            d = compute_hausdorff_distance(
                torch.from_numpy(pp[None, None].astype(np.float32)),
                torch.from_numpy(tt[None, None].astype(np.float32)),
                include_background=True,
                percentile=95,
                spacing=sp,
            )
        v = float(d.reshape(-1)[0])
        out.append(v if np.isfinite(v) else None)
    return out


def volume_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    slices: Sequence[int] | None = None,
    hd95: bool = True,
) -> dict:
    """Dice and HD95 per foreground class of one volume ``(z, y, x)``.

    Returns ``{"dice": [..], "hd95": [..] | None}`` with one entry per foreground class.
    """
    if slices is not None:
        idx = np.asarray(list(slices), dtype=int)
        pred, truth = pred[idx], truth[idx]
    return {
        "dice": dice_per_class(pred, truth, num_classes).tolist(),
        "hd95": hd95_per_class(pred, truth, num_classes, spacing) if hd95 else None,
    }


def summarise(per_volume: list[dict], label_names: dict[int, str] | None, num_classes: int) -> dict:
    """Average :func:`volume_scores` over volumes: Dice per class name, mean foreground Dice, HD95.

    ``hd95`` is the mean over classes and volumes of the defined values (None if none is).
    """
    names = [(label_names or {}).get(c, f"class {c}") for c in range(1, num_classes)]
    if not per_volume:
        return {"dice": {}, "mean_dice": None, "hd95": None, "n_volumes": 0}
    d = np.array([v["dice"] for v in per_volume], dtype=np.float64)  # (V, C-1)
    per_class = d.mean(0)
    hds = [h for v in per_volume if v.get("hd95") for h in v["hd95"] if h is not None]
    return {
        "dice": {n: float(x) for n, x in zip(names, per_class)},
        "mean_dice": float(per_class.mean()) if per_class.size else None,
        "hd95": float(np.mean(hds)) if hds else None,
        "n_volumes": len(per_volume),
    }
