"""How many torch threads a training process should use on this machine (stage-1 cost).

One forward + backward of the quick profile's U-Net (width 8, batch 8, 64 px) with 1 thread and
with 2 threads (torch's default here: one per core), alternating (ABAB) in one process, while
the machine runs whatever else it runs (its load average is recorded). With 1 thread, two jobs
can run at once, one per core; with 2 threads one job must use both cores alone.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def bench(reps: int = 5, iters: int = 10) -> dict[str, Any]:
    from napari_mtssl.models import build_unet

    from .common import spread

    net = build_unet(in_channels=1, out_channels=4, width=8, dropout=0.0, norm="instance")
    x = torch.randn(8, 1, 64, 64)

    def timed(threads: int) -> float:
        torch.set_num_threads(threads)
        net(x).sum().backward()  # warm-up at this thread count
        t0 = time.perf_counter()
        for _ in range(iters):
            net.zero_grad(set_to_none=True)
            net(x).sum().backward()
        return (time.perf_counter() - t0) / iters

    one, two = [], []
    for _ in range(reps):
        one.append(timed(1))
        two.append(timed(2))
    torch.set_num_threads(1)
    out = {
        "step_s_1_thread": spread(one),
        "step_s_2_threads": spread(two),
        "speedup_2_threads": round(spread(one)["median"] / spread(two)["median"], 3),
        "two_jobs_at_once_vs_one_job_2_threads": round(
            2 * spread(two)["median"] / spread(one)["median"], 2
        ),
        "model": "U-Net width 8, batch 8 x 1 x 64 x 64, forward + backward",
    }
    print(out, flush=True)
    return out
