"""Benchmark 3: whole-scan inference of all teachers and the student against a bare forward.

Engine: ``training.inference.predict_scan`` once per model and scan, as ``api.compare`` runs it
(normalise, pad and resize to the training size, batched forward, softmax, resize back to the
scan's grid, argmax), for the 7 teachers and the student (8 U-Nets of the quick profile; trained
and untrained weights cost the same). Bare: the same models' batched forward on the already
prepared training-size volumes, ``torch.no_grad``, batch 16. Scans: the 20 ACDC validation
volumes in their own geometry. ABAB repetitions; ratio = bare time / engine time.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch


def bench(reps: int = 3, n_models: int = 8, threads: int = 1) -> dict[str, Any]:
    from napari_mtssl import api
    from napari_mtssl.training import stages
    from napari_mtssl.training.inference import predict_scan, prepare_scan

    from .common import acdc_workspace, spread

    torch.set_num_threads(threads)
    ws = acdc_workspace(3)
    scans = [ws.load_scan(s) for s in ws.scan_ids("val")]
    dev = torch.device("cpu")
    nets = []
    for i in range(n_models):
        cfg = api.make_config("quick", seed=i)
        nets.append(stages.new_net(cfg, int(ws.num_classes)).eval())
    dcfg = cfg.data
    prepared = [torch.from_numpy(prepare_scan(s.array, s.modality, dcfg)[0]).float() for s in scans]
    n_slices = sum(int(s.array.shape[0]) for s in scans)

    def engine() -> float:
        t0 = time.perf_counter()
        for s in scans:
            prepared: dict = {}  # per scan, as api.compare does
            for net in nets:
                predict_scan(net, s.array, dcfg, dev, modality=s.modality, prepared=prepared)
        return time.perf_counter() - t0

    @torch.no_grad()
    def bare() -> float:
        t0 = time.perf_counter()
        for vol in prepared:
            for net in nets:
                for i in range(0, vol.shape[0], 16):
                    net(vol[i : i + 16, None])
        return time.perf_counter() - t0

    def proposed() -> float:
        """``predict_scan`` with the one change docs/benchmarks.md proposes: the class argmax
        in numpy on the scan-grid probabilities (torch's ``argmax(0)`` over the strided
        ``(C, z, h, w)`` view is ~10x slower on the CPU). Same labels, same probabilities."""
        from napari_mtssl.training.inference import predict_probs

        t0 = time.perf_counter()
        for s in scans:
            vol, geom = prepare_scan(s.array, s.modality, dcfg)
            for net in nets:
                native = geom.to_scan(predict_probs(net, vol, dev, batch_size=16)).numpy()
                native.argmax(0).astype(np.uint8)
        return time.perf_counter() - t0

    engine()  # warm-up (allocator, first-call overheads)
    eng, bar, ratio, prop, prop_ratio = [], [], [], [], []
    for _ in range(reps):  # A B C, A B C, ...
        e, b, c = engine(), bare(), proposed()
        eng.append(e)
        bar.append(b)
        prop.append(c)
        ratio.append(b / e)
        prop_ratio.append(b / c)
    out = {
        "scans": len(scans),
        "slices_per_scan_pass": n_slices,
        "models": n_models,
        "native_shapes": sorted({tuple(s.array.shape[1:]) for s in scans}),
        "image_size": dcfg.image_size,
        "threads": threads,
        "engine_s": spread(eng),
        "bare_s": spread(bar),
        "ratio": spread(ratio),
        "proposed_argmax_fix_s": spread(prop),
        "proposed_argmax_fix_ratio": spread(prop_ratio),
        "engine_model_slices_per_s": round(n_slices * n_models / spread(eng)["median"], 1),
        "bare_model_slices_per_s": round(n_slices * n_models / spread(bar)["median"], 1),
        "engine_scan_slices_per_s_all_models": round(n_slices / spread(eng)["median"], 1),
    }
    print(out, flush=True)
    return out
