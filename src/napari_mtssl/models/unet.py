"""The 2D U-Net every model in napari-mtssl uses, built from MONAI's BasicUNet blocks.

It is MONAI's ``BasicUNet`` (five encoder levels, four up-concatenation levels by default; the
planner may choose another depth, see ``training/planning/shape.py``) laid out so that the parts auxiliary
tasks share are addressable by name:

* ``encoder.*``: ``TwoConv`` at full resolution, then ``depth`` ``Down`` blocks (max-pool + two
  convs). Encoder-level tasks (instance discrimination, Rubik's cube) share only these.
* ``decoder.*``: ``depth`` ``UpCat`` blocks. Dense tasks (distance maps, slice prediction, inpainting)
  share encoder and decoder and put their own 1x1 head on the decoder output.
* ``seg_head``: the 1x1 segmentation head, never shared.

We do not subclass ``BasicUNet`` because its attributes (``conv_0``, ``down_1`` ...) would give
parameter names that do not say which part is shared, and its ``forward`` hides the encoder
features that the encoder-level tasks need.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from math import gcd, prod

import torch
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import Tensor, nn

__all__ = [
    "UNet2D",
    "build_unet",
    "unet_features",
    "count_parameters",
    "forward_flops",
    "NORMS",
]

NORMS = ("instance", "batch", "group")
_ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})


def _norm_arg(norm: str, features: Sequence[int]) -> tuple:
    """MONAI norm argument. Instance norm (default) works with batch size 1; batch norm needs
    batches of 2+ in training; group norm uses the largest group count <= 8 dividing every width."""
    if norm == "instance":
        return ("instance", {"affine": True})
    if norm == "batch":
        return ("batch", {})
    if norm == "group":
        g = 0
        for f in features:
            g = gcd(g, int(f))
        groups = max(d for d in range(1, 9) if g % d == 0)
        return ("group", {"num_groups": groups})
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")


class UNet2D(nn.Module):
    """2D U-Net: ``(B, in_channels, H, W)`` -> segmentation logits ``(B, out_channels, H, W)``.

    ``features`` are the widths of the ``depth + 1`` encoder levels and of the decoder output
    (MONAI's BasicUNet: six numbers, depth 4). H and W must be divisible by ``2 ** depth``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        dropout: float = 0.0,
        norm: str = "instance",
    ):
        super().__init__()
        fea = [int(f) for f in features]
        if not 4 <= len(fea) <= 9 or min(fea) < 1:
            raise ValueError(
                f"features must be 4 to 9 positive widths (depth 2 to 7); got {tuple(features)}"
            )
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"in_channels and out_channels must be >= 1; got {in_channels}, {out_channels}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        norm_arg = _norm_arg(norm, fea)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.features = tuple(fea)
        self.norm = norm
        self.dropout = float(dropout)

        args = (_ACT, norm_arg, True, dropout)  # act, norm, bias, dropout
        enc, out = fea[:-1], fea[-1]
        self.depth = len(enc) - 1
        self.encoder = nn.ModuleList(
            [TwoConv(2, in_channels, enc[0], *args)]
            + [Down(2, enc[i], enc[i + 1], *args) for i in range(self.depth)]
        )
        # Deepest first: decoder[0] takes the bottleneck and the skip of the level above it.
        ups = []
        for i in range(self.depth, 0, -1):
            last = i == 1
            ups.append(
                UpCat(
                    2,
                    enc[i],
                    enc[i - 1],
                    out if last else enc[i - 1],
                    *args,
                    upsample="deconv",
                    halves=not last,
                )
            )
        self.decoder = nn.ModuleList(ups)
        self.seg_head = nn.Conv2d(out, out_channels, kernel_size=1)
        self.encoder_channels: list[int] = enc
        self.decoder_channels: int = out

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this (one halving per encoder level)."""
        return 2**self.depth

    def encode(self, x: Tensor) -> list[Tensor]:
        """``depth + 1`` feature maps, full resolution first; the last is the bottleneck."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        m = self.multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"H and W must be divisible by {m}; got {tuple(x.shape[-2:])}")
        feats = []
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        return feats

    def decode(self, feats: list[Tensor]) -> Tensor:
        """Decoder output ``(B, decoder_channels, H, W)`` from the ``encode`` maps."""
        if len(feats) != self.depth + 1:
            raise ValueError(
                f"decode expects the {self.depth + 1} maps of encode(); got {len(feats)}"
            )
        x = feats[-1]
        for block, skip in zip(self.decoder, reversed(feats[:-1])):
            x = block(x, skip)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.seg_head(self.decode(self.encode(x)))

    # -- sharing weights between the two stages ---------------------------------------------

    @staticmethod
    def shared_prefixes(level: str) -> tuple[str, ...]:
        """Parameter-name prefixes a task of this level shares: see METHOD.md."""
        if level == "encoder":
            return ("encoder.",)
        if level == "dense":
            return ("encoder.", "decoder.")
        raise ValueError(f"level must be 'encoder' or 'dense'; got {level!r}")

    def shared_state_dict(self, level: str) -> dict[str, Tensor]:
        """The weights (and norm buffers) a task of ``level`` shares, detached copies.

        ``"encoder"`` -> ``encoder.*``; ``"dense"`` -> ``encoder.*`` and ``decoder.*``. Load the
        result into a fresh network with ``load_state_dict(sd, strict=False)`` or
        :meth:`load_shared`.
        """
        prefixes = self.shared_prefixes(level)
        return {
            k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith(prefixes)
        }

    def load_shared(self, state: dict[str, Tensor], level: str) -> None:
        """Load exactly the shared part of ``level`` from ``state``; anything missing is an error."""
        expected = set(self.shared_state_dict(level))
        missing = sorted(expected - set(state))
        if missing:
            raise ValueError(f"shared weights for level {level!r} lack {missing[:5]}...")
        extra = sorted(k for k in state if k not in expected)
        if extra:
            raise ValueError(f"weights outside the shared {level!r} part: {extra[:5]}...")
        self.load_state_dict(state, strict=False)

    def reset_parameters_except(self, prefixes: Iterable[str]) -> list[str]:
        """Re-initialise every layer whose name does not start with one of ``prefixes``.

        Used by pre-train/fine-tune: keep ``encoder.`` (or ``encoder.``, ``decoder.``) and give
        the rest fresh weights. Returns the names of the layers re-initialised.
        """
        keep = tuple(p if p.endswith(".") else p + "." for p in prefixes)
        done = []
        for name, module in self.named_modules():
            if not name or not hasattr(module, "reset_parameters"):
                continue
            if (name + ".").startswith(keep):
                continue
            module.reset_parameters()
            done.append(name)
        return done

    def reset_seg_head(self) -> None:
        """Fresh segmentation head (the task head is dropped when fine-tuning)."""
        self.seg_head.reset_parameters()


