"""Whole-scan prediction (sliding windows at the planned resolution, mapped back onto the scan's
own grid), mixed precision, and the ensemble helpers.

Prediction repeats training's view of a scan: the model's :class:`~.preprocess.Preprocessing`
(normalisation, in-plane spacing) gives the planned volume, which is padded to at least one
patch and swept with ``patch x patch`` windows overlapping by ``overlap``; the windows' logits
are blended with a Gaussian weight (MONAI's ``sliding_window_inference``, nnU-Net's sigma of
1/8 of the patch), turned into probabilities, un-padded and resampled to the scan's ``(h, w)``.
Slices go through in chunks, so a 512 x 512 x 300 CT never needs more than one chunk of
windows in memory besides the output.

Disagreement between teachers is measured as the *mutual information* between the prediction
and the choice of teacher (the BALD score): entropy of the mean probabilities minus the mean of
the teachers' entropies, in nats, per voxel. It is zero when all teachers agree (even when they
are all unsure), and high where confident teachers contradict each other, which is where a
person's correction teaches the student the most. A slice's score is the mean over its voxels.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence

import numpy as np
import torch

from napari_mtssl.training import kept_timings
from napari_mtssl.training.data.preprocess import Preprocessing

__all__ = [
    "resolve_device",
    "resolve_precision",
    "autocast",
    "sliding_window_probs",
    "predict_scan",
    "ensemble_mean",
    "disagreement",
    "slice_scores",
]


def class_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities ``(B, C, H, W)`` from logits ``(B, K, H, W)``; K == 1 means binary."""
    z = logits.float() / temperature
    if z.shape[1] == 1:
        p = torch.sigmoid(z)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(z, dim=1)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if available, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available here")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError("device 'mps' was requested but Apple MPS is not available here")
    return dev


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


BF16_FASTER = 1.1  # bf16 is taken on a CPU where a step times faster than this x fp32


