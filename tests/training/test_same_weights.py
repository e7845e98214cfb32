"""A change to the engine's structure trains the same weights: the tiny run of everything
(the baseline, each task's models, the teachers, the student), fp32 on one CPU thread, against
the weights recorded before the change (``tiny_run_weights.json``: each tensor's sum and sum
of squares).

Record again only when training is meant to change, and say why in the commit:
``.venv/bin/python tests/training/test_same_weights.py --write``
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

RECORD = Path(__file__).with_name("tiny_run_weights.json")


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


def test_the_tiny_run_trains_the_recorded_weights(tmp_path):
    want = json.loads(RECORD.read_text())
    got = tiny_run_weights(tmp_path)
    assert sorted(got) == sorted(want), "the run trained other models than recorded"
    differ = [
        f"{model} {name}: {g} != {w}"
        for model in want
        for name, w in want[model].items()
        for g in [got[model].get(name)]
        if g is None
        or not all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7) for a, b in zip(g, w))
    ]
    assert not differ, "\n".join(differ[:10])
    assert all(sorted(got[m]) == sorted(want[m]) for m in want)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    with tempfile.TemporaryDirectory() as d:
        weights = tiny_run_weights(Path(d))
    RECORD.write_text(json.dumps(weights, indent=1, sort_keys=True) + "\n")
    print(f"recorded {sum(map(len, weights.values()))} tensors of {len(weights)} models")
