"""A change to the engine's structure trains the same weights: the tiny run of everything
(the baseline, each task's models, the teachers, the student), fp32 on one CPU thread, against
the weights recorded before the change (``tiny_run_weights*.json``: each tensor's sum and sum
of squares).

Float arithmetic differs between CPUs (the kernels torch picks by the instructions a CPU has),
and a few hundred training steps carry a difference in the last bits to every weight: each
recording names the platform it was made on (:func:`platform`). A platform with a recording of
its own is held to it; on another one the run must match one of the recordings, and where it
matches none, the test is skipped, naming the platform. ``tiny_run_weights.json`` was recorded
on 6 December on a machine whose platform name was not kept (CI's machines match it).

Record again only when training is meant to change (then delete the other platforms'
recordings), or for a new platform, and say why in the commit:
``MTSSL_RECORD_WEIGHTS=1 .venv/bin/python -m pytest tests/training/test_same_weights.py``
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent
RECORD_ENV = "MTSSL_RECORD_WEIGHTS"


def platform() -> str:
    """What a CPU's float arithmetic depends on: torch's kernel level, the instructions that
    change the kernels oneDNN picks, and torch's version."""
    import torch

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        flags = []
    extra = [f for f in ("avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags]
    version = torch.__version__.split("+")[0]
    return "-".join([torch.backends.cpu.get_cpu_capability().lower(), *extra, f"torch{version}"])


def recordings() -> dict[str, Path]:
    """Platform name -> its recording ("unknown" for the first one, whose name was not kept)."""
    out = {"unknown": HERE / "tiny_run_weights.json"}
    for p in sorted(HERE.glob("tiny_run_weights_*.json")):
        out[p.stem.removeprefix("tiny_run_weights_")] = p
    return {k: v for k, v in out.items() if v.is_file()}


def tiny_run_weights(folder: Path) -> dict[str, dict[str, list[float]]]:
    """Model name -> tensor name -> [sum, sum of squares] after the tiny run of everything."""
    from safetensors.torch import load_file

    from napari_mtssl import api
    from napari_mtssl.training.running.pipeline import run_training

    ws = api.create_workspace(folder / "ws", source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu", num_threads=1)
    report = api.run(run_training(ws, cfg, "all"))
    run = ws.run(report["run"])
    out: dict[str, dict[str, list[float]]] = {}
    for model in api.list_models(ws):
        tensors = load_file(run.model_path(model))
        out[model] = {
            k: [float(t.double().sum()), float(t.double().square().sum())]
            for k, t in sorted(tensors.items())
            if t.is_floating_point()
        }
    return out


def differences(got: dict, want: dict) -> list[str]:
    """The tensors that differ (each as a line), or the models that do."""
    if sorted(got) != sorted(want):
        return [f"the run trained {sorted(got)}, recorded: {sorted(want)}"]
    return [
        f"{model} {name}: {g} != {w}"
        for model in want
        for name, w in want[model].items()
        for g in [got[model].get(name)]
        if g is None
        or not all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7) for a, b in zip(g, w))
    ] + [
        f"{m}: tensors {sorted(set(got[m]) - set(want[m]))} not recorded"
        for m in want
        if set(got[m]) - set(want[m])
    ]


def test_the_tiny_run_trains_the_recorded_weights(tmp_path):
    got = tiny_run_weights(tmp_path)
    here = platform()
    if os.environ.get(RECORD_ENV):
        path = HERE / f"tiny_run_weights_{here}.json"
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {sum(map(len, got.values()))} tensors for {here} in {path.name}")
    records = recordings()
    if here in records:
        differ = differences(got, json.loads(records[here].read_text()))
        assert not differ, f"on {here}:\n" + "\n".join(differ[:10])
        return
    matched = [p for p, f in records.items() if not differences(got, json.loads(f.read_text()))]
    if not matched:
        pytest.skip(
            f"no recording for this platform ({here}), and the run matches none of the others "
            f"({', '.join(records)}): float arithmetic differs between CPUs; record it with "
            f"{RECORD_ENV}=1 where the engine is known to train as before"
        )
