"""A trained model as ONNX or as a bioimage.io model package, and back into a workspace.

* **ONNX** (``export_onnx``): the U-Net with dynamic batch, height and width (multiples of
  ``2 ** depth``), exported by torch's TorchScript-based exporter, opset 17. What prediction
  needs besides the network travels in the file's metadata (``metadata_props["napari_mtssl"]``,
  JSON): the preprocessing (target spacing, normalisation per modality), the patch size and
  window overlap, the post-processing, the classes, and where the model came from (run, round,
  validation Dice). :func:`predict_onnx` runs a scan through it with onnxruntime exactly as the
  engine does (same preprocessing, same Gaussian-blended sliding windows), so the two can be
  compared where napari-mtssl's own engine is not installed.
* **bioimage.io** (``export_bioimageio``): a zip with ``bioimageio.yaml`` (model spec 0.5),
  the ONNX weights, a test input and output, a cover image and a README with the plan, the
  training data and the scores; ``bioimageio.spec`` validates it before it is written.
* **Import** (``import_model``): an ONNX file or package exported this way becomes a model of
  a workspace run again (a teacher, a student, or a starting point), with its provenance kept.
  The ONNX initializers carry the network's parameter names, so the weights are recovered
  exactly; nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_mtssl._atomic import atomic_write_bytes, atomic_write_json

from . import ExportError, require

__all__ = [
    "export_onnx",
    "read_onnx_meta",
    "predict_onnx",
    "export_bioimageio",
    "import_model",
    "META_KEY",
]

META_KEY = "napari_mtssl"
OPSET = 17


def _model_meta(meta: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "kind", "width", "depth", "dropout", "norm", "out_channels", "num_classes",
        "label_names", "patch", "preprocessing", "overlap", "postprocess", "name", "run",
        "seed", "metrics",
    )  # fmt: skip
    out = {k: meta[k] for k in keep if k in meta}
    out.update(extra)
    return out


def export_onnx(net: Any, meta: dict[str, Any], out: Path, *, extra: dict | None = None) -> Path:
    """Write ``net`` (with its sidecar ``meta``) as ONNX at ``out`` (atomically)."""
    onnx = require("onnx", "ONNX export")
    import torch  # imported here, when needed: the api imports this module without torch

    net = net.cpu().eval()
    m = 2 ** int(meta.get("depth", 4))
    x = torch.zeros(1, 1, 4 * m, 4 * m)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"

        with warnings.catch_warnings():  # the TorchScript exporter announces its retirement
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (x,),
                str(path),
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={
                    "image": {0: "batch", 2: "height", 3: "width"},
                    "logits": {0: "batch", 2: "height", 3: "width"},
                },
                opset_version=OPSET,
                dynamo=False,
            )
        model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key = META_KEY
    entry.value = json.dumps(_model_meta(meta, extra or {}))
    model.producer_name = "napari-mtssl"
    atomic_write_bytes(out, model.SerializeToString())
    return out


def read_onnx_meta(source: Path | bytes, name: str | Path | None = None) -> dict[str, Any]:
    """The napari-mtssl metadata of an ONNX model (a file, or its bytes read from ``name``:
    a file or a package, which the messages name)."""
    onnx = require("onnx", "Reading an ONNX model")
    name = name if name is not None else (source if not isinstance(source, bytes) else "model")
    try:
        model = (
            onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(str(source))
        )
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own types
        raise ExportError(f"{name}: not a readable ONNX model ({exc})") from None
    for p in model.metadata_props:
        if p.key == META_KEY:
            return json.loads(p.value)
    raise ExportError(
        f"{name}: the ONNX model was not exported by napari-mtssl (no 'napari_mtssl' metadata): its "
        "preprocessing and patch size are unknown"
    )


def _session(source: Path | bytes):
    ort = require("onnxruntime", "Running an ONNX model")
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def predict_onnx(
    source: Path | bytes, array: np.ndarray, spacing, modality: str = "unknown"
) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(z, y, x)`` and probabilities ``(C, z, y, x)`` of a scan through an exported
    model with onnxruntime: the engine's preprocessing and sliding windows, ONNX for the net."""
    import torch  # imported here, when needed: the api imports this module without torch

    # imported here, when needed: it loads torch
    from napari_mtssl.training.data.preprocess import Preprocessing
    from napari_mtssl.training.prediction.inference import predict_scan

    meta = read_onnx_meta(source)
    sess = _session(source)

    class OnnxNet(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = sess.run(None, {"image": x.detach().float().cpu().numpy()})[0]
            return torch.from_numpy(out)

    return predict_scan(
        OnnxNet(),
        array,
        spacing,
        Preprocessing.from_dict(meta["preprocessing"]),
        int(meta["patch"]),
        torch.device("cpu"),
        modality=modality,
        overlap=float(meta.get("overlap", 0.5)),
        precision="fp32",
        postprocess=str(meta.get("postprocess", "none")),
    )


# -- bioimage.io -------------------------------------------------------------------------------


def export_bioimageio(
    net: Any,
    meta: dict[str, Any],
    out: Path,
    *,
    test_image: np.ndarray,
    plan: dict[str, Any] | None = None,
    data_description: str = "",
    license: str = "CC-BY-4.0",
    authors: list[str] | None = None,
) -> Path:
    """A bioimage.io model package (zip) at ``out``; ``test_image`` is one normalised slice
    ``(h, w)`` at the planned grid, at least one patch large (its window is the test input)."""
    spec = require("bioimageio.spec", "bioimage.io export")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_onnx(net, meta, folder / "model.onnx")
        binary = _test_tensors(net, int(meta["patch"]), test_image, folder)
        (folder / "README.md").write_text(_readme(meta, plan, data_description))
        rdf = _rdf(meta, plan, binary, license, authors)
        yaml = require("yaml", "bioimage.io export")  # PyYAML comes with the export extra
        (folder / "bioimageio.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
        descr = spec.load_description(folder / "bioimageio.yaml", format_version="discover")
        summary = getattr(descr, "validation_summary", None)
        if isinstance(descr, spec.InvalidDescr) or (
            summary is not None and summary.status == "failed"
        ):
            raise ExportError(f"{out}: the package does not validate: {_first_error(descr)}")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.iterdir()):
                zf.write(f, f.name)
        atomic_write_bytes(out, buf.getvalue())
    return out


def _test_tensors(net: Any, patch: int, test_image: np.ndarray, folder: Path) -> bool:
    """The package's test input (the centre window of ``test_image``), the network's
    probabilities for it and the cover picture, in ``folder``; whether the network has one
    sigmoid channel."""
    import torch  # imported here, when needed: the api imports this module without torch

    h, w = test_image.shape
    y0, x0 = max(0, (h - patch) // 2), max(0, (w - patch) // 2)
    window = np.zeros((patch, patch), np.float32)
    crop = test_image[y0 : y0 + patch, x0 : x0 + patch]
    window[: crop.shape[0], : crop.shape[1]] = crop
    test_in = window[None, None].astype(np.float32)
    with torch.no_grad():
        logits = net.cpu().eval()(torch.from_numpy(test_in))
    binary = logits.shape[1] == 1
    probs = torch.sigmoid(logits) if binary else torch.softmax(logits, dim=1)
    np.save(folder / "test_input.npy", test_in)
    np.save(folder / "test_output.npy", probs.numpy().astype(np.float32))
    _cover(window, probs.numpy()[0], folder / "cover.png")
    return binary


def _space_axes(sp: Sequence[float], size_of: Callable[[str], dict]) -> list[dict]:
    return [
        {"type": "space", "id": a, "size": size_of(a), "unit": "millimeter", "scale": float(s)}
        for a, s in zip(("y", "x"), sp)
    ]


def _rdf(
    meta: dict[str, Any],
    plan: dict[str, Any] | None,
    binary: bool,
    license: str,
    authors: list[str] | None,
) -> dict[str, Any]:
    """The package's description (bioimage.io spec 0.5): one normalised slice in, the class
    probabilities out, ONNX weights, the model's sidecar and plan in ``config``."""
    names = meta.get("label_names") or {}
    channels = (
        [str(names.get("1", "foreground"))]
        if binary
        else [str(names.get(str(c), f"class {c}")) for c in range(int(meta["out_channels"]))]
    )
    m = 2 ** int(meta.get("depth", 4))
    sp = (meta.get("preprocessing") or {}).get("spacing") or [1.0, 1.0]
    image = {
        "id": "image",
        "description": "one normalised slice at the planned spacing (README)",
        "axes": [
            {"type": "batch"},
            {"type": "channel", "channel_names": ["image"]},
            *_space_axes(sp, lambda a: {"min": m, "step": m}),
        ],
        "test_tensor": {"source": "test_input.npy"},
        "data": {"type": "float32"},
    }
    probabilities = {
        "id": "probabilities",
        "axes": [
            {"type": "batch"},
            {"type": "channel", "channel_names": channels},
            *_space_axes(sp, lambda a: {"tensor_id": "image", "axis_id": a}),
        ],
        "test_tensor": {"source": "test_output.npy"},
        "data": {"type": "float32"},
        "postprocessing": [
            {"id": "sigmoid"} if binary else {"id": "softmax", "kwargs": {"axis": "channel"}}
        ],
    }
    return {
        "type": "model",
        "format_version": "0.5.4",
        "name": f"napari-mtssl {meta.get('name', 'model')}"[:128],
        "description": (
            "2D U-Net segmentation model trained with two-stage multi-task "
            "self-supervised learning (napari-mtssl) from few labels"
        ),
        "authors": [{"name": a} for a in (authors or ["napari-mtssl user"])],
        "cite": [
            {
                "text": "Hu & Qin 2024, two-stage multi-task self-supervised learning for "
                "medical image segmentation",
                "url": "https://arxiv.org/abs/2402.07119",
            }
        ],
        "license": license,
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": ["segmentation", "2d", "unet", "medical-imaging", "napari-mtssl"],
        "inputs": [image],
        "outputs": [probabilities],
        "weights": {"onnx": {"source": "model.onnx", "opset_version": OPSET}},
        "config": {META_KEY: {**_model_meta(meta, {}), "plan": plan or {}}},
    }


def _first_error(descr: Any) -> str:
    summary = getattr(descr, "validation_summary", None)
    for detail in getattr(summary, "details", []) or []:
        for err in getattr(detail, "errors", []) or []:
            loc = ".".join(str(x) for x in getattr(err, "loc", ()))
            return f"{loc}: {getattr(err, 'msg', err)}"
    return str(summary)[:300] if summary is not None else "unknown error"


def _cover(image: np.ndarray, probs: np.ndarray, path: Path) -> None:
    # imported here, when needed: matplotlib (about 0.3 s) only draws a package's cover
    import matplotlib

    matplotlib.use("Agg")  # no window: pyplot is imported after choosing the backend
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(4, 2))
    axes[0].imshow(image, cmap="gray")
    labels = probs.argmax(0) if probs.shape[0] > 1 else (probs[0] > 0.5)
    axes[1].imshow(image, cmap="gray")
    axes[1].imshow(np.ma.masked_equal(labels, 0), cmap="tab10", alpha=0.5, interpolation="nearest")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _readme(meta: dict[str, Any], plan: dict[str, Any] | None, data: str) -> str:
    m = meta.get("metrics") or {}
    prep = meta.get("preprocessing") or {}
    lines = [
        f"# napari-mtssl model: {meta.get('name', 'model')}",
        "",
        "A 2D U-Net (MONAI blocks) trained by napari-mtssl: two-stage multi-task "
        "self-supervised learning from few labels (Hu & Qin 2024).",
        "",
        "## Input",
        "",
        f"One slice, resampled in-plane to {prep.get('spacing') or 'its own'} mm and normalised "
        f"as `{json.dumps(prep.get('norms'))}` (per-scan z-score after percentile clipping for "
        "`zscore`; clip and z-score with the stored statistics for `ct`). Whole slices are "
        f"predicted with {meta.get('patch')} px windows overlapping by "
        f"{meta.get('overlap', 0.5)}, blended with a Gaussian weight; post-processing: "
        f"{meta.get('postprocess', 'none')}. `napari_mtssl.export.model_files.predict_onnx` "
        "does all of it.",
        "",
        "## Classes",
        "",
        *[f"- {k}: {v}" for k, v in (meta.get("label_names") or {}).items()],
        "",
        "## Validation",
        "",
        f"Mean foreground Dice {m.get('mean_dice')}; per class {json.dumps(m.get('dice'))}; "
        f"steps {m.get('steps')}; run {meta.get('run')}.",
        "",
        "## Training data",
        "",
        data or "(not described)",
        "",
    ]
    if plan:
        lines += ["## Plan", "", "```json", json.dumps(plan, indent=1)[:6000], "```", ""]
    return "\n".join(lines)


# -- import ------------------------------------------------------------------------------------


def _onnx_bytes(path: Path) -> tuple[bytes, dict[str, Any]]:
    """(ONNX bytes, extra provenance) of an .onnx file or a bioimage.io package (.zip)."""
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        spec = require("bioimageio.spec", "Importing a bioimage.io package")
        descr = spec.load_description(path, format_version="discover")
        if isinstance(descr, spec.InvalidDescr):
            raise ExportError(f"{path}: the package does not validate: {_first_error(descr)}")
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            rdf_name = next((n for n in names if n.endswith("bioimageio.yaml")), None)
            yaml = require("yaml", "Importing a bioimage.io package")  # export extra
            rdf = yaml.safe_load(zf.read(rdf_name)) if rdf_name else {}
            src = (((rdf.get("weights") or {}).get("onnx") or {}).get("source")) or "model.onnx"
            if src not in names:
                raise ExportError(f"{path}: weights.onnx.source {src!r} is not in the package")
            return zf.read(src), {"package": str(path), "package_name": rdf.get("name")}
    return path.read_bytes(), {"onnx": str(path)}


def import_model(workspace: Any, path: str | Path, name: str = "student") -> str:
    """Bring an exported model into ``workspace`` as model ``name`` of a new run (kind
    ``import``); returns the run id. Its preprocessing, classes and provenance come along; a
    model whose classes differ from the workspace's is refused."""
    import torch  # imported here, when needed: the api imports this module without torch

    # imported here, when needed: it loads torch, MONAI
    from napari_mtssl.models import build_unet
    from napari_mtssl.training.loop import checkpoints

    onnx = require("onnx", "Importing an ONNX model")
    from onnx import numpy_helper  # onnx is present: require() said so

    path = Path(path)
    data, provenance = _onnx_bytes(path)
    meta = read_onnx_meta(data, name=path)
    names = {int(k): v for k, v in (meta.get("label_names") or {}).items()}
    if names and names != dict(workspace.label_names):
        raise ExportError(
            f"{path}: the model segments {names}, this workspace's classes are "
            f"{dict(workspace.label_names)}; import it into a workspace with those classes"
        )
    arch = checkpoints._checked(meta, path)  # the same bounds as any sidecar
    net = build_unet(
        1, arch["out_channels"], arch["width"], arch["dropout"], arch["norm"], arch["depth"]
    )
    model = onnx.load_from_string(data)
    weights = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
    }
    state = net.state_dict()
    missing = [k for k in state if k not in weights]
    if missing:
        raise ExportError(
            f"{path}: the ONNX weights lack {missing[:3]} (not a napari-mtssl export?)"
        )
    net.load_state_dict({k: weights[k] for k in state}, strict=True)
    run = workspace.new_run("import", {"source": str(path)})
    out_meta = {
        **meta,
        "name": name,
        "run": run.id,
        "imported_from": {
            **provenance,
            "original_run": meta.get("run"),
            "original_name": meta.get("name"),
        },
    }
    checkpoints.save_model(net, run.model_path(name), out_meta)

    atomic_write_json(run.path / "pipeline.json", {"models": {name: meta.get("metrics") or {}}})
    atomic_write_json(run.path / "plan.json", _plan_of(meta))  # retraining keeps its shape
    run.set_status("done")
    return run.id


def _plan_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The data shape of an imported model as a plan, so stage 2 and retraining use it."""
    prep = meta.get("preprocessing") or {}
    sp = prep.get("spacing")
    return {
        "device": "cpu",
        "threads": 1,
        "precision": "fp32",
        "spacing": sp,
        "patch": int(meta["patch"]),
        "width": int(meta["width"]),
        "depth": int(meta.get("depth", 4)),
        "batch_size": 8,
        "norms": prep.get("norms") or {},
        "reasons": ["imported model: the shape it was trained with"],
    }
