"""Pooling variants (average with "same"/circular padding and count_include_pad=False, sum, global sum), 1-d and
3-d pooling and convolutions, and dilated convolutions (issue 13, missing items 2 and 4).

Three independent references:

- exact: a pooling layer is a fixed linear map A per channel, so the kernel of its outputs is A K Aᵀ; for the
  input layer's kernel K = x·x'/C that is the input kernel of the finite layer's own outputs,
  ``Kernel.from_inputs(layer(x1), layer(x2))``. Agreement to float64 round-off (1e-12), for the PyTorch
  modules through the registry too;
- neural-tangents 0.6.5's float64 values (tests/nt_reference): the same recursions in another implementation,
  to round-off (rtol 1e-10);
- Monte Carlo over the finite networks (layers neural-tangents lacks: dilation), with the tolerance of
  tests/nn/test_layer_kernels_mc.py: 4 standard errors + 3/width of the kernel's scale.
"""

import pytest
import torch
from torch import nn

import ntkit as nk
from kernel_mc import assert_network_matches
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N
from ntkit.errors import UnsupportedError
from ntkit.infinite.kernel_type import Kernel
from ntkit.infinite.registry import apply_layer

LINEAR_LAYERS = {
    "avg_same_valid_count": (N.AvgPool2d(3, 2, "same", count_include_pad=False), (2, 5, 6)),
    "avg_same": (N.AvgPool2d((2, 3), (2, 1), "same"), (2, 5, 6)),
    "avg_int_padding_valid_count": (N.AvgPool2d(2, 1, 1, count_include_pad=False), (2, 5, 6)),
    "avg_circular": (N.AvgPool2d(3, 1, "same", padding_mode="circular"), (2, 5, 6)),
    "sum_valid": (N.SumPool2d((2, 3), (1, 2), "valid"), (2, 5, 6)),
    "sum_1d_same": (N.SumPool1d(3, 2, "same"), (2, 7)),
    "avg_1d_valid_count": (N.AvgPool1d(3, 2, 1, count_include_pad=False), (2, 7)),
    "avg_3d_valid_count": (N.AvgPool3d(2, 1, "same", count_include_pad=False), (2, 3, 4, 3)),
    "sum_3d_circular": (N.SumPool3d(2, (2, 1, 1), "same", padding_mode="circular"), (2, 3, 4, 3)),
    "global_sum": (N.GlobalSumPool(), (2, 3, 4)),
    "global_avg_3d": (N.GlobalAvgPool(), (2, 3, 4, 2)),
    "flatten_3d": (N.Flatten(), (2, 3, 4, 2)),
    "torch_avg_count_exclude": (nn.AvgPool2d(3, 2, 1, count_include_pad=False), (2, 5, 6)),
    "torch_avg_divisor_override": (nn.AvgPool2d(2, 1, 1, divisor_override=3), (2, 5, 6)),
    "torch_avg_3d": (nn.AvgPool3d((2, 2, 1), 1, (1, 0, 0)), (2, 3, 4, 3)),
    "torch_avg_1d": (nn.AvgPool1d(3, 2, 1, count_include_pad=False), (2, 7)),
    "torch_adaptive_3d": (nn.AdaptiveAvgPool3d(1), (2, 3, 4, 3)),
}


@pytest.mark.parametrize("name", LINEAR_LAYERS)
def test_fixed_linear_layers_are_exact(name):
    layer, shape = LINEAR_LAYERS[name]
    x1, x2 = torch.randn(3, *shape, dtype=torch.float64), torch.randn(2, *shape, dtype=torch.float64)
    k = apply_layer(layer, Kernel.from_inputs(x1, x2, diagonal_spatial=False))
    with torch.no_grad():
        ref = Kernel.from_inputs(layer(x1), layer(x2), diagonal_spatial=not k.full)
    assert k.spatial_shape == ref.spatial_shape
    for field in ("nngp", "cov", "mean"):
        torch.testing.assert_close(getattr(k, field), getattr(ref, field), rtol=1e-12, atol=1e-12)