def unet_features(width: int, depth: int = 4, max_width: int = 512) -> tuple[int, ...]:
    """Level widths ``(w, w, 2w, 4w, ..., w)``: MONAI's BasicUNet layout (``depth=4``,
    ``width=32`` is its default), doubling per level below the first, capped at ``max_width``
    as nnU-Net caps its 2D networks."""
    if width < 1:
        raise ValueError(f"width must be >= 1; got {width}")
    if not 2 <= depth <= 7:
        raise ValueError(f"depth must be in 2..7; got {depth}")
    w = int(width)
    enc = [w] + [min(max_width, w * 2 ** max(0, i - 1)) for i in range(1, depth + 1)]
    return (*enc, w)


def build_unet(
    in_channels: int = 1,
    out_channels: int = 2,
    width: int = 32,
    dropout: float = 0.0,
    norm: str = "instance",
    depth: int = 4,
) -> UNet2D:
    """U-Net with widths :func:`unet_features` (``depth=4``: ``(w, w, 2w, 4w, 8w, w)``)."""
    return UNet2D(in_channels, out_channels, unet_features(width, depth), dropout, norm)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (for logs and the UI)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def forward_flops(net: nn.Module, shape: Sequence[int]) -> float:
    """FLOPs of one forward pass of ``net`` on an input of ``shape``: two per multiply-add of
    its convolutions, transposed convolutions and linear layers (what torch's
    ``FlopCounterMode`` counts; norms and activations are not counted), from each layer's
    weight and its input or output size, by hooks on one forward pass of zeros.

    Cheap where the input is small: a U-Net's FLOPs grow with the image area (every layer is
    convolutional, padded to keep its size), so it may be counted at a few pixels a side at its
    bottleneck and scaled. torch's own counter, a dispatch mode, first costs about a second per
    process. The network is run in eval mode (its norms' statistics are left as they were)."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        nonlocal total
        weight = module.weight.shape
        if isinstance(module, nn.Linear):
            total += 2 * prod(inputs[0].shape[:-1]) * prod(weight)
            return
        # per output pixel for a convolution, per input pixel for a transposed one
        spatial = (
            inputs[0].shape[2:] if isinstance(module, nn.ConvTranspose2d) else output.shape[2:]
        )
        total += 2 * inputs[0].shape[0] * prod(weight) * prod(spatial)

    layers = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, layers)]
    training = net.training
    try:
        param = next(net.parameters(), None)
        x = torch.zeros(tuple(shape), device=param.device if param is not None else None)
        net.eval()
        with torch.no_grad():
            net(x)
    finally:
        net.train(training)
        for hook in hooks:
            hook.remove()
    return float(total)
