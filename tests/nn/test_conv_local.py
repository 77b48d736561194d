"""Locally connected layers ConvLocal1d/2d/3d (issue 13, missing item 4): filters and biases unshared across
output positions.

References: the finite module against an explicit loop over output positions (each a dense layer on its patch;
float32 round-off, 1e-5); neural-tangents 0.6.5's ConvLocal (float64 values in tests/nt_reference, both
parameterizations, pooled so that the vanishing covariances between positions matter; rtol 1e-8, see the test);
Monte Carlo over the finite 3-d network with the tolerance of tests/nn/test_layer_kernels_mc.py (4 standard
errors + 3/width).
"""

import pytest
import torch
from torch.nn import functional as F

import ntkit as nk
from kernel_mc import assert_network_matches
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N
from ntkit.errors import ShapeError

SP = {"parameterization": "standard"}


@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_finite_layer_is_a_dense_layer_per_position(param):
    layer = N.ConvLocal2d(2, 3, (3, 2), (4, 5), stride=(1, 2), W_std=1.3, b_std=0.4, parameterization=param)
    x = torch.randn(2, 2, 4, 5)
    y = layer(x)
    padded = F.pad(x, (0, 1, 1, 1))  # "same" with stride (1, 2): (1, 1) rows, (0, 1) columns
    assert y.shape == (2, 3, 4, 3)
    scale = 1.3 / 12**0.5 if param == "ntk" else 1.0  # fan_in = 2 channels x 3 x 2
    bias_scale = 0.4 if param == "ntk" else 1.0
    for p in range(4):
        for q in range(3):
            patch = padded[:, :, p : p + 3, 2 * q : 2 * q + 2].reshape(2, -1)
            w = layer.weight[..., p, q].reshape(3, -1)
            expected = scale * patch @ w.T + bias_scale * layer.bias[:, p, q]
            torch.testing.assert_close(y[:, :, p, q], expected, rtol=1e-5, atol=1e-5)


NT_NETS = {
    "conv_local_pooled": lambda: N.Sequential(
        N.ConvLocal2d(2, 4, (3, 2), (4, 5), W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.Conv2d(4, 4, 2, b_std=0.1),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
    "conv_local_standard_1d": lambda: N.Sequential(
        N.ConvLocal1d(2, 4, 3, 7, stride=2, padding="valid", W_std=1.3, b_std=0.2, **SP),
        N.Erf(),
        N.ConvLocal1d(4, 4, 2, 3, b_std=0.1, **SP),
        N.ReLU(),
        N.Flatten(),
        N.Linear(12, 1, b_std=None, **SP),
    ),
}


@pytest.mark.parametrize("name", NT_NETS)
def test_matches_neural_tangents(name):
    # rtol 1e-8, not round-off: on the batch diagonal (ρ = 1 after ReLU) neural-tangents' arc-cosine loses
    # √eps ≈ 1e-8 (ntkit computes ρ = 1 exactly there); off the diagonal the two agree to 1e-15.
    assert_matches_neural_tangents(name, NT_NETS[name](), rtol=1e-8)


WIDTH = 64


def local_3d(width, out):
    return N.Sequential(
        N.ConvLocal3d(2, width, 2, (3, 2, 3), W_std=1.4, b_std=0.3),
        N.ReLU(),
        N.SumPool3d(2, 1, "same"),
        N.GlobalAvgPool(),
        N.Linear(width, out),
    )


def test_matches_monte_carlo():
    x = torch.randn(3, 2, 3, 2, 3, dtype=torch.float64)
    assert_network_matches(lambda out: local_3d(WIDTH, out), x, WIDTH)


def test_input_size_is_checked():
    layer = N.ConvLocal2d(2, 3, 3, (4, 4))
    with pytest.raises(ShapeError, match="spatial size"):
        layer(torch.randn(1, 2, 5, 5))
    with pytest.raises(ShapeError, match="spatial size"):
        nk.kernel(N.Sequential(layer, N.Flatten()), torch.randn(2, 2, 5, 5))
