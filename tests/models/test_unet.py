"""The U-Net: shapes, named shared parts, re-initialisation."""

from __future__ import annotations

import pytest
import torch

from napari_mtssl.models import UNet2D, build_unet


@pytest.mark.parametrize("out_channels", [1, 2, 4])
def test_forward_shapes(out_channels: int) -> None:
    net = build_unet(out_channels=out_channels, width=4)
    y = net(torch.randn(2, 1, 32, 48))
    assert y.shape == (2, out_channels, 32, 48)


def test_encode_decode_shapes() -> None:
    net = build_unet(width=8)
    x = torch.randn(1, 1, 64, 32)
    feats = net.encode(x)
    assert len(feats) == 5
    assert net.encoder_channels == [8, 8, 16, 32, 64]
    for i, (f, c) in enumerate(zip(feats, net.encoder_channels)):
        assert f.shape == (1, c, 64 // 2**i, 32 // 2**i)
    dec = net.decode(feats)
    assert dec.shape == (1, net.decoder_channels, 64, 32)
    assert torch.allclose(net.seg_head(dec), net(x))


def test_bad_input_is_a_clear_error() -> None:
    net = build_unet(width=4)
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.randn(1, 1, 40, 32))
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="norm"):
        build_unet(norm="layer")


def test_shared_state_dict_levels() -> None:
    net = build_unet(width=4)
    enc = net.shared_state_dict("encoder")
    dense = net.shared_state_dict("dense")
    assert enc and all(k.startswith("encoder.") for k in enc)
    assert set(enc) < set(dense)
    assert any(k.startswith("decoder.") for k in dense)
    assert not any(k.startswith("seg_head") for k in dense)
    assert set(dense) | {"seg_head.weight", "seg_head.bias"} == set(net.state_dict())
    with pytest.raises(ValueError, match="level"):
        net.shared_state_dict("head")


def test_transfer_and_reset() -> None:
    torch.manual_seed(0)
    src, dst = build_unet(width=4), build_unet(width=4)
    dst.load_shared(src.shared_state_dict("encoder"), "encoder")
    for k, v in src.shared_state_dict("encoder").items():
        assert torch.equal(dst.state_dict()[k], v)
    # decoder and head were not transferred
    assert not torch.equal(dst.seg_head.weight, src.seg_head.weight)

    before = {k: v.clone() for k, v in dst.state_dict().items()}
    reset = dst.reset_parameters_except(["encoder"])
    assert "seg_head" in reset and not any(n.startswith("encoder") for n in reset)
    after = dst.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("encoder."))
    assert not torch.equal(after["seg_head.weight"], before["seg_head.weight"])
    assert not torch.equal(
        after["decoder.0.upsample.deconv.weight"], before["decoder.0.upsample.deconv.weight"]
    )


def test_batch_norm_and_channels_last() -> None:
    torch.manual_seed(0)
    net = UNet2D(features=(4, 4, 8, 16, 32, 4), norm="batch").eval()
    x = torch.randn(2, 1, 32, 32)
    ref = net(x)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.to(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-5)
    assert build_unet(width=4, norm="group")(x).shape == (2, 2, 32, 32)


def test_instance_norm_batch_of_one_trains() -> None:
    net = build_unet(width=4).train()
    loss = net(torch.randn(1, 1, 32, 32)).mean()
    loss.backward()
    assert net.encoder[0].conv_0.conv.weight.grad is not None


@pytest.mark.parametrize(
    ("width", "depth", "out_channels", "norm"),
    [(16, 4, 4, "instance"), (24, 3, 2, "batch"), (8, 5, 1, "group"), (32, 2, 3, "instance")],
)
def test_forward_flops_are_torchs_count(width, depth, out_channels, norm) -> None:
    """The planner's FLOPs (hooks on the layers) are what torch's own counter counts, at any
    size: every layer is convolutional, so they scale with the image area."""
    from torch.utils.flop_counter import FlopCounterMode

    from napari_mtssl.models import forward_flops

    net = build_unet(1, out_channels, width, norm=norm, depth=depth)
    side = 2 ** (depth + 1)
    x = torch.zeros(2, 1, 2 * side, side)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net.eval()(x)
    torchs = fc.get_total_flops()
    net.train()
    small = forward_flops(net, (1, 1, side, side))
    assert forward_flops(net, tuple(x.shape)) == torchs
    assert small * 4 == torchs  # twice the batch, twice the area
    assert net.training  # left as it was


def test_forward_flops_leaves_the_norms_statistics() -> None:
    from napari_mtssl.models import forward_flops

    net = build_unet(1, 2, 8, norm="batch", depth=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    forward_flops(net, (2, 1, 16, 16))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
