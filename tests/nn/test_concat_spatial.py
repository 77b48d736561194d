"""Concatenation along spatial axes, ``Parallel(..., fan_in="concat", dim=2 or 3)`` (issue 13, item 5).

References: neural-tangents 0.6.5's FanInConcat along the height and the width (float64 values in
tests/nt_reference; rtol 1e-8: neural-tangents' arc-cosine loses √eps on the batch diagonal, see
tests/nn/test_conv_local.py); Monte Carlo over the finite network with the tolerance of
tests/nn/test_layer_kernels_mc.py (4 standard errors + 3/width).
"""

import pytest
import torch

import ntkit as nk
from kernel_mc import assert_network_matches
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N
from ntkit.errors import InvalidArgumentError, UnsupportedError

NT_NETS = {
    "concat_spatial_pooled": lambda: N.Sequential(
        N.Parallel(
            N.Conv2d(2, 4, 3, W_std=1.3, b_std=0.2),
            N.Sequential(N.Conv2d(2, 4, 2, b_std=0.1), N.ReLU(), N.Conv2d(4, 4, (2, 1), padding="valid", b_std=None)),
            fan_in="concat",
            dim=2,
        ),
        N.ReLU(),
        N.Conv2d(4, 4, (3, 2), b_std=None),
        N.Erf(),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
    "concat_spatial_flatten": lambda: N.Sequential(
        N.Parallel(
            N.Conv2d(2, 4, 3, W_std=1.3, b_std=None),
            N.Conv2d(2, 4, (1, 2), padding="valid", b_std=0.3),
            fan_in="concat",
            dim=3,
        ),
        N.ReLU(),
        N.Flatten(),
        N.Linear(84, 1, b_std=None),
    ),
}


@pytest.mark.parametrize("name", NT_NETS)
def test_matches_neural_tangents(name):
    assert_matches_neural_tangents(name, NT_NETS[name](), rtol=1e-8)


WIDTH = 64


def concatenated(width, out):
    return N.Sequential(
        N.Parallel(
            N.Conv2d(2, width, 3, W_std=1.4, b_std=0.3),
            N.Sequential(
                N.Conv2d(2, width, 2, W_std=1.4), N.ReLU(), N.AvgPool2d(2, 1, "same"), N.Conv2d(width, width, 1)
            ),
            fan_in="concat",
            dim=2,
        ),
        N.ReLU(),
        N.Conv2d(width, width, 2, W_std=1.4, b_std=0.3),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(width, out),
    )


def test_matches_monte_carlo():
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    assert_network_matches(lambda out: concatenated(WIDTH, out), x, WIDTH)


def test_correlated_branches_are_refused():
    x = torch.randn(2, 2, 3, 3)
    shared = N.Sequential(N.Conv2d(2, 4, 3), N.Parallel(N.Identity(), N.ReLU(), fan_in="concat", dim=2), N.Flatten())
    with pytest.raises(UnsupportedError, match="independent branches"):
        nk.kernel(shared, x)
    with pytest.raises(InvalidArgumentError, match="dim"):
        N.Parallel(N.Identity(), fan_in="sum", dim=2)
