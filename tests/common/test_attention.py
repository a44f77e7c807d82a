"""Tests for common.attention: CBAM and its channel and spatial attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.attention import CBAM, DSAM, ChannelAttention, IDConv, SpatialAttention

SHAPE_CASES = [
    # channels 16 (hidden layer 1), square 8x8, batch 2
    (16, 16, (2, 16, 8, 8)),
    # channels 64 (hidden layer 4), square 8x8, batch 2
    (64, 16, (2, 64, 8, 8)),
    # channels 16, non-square 6x10, batch 1
    (16, 16, (1, 16, 6, 10)),
    # channels 64, non-square 6x10, batch 3
    (64, 16, (3, 64, 6, 10)),
]
SHAPE_IDS = ["c16-8x8", "c64-8x8", "c16-6x10", "c64-6x10"]

MODULE_FACTORIES = [
    lambda channels, reduction: ChannelAttention(channels, reduction),
    lambda channels, reduction: SpatialAttention(7),
    lambda channels, reduction: CBAM(channels, reduction, spatial_kernel_size=7),
]
MODULE_IDS = ["channel", "spatial", "cbam"]

BAD_ARG_CASES = [
    # channel count must be positive
    (lambda: ChannelAttention(0), "channels"),
    # reduction ratio must be positive
    (lambda: ChannelAttention(16, reduction=0), "reduction"),
    # even kernels cannot keep the size with symmetric padding
    (lambda: SpatialAttention(kernel_size=4), "kernel_size"),
    # negative kernel size
    (lambda: SpatialAttention(kernel_size=-3), "kernel_size"),
    # CBAM checks each of its arguments
    (lambda: CBAM(0), "channels"),
    (lambda: CBAM(16, reduction=-1), "reduction"),
    (lambda: CBAM(16, spatial_kernel_size=6), "spatial_kernel_size"),
    # non-integer channel count
    (lambda: CBAM(16.0), "channels"),
    # IDConv mixes at least two candidate kernels
    (lambda: IDConv(2, groups=1), "groups"),
    (lambda: IDConv(2, kernel_size=2), "kernel_size"),
    # DSAM checks its widths and kernel
    (lambda: DSAM(0, 4), "c_in"),
    (lambda: DSAM(4, 8, hidden_channels=0), "hidden_channels"),
    (lambda: DSAM(4, 8, kernel_size=4), "kernel_size"),
]
BAD_ARG_IDS = [
    "channel-channels0",
    "channel-reduction0",
    "spatial-even",
    "spatial-negative",
    "cbam-channels0",
    "cbam-reduction-1",
    "cbam-kernel-even",
    "cbam-channels-float",
    "idconv-groups1",
    "idconv-kernel-even",
    "dsam-cin0",
    "dsam-hidden0",
    "dsam-kernel-even",
]


@pytest.mark.parametrize("make", MODULE_FACTORIES, ids=MODULE_IDS)
@pytest.mark.parametrize(("channels", "reduction", "shape"), SHAPE_CASES, ids=SHAPE_IDS)
def test_output_shape_equals_input(make, channels: int, reduction: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    module = make(channels, reduction).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        y = module(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("make", MODULE_FACTORIES, ids=MODULE_IDS)
@pytest.mark.parametrize(("channels", "reduction", "shape"), SHAPE_CASES[:2], ids=SHAPE_IDS[:2])
def test_gradients_reach_input_and_parameters(make, channels: int, reduction: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    module = make(channels, reduction)
    x = torch.randn(shape, requires_grad=True)
    module(x).pow(2).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    for name, param in module.named_parameters():
        assert param.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(param.grad).all(), f"non-finite gradient for {name}"
        assert param.grad.abs().sum() > 0, f"zero gradient for {name}"


def test_channel_attention_uses_one_shared_mlp() -> None:
    attn = ChannelAttention(64, reduction=16)
    weights = list(attn.parameters())
    # W0 (C -> C/r) and W1 (C/r -> C), shared by the average- and max-pooled descriptors
    assert [tuple(w.shape) for w in weights] == [(4, 64, 1, 1), (64, 4, 1, 1)]
    convs = [m for m in attn.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2


def test_channel_attention_hidden_layer_is_at_least_one() -> None:
    attn = ChannelAttention(4, reduction=16)
    assert attn.mlp[0].out_channels == 1


def test_channel_attention_known_value() -> None:
    # identity MLP (reduction 1, W0 = W1 = I): Mc = sigmoid(relu(avg) + relu(max)) per channel
    attn = ChannelAttention(3, reduction=1)
    with torch.no_grad():
        attn.mlp[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        attn.mlp[2].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    x = torch.tensor([[1.0, 3.0], [-2.0, -4.0], [0.5, -0.5]]).view(1, 3, 1, 2)
    avg = torch.tensor([2.0, -3.0, 0.0])
    mx = torch.tensor([3.0, -2.0, 0.5])
    expected_map = torch.sigmoid(avg.clamp(min=0) + mx.clamp(min=0)).view(1, 3, 1, 1)
    torch.testing.assert_close(attn.attention_map(x), expected_map)
    torch.testing.assert_close(attn(x), x * expected_map)


def test_spatial_attention_known_value() -> None:
    # a centred delta on the mean plane (input channel 0) and zeros elsewhere: Ms = sigmoid(mean over channels)
    attn = SpatialAttention(kernel_size=3)
    with torch.no_grad():
        attn.conv.weight.zero_()
        attn.conv.weight[0, 0, 1, 1] = 1.0
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, 6)
    expected_map = torch.sigmoid(x.mean(dim=1, keepdim=True))
    torch.testing.assert_close(attn.attention_map(x), expected_map)
    torch.testing.assert_close(attn(x), x * expected_map)
    # the same with the delta on the max plane (input channel 1)
    with torch.no_grad():
        attn.conv.weight.zero_()
        attn.conv.weight[0, 1, 1, 1] = 1.0
    torch.testing.assert_close(attn.attention_map(x), torch.sigmoid(x.amax(dim=1, keepdim=True)))


def test_spatial_attention_zero_kernel_halves_input() -> None:
    attn = SpatialAttention()
    with torch.no_grad():
        attn.conv.weight.zero_()
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(attn(x), 0.5 * x)


def test_cbam_is_channel_then_spatial() -> None:
    torch.manual_seed(0)
    cbam = CBAM(32, reduction=8, spatial_kernel_size=5)
    x = torch.randn(2, 32, 6, 10)
    refined = cbam.channel_attention(x)
    expected = refined * cbam.spatial_attention.attention_map(refined)
    torch.testing.assert_close(cbam(x), expected)


def test_cbam_maps_zero_to_zero() -> None:
    # flow subnets rely on this: a zero-initialised conv followed by CBAM outputs zero
    torch.manual_seed(0)
    cbam = CBAM(16, reduction=4)
    x = torch.zeros(2, 16, 5, 7)
    assert torch.equal(cbam(x), x)


@pytest.mark.parametrize(("make", "arg_name"), BAD_ARG_CASES, ids=BAD_ARG_IDS)
def test_bad_arguments_raise(make, arg_name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{arg_name} must"):
        make()


IDCONV_SHAPES = [
    # the DSAM case: 2 pooled channels, square map, batch 2
    (2, 3, 4, (2, 2, 8, 8)),
    # more channels, 5x5 kernel, non-square map, batch 3
    (6, 5, 3, (3, 6, 7, 11)),
    # map smaller than the kernel grid: adaptive pooling still gives K x K
    (2, 3, 2, (1, 2, 2, 3)),
]


@pytest.mark.parametrize(("channels", "kernel", "groups", "shape"), IDCONV_SHAPES, ids=["dsam", "c6-k5", "tiny-map"])
def test_idconv_shapes(channels: int, kernel: int, groups: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    conv = IDConv(channels, kernel_size=kernel, groups=groups)
    x = torch.randn(*shape)
    assert conv(x).shape == x.shape
    assert conv.kernels(x).shape == (shape[0], channels, kernel, kernel)


def test_idconv_kernel_depends_on_the_input() -> None:
    torch.manual_seed(0)
    conv = IDConv(2, kernel_size=3, groups=4)
    a, b = torch.randn(1, 2, 9, 9), 3.0 * torch.randn(1, 2, 9, 9) + 1.0
    kernels = conv.kernels(torch.cat([a, b]))
    assert not torch.allclose(kernels[0], kernels[1])
    # each sample is convolved with its own kernel: batching does not mix samples
    assert torch.allclose(conv(torch.cat([a, b]))[1:], conv(b), atol=1e-6)
    # the kernel is a convex combination of the G learnable kernels (softmax over G)
    low, high = conv.weight.min(dim=0).values, conv.weight.max(dim=0).values
    flat = kernels.flatten(2)
    assert ((flat >= low - 1e-7) & (flat <= high + 1e-7)).all()


def test_idconv_applies_a_depthwise_convolution_with_its_kernels() -> None:
    torch.manual_seed(1)
    conv = IDConv(2, kernel_size=3, groups=3)
    x = torch.randn(2, 2, 6, 5)
    kernels = conv.kernels(x)
    for i in range(2):
        expected = torch.nn.functional.conv2d(x[i : i + 1], kernels[i].unsqueeze(1), padding=1, groups=2)
        assert torch.allclose(conv(x)[i : i + 1], expected, atol=1e-6)


def test_dsam_shapes_score_map_and_zero_start() -> None:
    torch.manual_seed(0)
    dsam = DSAM(8, 16, hidden_channels=12)
    y = torch.randn(3, 8, 10, 6)
    out = dsam(y)
    assert out.shape == (3, 16, 10, 6)
    # zero-initialised last convolution: a coupling block built on DSAM starts as the identity
    assert torch.equal(out, torch.zeros_like(out))
    score = dsam.score_map(y)
    assert score.shape == (3, 1, 10, 6)
    assert ((score > 0) & (score < 1)).all()


def test_dsam_gradients_reach_the_dynamic_kernel() -> None:
    torch.manual_seed(0)
    dsam = DSAM(4, 8)
    torch.nn.init.normal_(dsam.head[-1].weight, std=0.1)
    dsam(torch.randn(2, 4, 6, 6)).square().sum().backward()
    assert dsam.idconv.weight.grad is not None and dsam.idconv.weight.grad.abs().sum() > 0
    assert dsam.idconv.proj[0].weight.grad.abs().sum() > 0
