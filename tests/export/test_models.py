"""ONNX and bioimage.io exports: the same masks as the engine, a package that validates, and an
import that brings the same network back into a workspace."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from napari_mtssl import api
from napari_mtssl.cli import main
from napari_mtssl.export import ExportError

pytest.importorskip("onnxruntime")


# Each export trains its model first (the module's fixture): in `make test`, not the quick run
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A whole run with the inpaint task (``what="all"``): the exports are of its student, which
    the session's ``trained_workspace`` (a baseline alone) does not have."""
    ws = api.create_workspace(tmp_path_factory.mktemp("x") / "ws", source="sample", labelled=2)
    api.run(api.train(ws, api.make_config("tiny", device="cpu", tasks=["inpaint"]), "all"))
    return ws


def _dice(a, b):
    inter = np.logical_and(a > 0, a == b).sum()
    return 2 * inter / max(1, (a > 0).sum() + (b > 0).sum())


def test_onnx_gives_the_engines_masks(trained, tmp_path):
    from napari_mtssl.export.model_files import predict_onnx, read_onnx_meta

    out = api.export_model(trained, "student", "onnx", tmp_path / "student.onnx")
    meta = read_onnx_meta(out)
    assert meta["patch"] and meta["preprocessing"] and meta["label_names"]
    assert meta["run"] and meta["name"] == "student"
    import torch

    from napari_mtssl.training.running.saved import load as _load

    sid = trained.scan_ids("val")[0]
    scan = trained.load_scan(sid)
    labels, probs = predict_onnx(out, scan.array, scan.spacing, scan.modality)
    # the engine at the ONNX model's precision (fp32): the same network, so the same numbers
    m = _load(trained, "student", torch.device("cpu"))
    from napari_mtssl.training.prediction.inference import predict_scan

    ref_labels, ref_probs = predict_scan(
        m.net,
        scan.array,
        scan.spacing,
        m.prep,
        m.patch,
        torch.device("cpu"),
        modality=scan.modality,
        overlap=m.overlap,
        precision="fp32",
        postprocess=m.postprocess,
    )
    diff = float(np.abs(probs - ref_probs).max())
    # and the engine as users run it (bf16 where the CPU is faster with it)
    engine = api.predict(trained, sid, model="student", device="cpu")
    print(
        f"\n[onnx] max probability difference {diff:.2e} (engine fp32); masks "
        f"{'identical' if np.array_equal(labels, ref_labels) else 'differ'}; Dice against the "
        f"engine's default precision {_dice(labels, engine.labels):.4f}"
    )
    assert diff < 1e-4
    assert np.array_equal(labels, ref_labels) or _dice(labels, ref_labels) >= 0.999


def test_bioimageio_package_validates_and_runs(trained, tmp_path):
    spec = pytest.importorskip("bioimageio.spec")
    out = api.export_model(trained, "student", "bioimageio", tmp_path / "student.zip")
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
    assert {
        "bioimageio.yaml",
        "model.onnx",
        "test_input.npy",
        "test_output.npy",
        "cover.png",
        "README.md",
    } <= names
    descr = spec.load_description(out, format_version="discover")
    assert not isinstance(descr, spec.InvalidDescr), descr.validation_summary
    core = pytest.importorskip("bioimageio.core")
    summary = core.test_model(out)
    assert summary.status == "passed", summary.format()


def test_import_brings_the_same_network_back(trained, tmp_path):
    import torch

    from napari_mtssl.training.loop import checkpoints

    onnx_file = api.export_model(trained, "student", "onnx", tmp_path / "s.onnx")
    other = api.create_workspace(tmp_path / "other", source="sample", labelled=1)
    run_id = api.import_model(other, onnx_file, "student")
    run = other.run(run_id)
    a, meta = checkpoints.load_model(run.model_path("student"))
    b, _ = checkpoints.load_model(
        trained.run(api.predict(trained, trained.scan_ids()[0], device="cpu").run).model_path(
            "student"
        )
    )
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert meta["imported_from"]["onnx"] == str(onnx_file)
    assert "student" in api.list_models(other)
    # and it can be trained on: a quick retrain starts from it
    assert (run.path / "plan.json").is_file()


def test_export_refusals(trained, tmp_path, capsys):
    with pytest.raises(ExportError, match="no trained model 'nope'"):
        api.export_model(trained, "nope", "onnx", tmp_path / "x.onnx")
    existing = tmp_path / "taken.onnx"
    existing.write_bytes(b"mine")
    with pytest.raises(ExportError, match="exists"):
        api.export_model(trained, "student", "onnx", existing)
    assert existing.read_bytes() == b"mine"
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("bioimageio.yaml", json.dumps({"type": "model", "format_version": "0.5.4"}))
    with pytest.raises(ExportError, match="does not validate"):
        api.import_model(trained, bad, "student")
    # a DICOM-SEG for a scan that did not come from DICOM: a message offering NIfTI
    sid = trained.scan_ids("val")[0]
    rc = main(["predict", str(trained.root), sid, "--out", str(tmp_path / "m.dcm")])
    err = capsys.readouterr().err
    assert rc == 2 and "NIfTI" in err and len(err.strip().splitlines()) == 1


def test_cli_export_and_import(trained, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["export", str(trained.root), "--model", "student", "--out", str(out)]) == 0
    other = api.create_workspace(tmp_path / "o", source="sample", labelled=1)
    assert main(["import", str(other.root), str(out), "--as", "teacher:inpaint"]) == 0
    assert "teacher:inpaint" in api.list_models(other)