CONV = {"W_std": 1.3, "b_std": 0.2}
NT_NETS = {
    "pool_avg_same_normalize_edges": lambda: N.Sequential(
        N.Conv2d(2, 4, 3, **CONV),
        N.ReLU(),
        N.AvgPool2d(3, 2, "same", count_include_pad=False),
        N.Flatten(),
        N.Linear(36, 1, b_std=None),
    ),
    "pool_avg_same": lambda: N.Sequential(
        N.Conv2d(2, 4, 3, **CONV),
        N.Erf(),
        N.AvgPool2d((2, 3), (2, 1), "same"),
        N.Flatten(),
        N.Linear(72, 1, b_std=None),
    ),
    "pool_avg_circular": lambda: N.Sequential(
        N.Conv2d(2, 4, 3, **CONV),
        N.ReLU(),
        N.AvgPool2d((3, 2), (1, 2), "same", padding_mode="circular"),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
    "pool_sum": lambda: N.Sequential(
        N.Conv2d(2, 4, 3, **CONV),
        N.ReLU(),
        N.SumPool2d(2, 1, "valid"),
        N.Conv2d(4, 4, 2, b_std=None),
        N.ReLU(),
        N.GlobalSumPool(),
        N.Linear(4, 1, b_std=None),
    ),
    "pool_1d": lambda: N.Sequential(
        N.Conv1d(2, 4, 3, **CONV),
        N.ReLU(),
        N.AvgPool1d(2, 2, "same", count_include_pad=False),
        N.Conv1d(4, 4, 2, padding="valid", b_std=None),
        N.Erf(),
        N.SumPool1d(3, 1, "same", padding_mode="circular"),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
    "pool_3d": lambda: N.Sequential(
        N.Conv3d(2, 4, (2, 3, 2), **CONV),
        N.ReLU(),
        N.AvgPool3d(2, (1, 2, 1), "same", count_include_pad=False),
        N.GlobalSumPool(),
        N.Linear(4, 1, b_std=None),
    ),
    "conv_3d_flatten": lambda: N.Sequential(
        N.Conv3d(2, 4, 2, stride=(1, 2, 1), **CONV), N.Erf(), N.Flatten(), N.Linear(72, 1, b_std=None)
    ),
}


@pytest.mark.parametrize("name", NT_NETS)
def test_matches_neural_tangents(name):
    assert_matches_neural_tangents(name, NT_NETS[name]())


WIDTH = 64


def dilated(width, out):
    # 7x7 -> dilation 2 "same" (padding 2 each side) -> dilation (1, 3) stride 2 "valid" -> 3x1 -> sum pool.
    return N.Sequential(
        N.Conv2d(2, width, 3, dilation=2, W_std=1.4, b_std=0.3),
        N.ReLU(),
        N.Conv2d(width, width, 2, stride=2, padding="valid", dilation=(1, 3), W_std=1.4, b_std=0.3),
        N.Erf(),
        N.SumPool2d((2, 1), 1, "same"),
        N.GlobalAvgPool(),
        N.Linear(width, out),
    )


def pooled_3d(width, out):
    return N.Sequential(
        N.Conv3d(2, width, 2, dilation=(1, 2, 1), W_std=1.4, b_std=0.3),
        N.ReLU(),
        N.AvgPool3d(2, 1, "same", count_include_pad=False, padding_mode="zeros"),
        N.Flatten(),
        N.Linear(width * 3 * 3 * 3, out),
    )


MC_NETS = {"dilated": (dilated, (3, 2, 7, 7)), "pooled_3d": (pooled_3d, (3, 2, 3, 3, 3))}


@pytest.mark.parametrize("name", MC_NETS)
def test_matches_monte_carlo(name):
    make, shape = MC_NETS[name]
    x = torch.randn(shape, dtype=torch.float64)
    assert_network_matches(lambda out: make(WIDTH, out), x, WIDTH)


def test_dilation_as_a_zero_filled_convolution():
    """A dilated 2x2 filter is a 3x3 filter whose middle row and column are zero: its finite output equals
    that (so the module is right), and the kernel map equals the mean over its four taps of the shifted input
    kernel (checked by building that mean from the undilated map on shifted inputs)."""
    conv = N.Conv2d(1, 1, 2, padding="valid", dilation=2, b_std=None)
    x = torch.randn(2, 1, 5, 5)
    full = torch.zeros(1, 1, 3, 3)
    full[..., ::2, ::2] = conv.weight.detach()
    expected = torch.nn.functional.conv2d(x, full) * (conv.W_std / 2.0)  # fan_in = 4
    torch.testing.assert_close(conv(x), expected)
    xs = x.double()
    k = conv.kernel_transform(Kernel.from_inputs(xs, diagonal_spatial=False))
    taps = [xs[..., i : i + 3, j : j + 3] for i in (0, 2) for j in (0, 2)]
    mean = sum(Kernel.from_inputs(t, diagonal_spatial=False).nngp for t in taps) / 4
    torch.testing.assert_close(k.nngp, mean, rtol=1e-12, atol=1e-12)


def test_pooling_errors():
    x = torch.randn(2, 2, 4, 4)
    with pytest.raises(UnsupportedError, match="1-d pooling"):
        nk.kernel(N.Sequential(N.Conv2d(2, 3, 3), N.AvgPool1d(2), N.Flatten()), x)
    with pytest.raises(UnsupportedError, match="circular padding"):
        nk.kernel(N.Sequential(N.Conv2d(2, 3, 3), N.AvgPool2d(11, 1, "same", padding_mode="circular"), N.Flatten()), x)
    with pytest.raises(UnsupportedError, match="ceil_mode"):
        nk.kernel(nn.Sequential(nn.Conv2d(2, 3, 3), nn.AvgPool2d(2, ceil_mode=True), nn.Flatten()), x)
