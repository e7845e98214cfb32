"""Shared helpers of the speed benchmarks: the machine, the ACDC workspace, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ACDC = Path(os.environ.get("MTSSL_ACDC", ROOT.parent / "shared" / "data" / "acdc"))
WORK = Path(os.environ.get("MTSSL_BENCH_WORK", "/tmp/mtssl_bench"))
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on (CPU model, cores, torch and its threads, load)."""
    import torch

    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln), ""
        )
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def acdc_workspace(labelled: int = 3):
    """An ACDC workspace with ``labelled`` patients (created once under WORK, then reused)."""
    from napari_mtssl import api

    folder = WORK / f"speed_ws_L{labelled}"
    if (folder / "workspace.json").is_file():
        return api.open_workspace(folder)
    if not (ACDC / "dataset.json").is_file():
        raise SystemExit(f"ACDC not found at {ACDC} (set MTSSL_ACDC)")
    return api.create_workspace(folder, source=ACDC, labelled=labelled)


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements (rounded for the report)."""
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "n": len(values),
    }


def save(name: str, result: dict[str, Any], file: Path | None = None) -> Path:
    """Merge ``result`` under ``name`` into ``results/speed.json`` (atomic replace)."""
    file = file or RESULTS / "speed.json"
    file.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(file.read_text()) if file.is_file() else {}
    data[name] = result
    tmp = file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, file)
    return file
