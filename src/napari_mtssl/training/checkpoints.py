"""Model weights and resumable training state, in formats that cannot execute code on load.

* Model: ``<name>.safetensors`` (tensors) + ``<name>.json`` sidecar (what the model is: config,
  classes, output channels, image size, normalisation, metrics). Loading reads the sidecar,
  builds a U-Net from it and copies the tensors in; nothing is unpickled.
* Resumable state (``checkpoint/<unit>.safetensors`` + ``.json``): the network, the task heads
  and the optimiser tensors in safetensors, everything else (step, optimiser hyper-parameters,
  grad-scaler scale, unit name) in JSON. Randomness needs no saved state: every step re-seeds its
  generators from ``(seed, step)`` (see ``trainer.step_seed``), so a resumed run draws the same
  batches as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from napari_mtssl._atomic import atomic_write_bytes, atomic_write_json

__all__ = [
    "save_model",
    "load_model",
    "read_model_meta",
    "save_state",
    "load_state",
    "state_exists",
    "remove_state",
]


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(clean))


def save_model(net: torch.nn.Module, path: str | Path, meta: dict[str, Any]) -> None:
    """Weights to ``path`` (.safetensors) and ``meta`` to the ``.json`` beside it."""
    path = Path(path)
    _save_tensors(dict(net.state_dict()), path)
    atomic_write_json(path.with_suffix(".json"), meta)


def read_model_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    with open(path.with_suffix(".json"), encoding="utf-8") as fh:
        return json.load(fh)


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Build the U-Net described by the sidecar and load its weights (eval mode)."""
    from napari_mtssl.models import build_unet

    path = Path(path)
    meta = read_model_meta(path)
    net = build_unet(
        in_channels=1,
        out_channels=int(meta["out_channels"]),
        width=int(meta["width"]),
        dropout=float(meta.get("dropout", 0.0)),
        norm=str(meta.get("norm", "instance")),
        depth=int(meta.get("depth", 4)),
    )
    state = load_file(str(path), device="cpu")
    net.load_state_dict(state, strict=True)
    return net.to(device).eval(), meta


def save_state(
    folder: str | Path,
    unit: str,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    step: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Resumable state of one training unit (one model being trained)."""
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    for mname, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"module/{mname}/{k}"] = v
    osd = optimizer.state_dict()
    opt_json: dict[str, Any] = {"param_groups": osd["param_groups"], "state": {}}
    for pid, st in osd["state"].items():
        entry: dict[str, Any] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{pid}/{k}"] = v
                entry[k] = {"tensor": True}
            else:
                entry[k] = v
        opt_json["state"][str(pid)] = entry
    base = _safe(unit)
    _save_tensors(tensors, folder / f"{base}.safetensors")
    atomic_write_json(
        folder / f"{base}.json",
        {
            "unit": unit,
            "step": int(step),
            "optimizer": opt_json,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "extra": extra or {},
        },
    )


def state_exists(folder: str | Path, unit: str) -> bool:
    base = _safe(unit)
    folder = Path(folder)
    return (folder / f"{base}.json").is_file() and (folder / f"{base}.safetensors").is_file()


def load_state(
    folder: str | Path,
    unit: str,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> dict[str, Any]:
    """Restore what :func:`save_state` wrote; returns ``{"step": ..., "extra": ...}``."""
    folder = Path(folder)
    base = _safe(unit)
    with open(folder / f"{base}.json", encoding="utf-8") as fh:
        info = json.load(fh)
    tensors = load_file(str(folder / f"{base}.safetensors"), device="cpu")
    for mname, module in modules.items():
        prefix = f"module/{mname}/"
        sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(sd, strict=True)
    opt = info["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for pid, entry in opt["state"].items():
        st = {}
        for k, v in entry.items():
            if isinstance(v, dict) and v.get("tensor"):
                st[k] = tensors[f"optim/{pid}/{k}"]
            else:
                st[k] = v
        state[int(pid)] = st
    optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
    if scaler is not None and info.get("scaler"):
        scaler.load_state_dict(info["scaler"])
    return {"step": int(info["step"]), "extra": info.get("extra", {})}


def remove_state(folder: str | Path, unit: str) -> None:
    base = _safe(unit)
    for suffix in (".json", ".safetensors"):
        p = Path(folder) / f"{base}{suffix}"
        if p.exists():
            p.unlink()


def _safe(unit: str) -> str:
    from urllib.parse import quote

    return quote(unit, safe="-_.")
