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
from urllib.parse import quote

import torch
from safetensors.torch import load_file, save

from napari_mtssl._atomic import atomic_write_bytes, atomic_write_json

__all__ = [
    "ModelFileError",
    "save_model",
    "load_model",
    "read_model_meta",
    "save_state",
    "load_state",
    "state_exists",
    "remove_state",
]


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(clean))


def save_model(net: torch.nn.Module, path: str | Path, meta: dict[str, Any]) -> None:
    """Weights to ``path`` (.safetensors) and ``meta`` to the ``.json`` beside it."""
    path = Path(path)
    _save_tensors(dict(net.state_dict()), path)
    atomic_write_json(path.with_suffix(".json"), meta)


class ModelFileError(ValueError):
    """A model or checkpoint file that cannot be used; the message names the file."""

    def __init__(self, path: object, problem: str):
        super().__init__(f"{path}: {' '.join(str(problem).split())}")
        self.path = path


# What a sidecar may ask for: generous for real networks, far below what would exhaust memory.
_LIMITS = {"out_channels": (1, 1024), "width": (1, 512), "depth": (2, 7), "patch": (16, 4096)}


def read_model_meta(path: str | Path) -> dict[str, Any]:
    side = Path(path).with_suffix(".json")
    try:
        with open(side, encoding="utf-8") as fh:
            meta = json.load(fh)
    except FileNotFoundError:
        raise ModelFileError(side, "the model's description (JSON sidecar) is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(side, f"not a readable model description ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(side, "not a model description (expected a JSON object)")
    return meta


def _checked(meta: dict[str, Any], side: Path) -> dict[str, Any]:
    """The architecture fields of a sidecar, type- and range-checked before anything is built."""
    # imported here, when needed: it loads MONAI
    from napari_mtssl.models import NORMS

    out: dict[str, Any] = {}
    for key, (lo, hi) in _LIMITS.items():
        if key not in meta and key in ("patch",):
            continue
        v = meta.get(key, 4 if key == "depth" else None)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ModelFileError(side, f"{key} = {v!r} is not an integer in [{lo}, {hi}]")
        out[key] = v
    norm = meta.get("norm", "instance")
    if norm not in NORMS:
        raise ModelFileError(side, f"norm = {norm!r} is not one of {', '.join(NORMS)}")
    dropout = meta.get("dropout", 0.0)
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ModelFileError(side, f"dropout = {dropout!r} is not in [0, 1)")
    out.update(norm=norm, dropout=float(dropout))
    return out


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Build the U-Net described by the sidecar and load its weights (eval mode).

    The sidecar is checked before anything is built (a damaged or hostile one cannot ask for
    a network of terabytes), and a weights file that is truncated, not safetensors, or does not
    match the sidecar is a :class:`ModelFileError` naming the file.
    """
    # imported here, when needed: it loads MONAI
    from napari_mtssl.models import build_unet

    path = Path(path)
    meta = read_model_meta(path)
    arch = _checked(meta, path.with_suffix(".json"))
    net = build_unet(
        in_channels=1,
        out_channels=arch["out_channels"],
        width=arch["width"],
        dropout=arch["dropout"],
        norm=arch["norm"],
        depth=arch["depth"],
    )
    state = _load_tensors(path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelFileError(
            path,
            "the weights do not match the network its sidecar describes "
            f"({first[1].strip() if len(first) > 1 else first[0]})",
        ) from None
    return net.to(device).eval(), meta


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelFileError(path, "the weights file is missing")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelFileError(
            path, f"not a readable safetensors weights file ({str(exc).splitlines()[0]})"
        ) from None


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
    side = folder / f"{base}.json"
    try:
        with open(side, encoding="utf-8") as fh:
            info = json.load(fh)
        tensors = _load_tensors(folder / f"{base}.safetensors")
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
    except ModelFileError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelFileError(side, f"the resumable checkpoint is damaged ({exc})") from None


def remove_state(folder: str | Path, unit: str) -> None:
    base = _safe(unit)
    for suffix in (".json", ".safetensors"):
        p = Path(folder) / f"{base}{suffix}"
        if p.exists():
            p.unlink()


def _safe(unit: str) -> str:
    return quote(unit, safe="-_.")
