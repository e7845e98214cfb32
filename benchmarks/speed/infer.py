"""Benchmark 3: whole-volume prediction with sliding windows against a bare batched forward.

Engine: ``training.prediction.inference.predict_scan`` on each of the 20 ACDC validation volumes, as
``api.predict`` runs it for the student: normalise and resample to the plan's grid, pad,
sweep ``patch x patch`` windows (overlap 0.5) in batches of 16 through the network under the
plan's precision, blend the windows' logits with a Gaussian weight (MONAI's
``sliding_window_inference``), softmax, un-pad, resample the probabilities to the scan's own
grid and take the argmax. Bare: the very same windows, cut out beforehand, through the same
network in batches of 16 under ``torch.no_grad`` and the same precision, nothing else. The
network has the default plan's shape for ACDC (read from ``training.planning.plan``); trained and
untrained weights cost the same. ABAB repetitions; ratio = bare time / engine time.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch


def _windows(vol: np.ndarray, patch: int, overlap: float) -> np.ndarray:
    """Every window MONAI's sweep visits, ``(n, 1, patch, patch)`` (the same start points:
    a stride of ``patch * (1 - overlap)``, the last window flush with the far edge)."""
    z, h, w = vol.shape
    step = max(1, int(patch * (1 - overlap)))

    def starts(n: int) -> list[int]:
        if n <= patch:
            return [0]
        s = list(range(0, n - patch + 1, step))
        if s[-1] != n - patch:
            s.append(n - patch)
        return s

    out = [
        vol[k, y : y + patch, x : x + patch] for k in range(z) for y in starts(h) for x in starts(w)
    ]
    return np.ascontiguousarray(np.stack(out)[:, None], dtype=np.float32)


def bench(reps: int = 3, threads: int = 2) -> dict[str, Any]:
    from napari_mtssl import api
    from napari_mtssl.models import build_unet
    from napari_mtssl.training.data.slices import pad_to, prepare_volume
    from napari_mtssl.training.planning.fingerprint import fingerprint
    from napari_mtssl.training.planning.planner import make_plan
    from napari_mtssl.training.prediction.inference import autocast, predict_scan, resolve_precision

    from .common import acdc_workspace, spread

    torch.set_num_threads(threads)
    ws = acdc_workspace(3)
    dev = torch.device("cpu")
    cfg = api.make_config("quick", budget="10m", num_threads=threads)
    plan = make_plan(fingerprint(ws), cfg, "baseline", device=dev, allocate_steps=False)
    prep, patch, overlap = plan.preprocessing(), plan.patch, 0.5
    precision = resolve_precision(dev, "auto")
    torch.manual_seed(0)
    net = build_unet(1, int(ws.num_classes), plan.width, depth=plan.depth).eval()
    scans = [ws.load_scan(s) for s in ws.scan_ids("val")]
    windows = []
    for s in scans:
        vol, _ = prepare_volume(s.array, s.spacing, s.modality, prep)
        windows.append(torch.from_numpy(_windows(pad_to(vol, patch)[0], patch, overlap)))
    n_windows = sum(int(w.shape[0]) for w in windows)

    def engine() -> float:
        t0 = time.perf_counter()
        for s in scans:
            predict_scan(
                net,
                s.array,
                s.spacing,
                prep,
                patch,
                dev,
                modality=s.modality,
                overlap=overlap,
                precision=precision,
                batch_size=16,
            )
        return time.perf_counter() - t0

    @torch.no_grad()
    def bare() -> float:
        t0 = time.perf_counter()
        for w in windows:
            for i in range(0, w.shape[0], 16):
                with autocast(dev, precision):
                    net(w[i : i + 16])
        return time.perf_counter() - t0

    engine(), bare()  # warm-up (allocator, oneDNN kernels)
    eng, bar, ratio = [], [], []
    for _ in range(reps):  # A B, A B, ...
        e, b = engine(), bare()
        eng.append(e)
        bar.append(b)
        ratio.append(b / e)
    out = {
        "scans": len(scans),
        "slices": sum(int(s.array.shape[0]) for s in scans),
        "windows": n_windows,
        "native_shapes": sorted({tuple(s.array.shape[1:]) for s in scans}),
        "plan": {"patch": patch, "width": plan.width, "depth": plan.depth, "overlap": overlap},
        "precision": precision,
        "threads": threads,
        "engine_s": spread(eng),
        "bare_s": spread(bar),
        "ratio": spread(ratio),
        "engine_windows_per_s": round(n_windows / spread(eng)["median"], 1),
        "bare_windows_per_s": round(n_windows / spread(bar)["median"], 1),
    }
    print(out, flush=True)
    return out