def resolve_precision(device: torch.device, requested: str = "auto") -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` for ``device``.

    ``auto``: on CUDA bf16 where supported, else fp16 (with loss scaling); on the CPU bf16 only
    where a quick timing shows it faster than fp32 (CPUs with bf16 instructions; elsewhere bf16
    is emulated and slower); fp32 on anything else.
    """
    if requested != "auto":
        if requested == "fp16" and device.type == "cpu":
            return "fp32"  # no fp16 autocast on the CPU; fp32 is the honest fallback
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_bf16_speedup() > BF16_FASTER else "fp32"
    return "fp32"


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """fp32 time / bf16 time of a small convolutional training step on this CPU (once per
    process, about a second): what a plan decides its precision by. A speedup that chose bf16
    is kept between sessions (:mod:`..kept_timings`) and taken without timing; one that chose
    fp32 is not (a busy machine can hide bf16's gain: the next session times again)."""
    kept = _kept_bf16_speedup()
    if kept is not None:
        return kept
    speedup = time_bf16_speedup()
    if speedup > BF16_FASTER:
        kept_timings.put(_BF16_KEY, {"speedup": speedup})
    return speedup


_BF16_KEY = "bf16_speedup|cpu"


def _kept_bf16_speedup() -> float | None:
    """The bf16 speedup an earlier session kept (only one that chose bf16 is kept), or None."""
    kept = kept_timings.get(_BF16_KEY)
    speedup = kept.get("speedup") if kept is not None else None
    return speedup if isinstance(speedup, float) and speedup > BF16_FASTER else None


def untimed_precision() -> tuple[str, str]:
    """The CPU's precision for a run that starts before anything is timed (a short baseline:
    :func:`..planning.shape.shape_plan`), with its reason: bf16 where an earlier session timed
    it faster (kept), else bf16 where the CPU has bf16 instructions (AVX512-BF16 or AMX: a step
    timed 1.8-2.1x the speed of fp32 on the AMD EPYC and 1.4-2.6x on the Intel Xeon this project
    was measured on), else fp32 (bf16 emulated is slower; the run re-times bf16 once the
    machine is quiet, as for any fp32 choice)."""
    sp = _kept_bf16_speedup()
    if sp is not None:
        return "bf16", (
            f"bf16: a training step under bf16 autocast ran {sp:.2f}x the speed of fp32 on "
            "this CPU (timed by an earlier session)"
        )
    if _native_bf16():
        return "bf16", (
            "bf16: this CPU has bf16 instructions (AVX512-BF16 or AMX), so bf16 without timing "
            "it against fp32"
        )
    return "fp32", "fp32: this CPU has no bf16 instructions (bf16 would be emulated, slower)"


def _native_bf16() -> bool:
    """Whether the CPU has bf16 instructions (False where this torch build cannot say)."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except (RuntimeError, OSError):
            continue
    return False


@functools.lru_cache(maxsize=1)
def quiet_bf16_speedup() -> float:
    """:func:`time_bf16_speedup` timed again once the machine has turned quiet (once per
    process): a training unit re-checks a fp32 choice that was made on a busy machine by it."""
    return time_bf16_speedup()


def time_bf16_speedup() -> float:
    """fp32 time / bf16 time of a small convolutional training step on this CPU, now (about a
    second; 0.0 where this build has no bf16 kernels)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.InstanceNorm2d(16, affine=True),
        torch.nn.LeakyReLU(0.1),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.LeakyReLU(0.1),
        torch.nn.Conv2d(32, 2, 1),
    )
    x = torch.randn(4, 1, 96, 96)

    def step(dtype: torch.dtype | None) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = net(x).float().square().mean()
        loss.backward()
        return time.perf_counter() - t0

    try:
        times = {"fp32": [], "bf16": []}
        for _ in range(2):  # warm-up (oneDNN picks kernels on first use)
            step(None), step(torch.bfloat16)
        for _ in range(4):  # alternate, so a change of load hits both
            times["fp32"].append(step(None))
            times["bf16"].append(step(torch.bfloat16))
        return float(np.median(times["fp32"]) / np.median(times["bf16"]))
    except RuntimeError:  # no bf16 kernels on this build
        return 0.0


def amp_dtype(precision: str) -> torch.dtype | None:
    return _DTYPES.get(precision)


def autocast(device: torch.device, precision: str = "fp32"):
    dt = amp_dtype(precision)
    if dt is None or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dt)


@torch.no_grad()
def sliding_window_probs(
    net: torch.nn.Module,
    volume: np.ndarray,
    patch: int,
    device: torch.device,
    *,
    overlap: float = 0.5,
    precision: str = "fp32",
    batch_size: int = 16,
    chunk: int = 32,
    temperature: float = 1.0,
):
    """Class probabilities for a planned ``(z, H, W)`` volume with ``H, W >= patch``, chunk by
    chunk: yields ``(z0, probs)`` with ``probs`` a ``(C, n, H, W)`` CPU float32 tensor for
    slices ``z0 .. z0 + n - 1``."""
    # imported here, when needed: MONAI takes seconds to import, and planning imports this module
    from monai.inferers import sliding_window_inference

    was_training = net.training
    net.eval()
    try:
        for z0 in range(0, volume.shape[0], chunk):
            x = torch.from_numpy(np.array(volume[z0 : z0 + chunk], dtype=np.float32))
            x = x[:, None].to(device)
            with autocast(device, precision):
                logits = sliding_window_inference(
                    x,
                    roi_size=(patch, patch),
                    sw_batch_size=batch_size,
                    predictor=net,
                    overlap=overlap,
                    mode="gaussian",
                    sigma_scale=0.125,
                )
            probs = class_probs(logits.float(), temperature).cpu()  # (n, C, H, W)
            yield z0, probs.permute(1, 0, 2, 3)
    finally:
        net.train(was_training)


@torch.no_grad()
def predict_scan(
    nets: torch.nn.Module | Sequence[torch.nn.Module],
    array: np.ndarray,
    spacing: Sequence[float],
    prep: Preprocessing,
    patch: int,
    device: torch.device,
    *,
    modality: str = "unknown",
    overlap: float = 0.5,
    precision: str = "fp32",
    batch_size: int = 16,
    prepared: dict | None = None,
    postprocess: str = "none",
    slices: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(z, y, x)`` uint8 and probabilities ``(C, z, y, x)`` float32 in the scan's grid.

    Several networks: their probabilities are averaged (an ensemble). ``prepared``: a dict
    shared by calls on the same scan, so models with the same preprocessing and patch reuse one
    normalised, resampled, padded volume. ``postprocess``: the model's choice
    (:mod:`.postprocess`), applied to the labels only. ``slices``: predict only these slices
    (the network is 2D: each is what the whole scan's prediction has there; the scan is still
    normalised as a whole); the outputs then hold them in that order, each post-processed on
    its own.
    """
    # imported here, when needed: it loads MONAI, scipy
    from napari_mtssl.training.data.slices import pad_to, prepare_volume

    a = np.asarray(array)
    if a.ndim == 2:
        a = a[None]
    key = (prep.key(modality), int(patch))
    if prepared is not None and key in prepared:
        vol, smap, offsets = prepared[key]
    else:
        vol, smap = prepare_volume(a, spacing, modality, prep)
        vol, offsets = pad_to(vol, patch)
        if prepared is not None:
            prepared[key] = (vol, smap, offsets)
    if slices is not None:
        zs = [int(i) for i in slices]
        if any(not 0 <= i < a.shape[0] for i in zs):
            raise IndexError(f"slices {zs} outside a scan of {a.shape[0]} slices")
        vol = vol[zs]
    if isinstance(nets, torch.nn.Module):
        nets = [nets]
    z, (h, w) = (a.shape[0] if slices is None else len(vol)), smap.native
    (ph, pw), (top, left) = smap.planned, offsets
    probs: np.ndarray | None = None
    for net in nets:
        for z0, p in sliding_window_probs(
            net,
            vol,
            patch,
            device,
            overlap=overlap,
            precision=precision,
            batch_size=batch_size,
        ):
            p = smap.to_native(p[:, :, top : top + ph, left : left + pw]).numpy()
            if probs is None:
                probs = np.zeros((p.shape[0], z, h, w), np.float32)
            probs[:, z0 : z0 + p.shape[1]] += p
    assert probs is not None
    if len(nets) > 1:
        probs /= len(nets)
    # numpy's argmax over the class axis (torch's took 9x longer here: 41 ms against 4.6 ms for
    # a 4-class 12 x 154 x 224 volume), a few slices at a time: argmax returns int64, which for
    # a 512 x 512 x 300 CT would be another 600 MB at once.
    labels = np.empty(probs.shape[1:], np.uint8)
    for z0 in range(0, z, 16):
        labels[z0 : z0 + 16] = probs[:, z0 : z0 + 16].argmax(0)
    # imported here, when needed: it loads scipy
    from napari_mtssl.training.prediction import postprocess as pp

    if slices is not None:  # slices that need not touch: each on its own
        return np.stack([pp.apply(lab[None], postprocess)[0] for lab in labels]), probs
    return pp.apply(labels, postprocess), probs


def ensemble_mean(probs: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the teachers' class probabilities, each ``(C, z, y, x)``."""
    return np.mean(np.stack(probs), axis=0).astype(np.float32)


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-8, 1.0))).sum(0)


def disagreement(probs: Sequence[np.ndarray]) -> np.ndarray:
    """Per-voxel mutual information ``H(mean) - mean(H)`` (nats, >= 0), shape ``(z, y, x)``."""
    stack = np.stack(probs)  # (T, C, z, y, x)
    mi = _entropy(stack.mean(0)) - np.mean([_entropy(p) for p in stack], axis=0)
    return np.clip(mi, 0, None).astype(np.float32)


def slice_scores(dis: np.ndarray) -> np.ndarray:
    """Per-slice disagreement ``(z,)``: the mean over the slice's voxels."""
    return dis.reshape(dis.shape[0], -1).mean(1).astype(np.float32)
