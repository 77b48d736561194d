"""Activations without a closed form in the full spatial layout (issue 13, bug 1): ``Elementwise`` (with or without
``nngp_fn``), chains such as ReLU -> Erf, and plain ``nn.Tanh``, followed by pooling or with
``diagonal_spatial=False``. They crashed in the dry run on the meta device (quadrature reads values), and a
float32 kernel could be refused where a covariance is tiny (the accuracy floor ignored float32's round-off).

References: the closed form of the same function (Erf for Elementwise(erf): quadrature against the formula,
rtol 1e-6: the quadrature's accuracy check guarantees 1e-4, its measured error at degree 32 is below 1e-8);
the diagonal layout, whose spatial diagonal the full layout must reproduce (same quadrature on the same
values: 1e-10); Monte Carlo over the finite networks with the tolerance of tests/nn/test_layer_kernels_mc.py
(4 standard errors + 3/width).
"""

import pytest
import torch
from torch import nn

import ntkit as nk
from kernel_mc import assert_matches, assert_network_matches, mc_nngp
from ntkit import nn as N
from ntkit.gaussian.quadrature import gaussian_cross


def pooled(act, width=8, out=1):
    return N.Sequential(
        N.Conv2d(2, width, 3, W_std=1.3, b_std=0.2),
        act,
        N.AvgPool2d(2, 1),
        N.Conv2d(width, width, 2, padding="valid"),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(width, out),
    )


def test_issue_examples_run_in_float32():
    x = torch.randn(4, 3, 5, 5)
    examples = [
        N.Sequential(N.Conv2d(3, 8, 3), N.Elementwise(torch.tanh), N.GlobalAvgPool()),
        N.Sequential(N.Conv2d(3, 8, 3), N.ReLU(), N.Erf(), N.GlobalAvgPool()),
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    ]
    for net in examples:
        k = nk.kernel(net, x)
        assert k.nngp.shape == (4, 4) and torch.isfinite(k.ntk).all()


@pytest.mark.parametrize("with_nngp_fn", [False, True])
def test_elementwise_equals_the_closed_form_under_pooling(with_nngp_fn):
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    erf = N.Erf()
    act = N.Elementwise(torch.erf, nngp_fn=erf.nngp) if with_nngp_fn else N.Elementwise(torch.erf)
    k = nk.kernel(pooled(act), x)
    ref = nk.kernel(pooled(erf), x)
    rtol = 1e-10 if with_nngp_fn else 1e-6  # nngp_fn: the same formula, Ṫ by autograd (Price's theorem)
    torch.testing.assert_close(k.nngp, ref.nngp, rtol=rtol, atol=1e-12)
    torch.testing.assert_close(k.ntk, ref.ntk, rtol=rtol, atol=1e-12)


def test_full_layout_without_pooling_matches_the_diagonal_layout():
    x1, x2 = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(2, 2, 4, 4, dtype=torch.float64)
    net = N.Sequential(N.Conv2d(2, 4, 3), N.Elementwise(torch.tanh), N.Conv2d(4, 4, 3), N.Sin(), N.Flatten())
    full = nk.kernel(net, x1, x2, diagonal_spatial=False)
    diagonal = nk.kernel(net, x1, x2, diagonal_spatial=True)
    for field in ("nngp", "ntk"):
        torch.testing.assert_close(getattr(full, field), getattr(diagonal, field), rtol=1e-10, atol=1e-12)


WIDTH = 64


def test_chain_under_pooling_matches_monte_carlo():
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    x[1] = 0.6 * x[0] + 0.3 * x[1]

    def net(out=1):
        return pooled(N.Sequential(N.ReLU(), N.Erf()), WIDTH, out)

    assert_network_matches(net, x, WIDTH)


def test_plain_torch_tanh_cnn_matches_monte_carlo():
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)

    def net(out=1):
        return nn.Sequential(
            nn.Conv2d(2, WIDTH, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTH, out)
        )

    k = nk.kernel(net(), x, get="nngp")
    assert_matches(k.nngp, mc_nngp(lambda: net(16), x, None, 60), bias=3 / WIDTH)


def test_float32_quadrature_accepts_round_off_at_tiny_covariances():
    """The case of the issue's tanh CNN: E[tanh(u) tanh(v)] at cov 6.5e-5 has float32 round-off of 1e-8, above
    1e-4 of its value; it is accepted within float32's resolution of the Cauchy-Schwarz scale and agrees with
    float64 to that resolution."""
    var1, cov, var2 = torch.tensor([0.8473]), torch.tensor([6.4969e-05]), torch.tensor([0.9698])
    value = gaussian_cross(torch.tanh, None, var1, cov, var2, tolerance=1e-4)
    exact = gaussian_cross(torch.tanh, None, var1.double(), cov.double(), var2.double(), tolerance=1e-4)
    torch.testing.assert_close(value.double(), exact, rtol=0, atol=1e-6)
