"""Benchmark: how long the viewer's process is held while Compare runs in one of its threads.

The Compare dock runs ``api.compare`` in a thread of napari's process. Whatever that thread
does while holding Python's interpreter lock (an import's module initialisation in C, a long
numpy or scipy call) holds the GUI thread too. Here, without a viewer: the main thread ticks
every 10 ms (as the stall probe's timer does), ``api.compare`` runs in a thread, ``load``
CPU-bound processes run beside it; each gap over 50 ms is kept with the frame the worker
thread was in right after it. Cases, each in a fresh process: ``cold`` (the first Compare
of a session: torch and MONAI not yet imported) and ``warm`` (a second Compare), both in the
process as the dock once ran it; then the docks' way now, the session's engine worker
process (``napari_mtssl.service``): ``engine-cold`` (the worker started by the click),
``engine-prepared`` (started 20 s ahead, as opening a workspace with models does) and
``engine-warm`` (a second Compare). Each case also keeps the resident memory of the caller's
process and of the engine's. Nothing is asserted. Needs ACDC (``MTSSL_ACDC``); the workspace (3 labelled patients, a baseline trained a
few steps) is made once under ``benchmarks``' work folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from .common import ACDC, WORK
from .viewer import busy_processes

_CHILD = r"""
import json, sys, threading, time, traceback
from napari_mtssl import api
from napari_mtssl.workspace import Workspace
ws = Workspace.open(sys.argv[1])
val = ws.scan_ids("val")[0]
case = sys.argv[2]
out = {"torch_before": "torch" in sys.modules}
compare = lambda: api.compare(ws, val, None)
if case.startswith("engine"):  # the docks' way: a worker process kept for the session
    from napari_mtssl.service import EngineService
    service = EngineService()
    compare = lambda: service.run("compare", workspace=ws, scan=val)
    if case == "engine-prepared":  # started ahead (a workspace with models was opened)
        service._ready(ws); time.sleep(20)
if case in ("warm", "engine-warm"):
    compare()
done = threading.Event()
def work():
    t = time.perf_counter(); compare()
    out["compare_s"] = round(time.perf_counter() - t, 2); done.set()
th = threading.Thread(target=work, daemon=True)
gaps = []; last = time.perf_counter(); th.start()
while not done.is_set():
    time.sleep(0.01); now = time.perf_counter(); g = now - last - 0.01
    if g > 0.05:
        f = sys._current_frames().get(th.ident)
        where = traceback.extract_stack(f)[-1] if f else None
        gaps.append({"ms": round(g * 1000), "after": f"{where.filename}:{where.lineno}" if where else ""})
    last = now
out["gaps_over_50ms"] = sorted(gaps, key=lambda x: -x["ms"])[:10]
out["max_gap_ms"] = max([x["ms"] for x in gaps], default=0)
out["torch_after"] = "torch" in sys.modules
import psutil
out["caller_rss_mb"] = round(psutil.Process().memory_info().rss / 2**20)
if case.startswith("engine"):
    out["engine_rss_mb"] = round(psutil.Process(service._worker._process.pid).memory_info().rss / 2**20)
    service.close()
print(json.dumps(out))
"""


def _workspace() -> str:
    from napari_mtssl import api

    folder = WORK / "gil_ws"
    if not (folder / "workspace.json").is_file():
        ws = api.create_workspace(folder, source=ACDC, labelled=3)
        api.run(api.train(ws, api.make_config("tiny", seed=0), "baseline"))
    return str(folder)


def bench(load: int = 2) -> dict[str, Any]:
    folder = _workspace()
    hogs = busy_processes(load)
    try:
        out: dict[str, Any] = {"load_processes": load}
        for case in ("cold", "warm", "engine-cold", "engine-prepared", "engine-warm"):
            r = subprocess.run([sys.executable, "-c", _CHILD, folder, case],
                               capture_output=True, text=True, check=True)  # fmt: skip
            out[case] = json.loads(r.stdout.strip().splitlines()[-1])
            print(case, out[case]["max_gap_ms"], "ms max;", out[case]["compare_s"], "s;",
                  out[case]["caller_rss_mb"], out[case].get("engine_rss_mb"), "MB", flush=True)  # fmt: skip
        return out
    finally:
        for p in hogs:
            p.kill()
