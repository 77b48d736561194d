"""Resize (interpolation of the spatial axes, as torch.nn.Upsample; neural-tangents' ImageResize) and
nn.Upsample through the registry (issue 13, item 6).

References: exact, a resize is a fixed linear map A per channel, so the kernel of its outputs is A K Aᵀ, which
for the input layer's kernel is the input kernel of the finite layer's own outputs (float64 round-off, 1e-12);
neural-tangents 0.6.5's ImageResize ("linear" and "nearest" = torch's "nearest-exact"; float64 values in
tests/nt_reference, rtol 1e-10); Monte Carlo over a finite network with the tolerance of
tests/nn/test_layer_kernels_mc.py (4 standard errors + 3/width).
"""

import pytest
import torch
from torch import nn

import ntkit as nk
from kernel_mc import assert_network_matches
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N
from ntkit.errors import InvalidArgumentError, UnsupportedError
from ntkit.infinite.kernel_type import Kernel
from ntkit.infinite.registry import apply_layer

LAYERS = {
    "linear_up": (N.Resize((6, 8), mode="linear"), (2, 3, 4)),
    "linear_down_align": (N.Resize((2, 3), mode="linear", align_corners=True), (2, 3, 4)),
    "nearest_factor": (N.Resize(scale_factor=(2.0, 1.5), mode="nearest"), (2, 3, 4)),
    "nearest_exact_1d": (N.Resize(5, mode="nearest-exact"), (2, 3)),
    "trilinear": (N.Resize(scale_factor=2.0, mode="linear"), (2, 2, 3, 2)),
    "torch_bilinear": (nn.Upsample(size=(5, 7), mode="bilinear"), (2, 3, 4)),
    "torch_nearest": (nn.Upsample(scale_factor=2), (2, 3, 4)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_exact_against_the_finite_layer(name):
    layer, shape = LAYERS[name]
    x1, x2 = torch.randn(3, *shape, dtype=torch.float64), torch.randn(2, *shape, dtype=torch.float64)
    k = apply_layer(layer, Kernel.from_inputs(x1, x2, diagonal_spatial=False))
    ref = Kernel.from_inputs(layer(x1), layer(x2), diagonal_spatial=False)
    for field in ("nngp", "cov", "mean"):
        torch.testing.assert_close(getattr(k, field), getattr(ref, field), rtol=1e-12, atol=1e-12)


def test_matches_neural_tangents():
    net = N.Sequential(
        N.Resize((6, 8), mode="linear"),
        N.Conv2d(2, 4, 3, W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.Resize((12, 12), mode="nearest-exact"),
        N.Conv2d(4, 4, 3, b_std=None),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    )
    assert_matches_neural_tangents("image_resize_linear", net)


WIDTH = 64


def resized(width, out):
    return N.Sequential(
        N.Conv2d(2, width, 3, W_std=1.4, b_std=0.3),
        N.ReLU(),
        N.Resize((5, 3), mode="linear"),
        N.Conv2d(width, width, 2, W_std=1.4, b_std=0.3),
        N.Erf(),
        N.Flatten(),
        N.Linear(width * 15, out),
    )


def test_matches_monte_carlo():
    x = torch.randn(3, 2, 3, 4, dtype=torch.float64)
    assert_network_matches(lambda out: resized(WIDTH, out), x, WIDTH)


def test_errors():
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        N.Resize()
    with pytest.raises(InvalidArgumentError, match="mode"):
        N.Resize(4, mode="bicubic")
    with pytest.raises(UnsupportedError, match="bicubic"):
        nk.kernel(nn.Sequential(nn.Upsample(scale_factor=2, mode="bicubic"), nn.Flatten()), torch.randn(2, 1, 3, 3))
