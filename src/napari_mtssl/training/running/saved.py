"""The models a workspace's runs saved: which there are, in the order users read them, and
one loaded with what prediction needs to see scans as it was trained to (preprocessing, patch,
window overlap, post-processing).

Importing this module is cheap (the docks list the models at every refresh): torch and the
engine are imported by the functions that load a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from napari_mtssl import ids

if TYPE_CHECKING:
    from napari_mtssl.io.scan import Scan
    from napari_mtssl.workspace import Workspace

__all__ = ["MODEL_ORDER", "TrainedModel", "list_models", "load", "model_key", "model_run"]

MODEL_ORDER = ids.FIRST
model_key = ids.model_key  # the one order of models (kept here for callers of the engine)


def list_models(ws: Workspace) -> list[str]:
    """Models users can predict with: every model a run finished, including the finished
    models of a run that was stopped (the newest run holding a name provides its weights)."""
    names: set[str] = set()
    for r in ws.runs():
        names.update(r.finished_models())
    return ids.in_order(names)


@dataclass(frozen=True)
class TrainedModel:
    """A trained network with what prediction needs to see scans as it was trained to."""

    net: Any
    prep: Any  # training.data.preprocess.Preprocessing
    patch: int
    overlap: float
    run: str
    postprocess: str = "none"

    def predict(
        self,
        scan: Scan,
        device: Any,
        prepared: dict | None = None,
        slices: Sequence[int] | None = None,
    ):
        # imported here, when needed: it loads torch
        from napari_mtssl.training.prediction.inference import predict_scan, resolve_precision

        return predict_scan(
            self.net,
            scan.array,
            scan.spacing,
            self.prep,
            self.patch,
            device,
            modality=scan.modality,
            overlap=self.overlap,
            precision=resolve_precision(device, "auto"),
            prepared=prepared,
            postprocess=self.postprocess,
            slices=slices,
        )


def model_run(ws: Workspace, model: str, error: type[Exception]) -> Any:
    """The run holding ``model`` (its newest), or ``error`` naming the models there are."""
    # imported here, when needed: it loads torch, MONAI, scipy
    from napari_mtssl.training.running.pipeline import find_model

    r = find_model(ws, model)
    if r is None:
        avail = list_models(ws)
        raise error(
            f"no trained model {model!r} in this workspace; available: "
            f"{', '.join(avail) if avail else 'none (train first)'}"
        )
    return r


def load(ws: Workspace, model: str, device: Any) -> TrainedModel:
    """``model`` of ``ws`` (its newest run's weights) on ``device``, ready to predict."""
    # imported here, when needed: it loads torch
    from napari_mtssl.training.data.preprocess import Preprocessing
    from napari_mtssl.training.loop import checkpoints

    r = model_run(ws, model, ValueError)
    path = r.model_path(model)
    net, meta = checkpoints.load_model(path, device)
    if "preprocessing" not in meta or "patch" not in meta:
        raise ValueError(
            f"{path}: model {model!r} was trained by an older napari-mtssl (whole slices "
            "squashed to a square); train it again to predict with it"
        )
    return TrainedModel(
        net,
        Preprocessing.from_dict(meta["preprocessing"]),
        int(meta["patch"]),
        float(meta.get("overlap", 0.5)),
        r.id,
        str(meta.get("postprocess", "none")),
    )
