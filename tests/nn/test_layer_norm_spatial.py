"""LayerNorm over channels and spatial axes (issue 13, missing item 3): ``N.LayerNorm((C, H, W))`` and the plain
``nn.LayerNorm([C, H, W])`` / ``nn.GroupNorm(1, C)`` through the registry.

References: neural-tangents 0.6.5's float64 values (its LayerNorm(axis=...) over channels and spatial axes, on
Gaussian inputs) to round-off (rtol 1e-10); Monte Carlo over the finite networks (after a nonlinearity, where
neural-tangents refuses, and with the affine parameters) with the tolerance of tests/nn/test_layer_kernels_mc.py:
4 standard errors + 3/width of the kernel's scale; and the plain torch modules against the ntkit layer they
equal, exactly (the same formula, so 1e-12).
"""

import pytest
import torch
from torch import nn

import ntkit as nk
from kernel_mc import assert_network_matches
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N
from ntkit.errors import ShapeError, UnsupportedError


def test_matches_neural_tangents():
    net = N.Sequential(
        N.Conv2d(2, 4, 3, W_std=1.3, b_std=0.2),
        N.LayerNorm((4, 4, 5), eps=1e-5),
        N.ReLU(),
        N.Conv2d(4, 4, 2, b_std=None),
        N.LayerNorm((4, 5), eps=1e-3),  # channels and the last spatial axis
        N.Erf(),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    )
    assert_matches_neural_tangents("layer_norm_spatial", net)


WIDTH = 64


def after_relu(width, out, affine=True):
    # LayerNorm over (C, H, W) after a nonlinearity (nonzero channel means), with per-position γ, β.
    return N.Sequential(
        N.Conv2d(2, width, 3, W_std=1.4, b_std=0.3),
        N.ReLU(),
        N.LayerNorm((width, 3, 4), elementwise_affine=affine),
        N.Conv2d(width, width, 2, W_std=1.4, b_std=0.3),
        N.ReLU(),
        N.LayerNorm((width, 4), elementwise_affine=affine),
        N.AvgPool2d(2, 1),
        N.Flatten(),
        N.Linear(width * 2 * 3, out),
    )


@pytest.mark.parametrize("affine", [False, True])
def test_matches_monte_carlo(affine):
    x = torch.randn(3, 2, 3, 4, dtype=torch.float64)
    x[1] = 0.6 * x[0] + 0.3 * x[1]
    assert_network_matches(lambda out: after_relu(WIDTH, out, affine), x, WIDTH)


@pytest.mark.parametrize("affine", [False, True])
def test_torch_modules_equal_the_ntkit_layer(affine):
    x1, x2 = torch.randn(3, 2, 3, 4, dtype=torch.float64), torch.randn(2, 2, 3, 4, dtype=torch.float64)
    conv = {"W_std": 1.2, "b_std": 0.1, "parameterization": "standard"}

    def net(norm):
        torch_conv = nk.declare_init(nn.Conv2d(2, 5, 3, padding="same"), W_std=1.2, b_std=0.1)
        return nn.Sequential(torch_conv, nn.ReLU(), norm, nn.Conv2d(5, 5, 3, padding="same"), nn.Flatten())

    def ntkit_net(norm):
        return N.Sequential(
            N.Conv2d(2, 5, 3, **conv),
            N.ReLU(),
            norm,
            N.Conv2d(5, 5, 3, W_std=(1 / 3) ** 0.5, b_std=(1 / 135) ** 0.5, parameterization="standard"),
            N.Flatten(),
        )

    ours = nk.kernel(ntkit_net(N.LayerNorm((5, 3, 4), elementwise_affine=affine)), x1, x2)
    layer_norm = nk.kernel(net(nn.LayerNorm([5, 3, 4], elementwise_affine=affine)), x1, x2)
    for field in ("nngp", "ntk"):
        torch.testing.assert_close(getattr(layer_norm, field), getattr(ours, field), rtol=1e-12, atol=1e-12)
    # GroupNorm(1, C): the same normalisation, with γ, β per channel only (shared by all positions).
    group_norm = nk.kernel(net(nn.GroupNorm(1, 5, affine=affine)), x1, x2)
    torch.testing.assert_close(group_norm.nngp, ours.nngp, rtol=1e-12, atol=1e-12)
    if not affine:
        torch.testing.assert_close(group_norm.ntk, ours.ntk, rtol=1e-12, atol=1e-12)


def test_finite_layer_normalises_like_torch():
    x = torch.randn(4, 3, 5, 6)
    ours = N.LayerNorm((3, 5, 6), elementwise_affine=True)
    torch.testing.assert_close(ours(x), torch.nn.functional.layer_norm(x, (3, 5, 6), eps=1e-5))
    torch.testing.assert_close(
        N.LayerNorm((3, 6))(x), torch.nn.functional.layer_norm(x.transpose(1, 2), (3, 6)).transpose(1, 2)
    )


def test_errors_name_the_shape():
    x = torch.randn(2, 2, 3, 4)
    with pytest.raises(ShapeError, match="normalized_shape"):
        nk.kernel(N.Sequential(N.Conv2d(2, 4, 3), N.LayerNorm((4, 3)), N.Flatten()), x)
    with pytest.raises(UnsupportedError, match="groups"):
        nk.kernel(nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.Flatten()), x)
