"""Sums and products of independent branches that end in their own activations (issue 13, item 5;
theory.md §4.9): ``Parallel(Sequential(Linear, ReLU), Sequential(Linear, Erf), Identity(), fan_in="product")``.

References: neural-tangents 0.6.5's FanInProd (float64 values in tests/nt_reference; rtol 1e-8:
neural-tangents' arc-cosine loses √eps on the batch diagonal, see tests/nn/test_conv_local.py); Monte Carlo over
the finite networks with the tolerance of tests/nn/test_layer_kernels_mc.py (4 standard errors + 3/width). Sums
of non-centred branches have no neural-tangents value (it refuses them): Monte Carlo only, in both
parameterizations, which checks the mean cross terms E[a] E[b'] (without them the NNGP is off by ~40%).
"""

import pytest
import torch

import ntkit as nk
from kernel_mc import assert_matches, assert_network_matches, mc_nngp, mc_ntk
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N
from ntkit.errors import UnsupportedError

NT_NETS = {
    "product_independent_dense": lambda: N.Sequential(
        N.Linear(4, 5, W_std=1.3, b_std=0.2),
        N.Parallel(
            N.Sequential(N.Linear(5, 5, W_std=1.2, b_std=0.1), N.ReLU()),
            N.Sequential(N.Linear(5, 5, W_std=1.5, b_std=None), N.Erf()),
            N.Identity(),
            fan_in="product",
        ),
        N.Linear(5, 1, b_std=0.1),
    ),
    "product_independent_conv": lambda: N.Sequential(
        N.Conv2d(2, 4, 3, W_std=1.3, b_std=0.2),
        N.Parallel(
            N.Sequential(N.Conv2d(4, 4, 2, b_std=0.1), N.ReLU()),
            N.Sequential(N.Conv2d(4, 4, 3, b_std=None), N.Sin()),
            fan_in="product",
        ),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
}


@pytest.mark.parametrize("name", NT_NETS)
def test_product_matches_neural_tangents(name):
    assert_matches_neural_tangents(name, NT_NETS[name](), rtol=1e-8)


WIDTH = 96
KW = {"W_std": 1.4, "b_std": 0.3}


def product_net(width, out, param="ntk"):
    kw = {**KW, "parameterization": param}
    return N.Sequential(
        N.Linear(3, width, **kw),
        N.Parallel(
            N.Sequential(N.Linear(width, width, **kw), N.ReLU()),
            N.Sequential(N.Linear(width, width, **kw), N.Erf()),
            N.Identity(),
            fan_in="product",
        ),
        N.Linear(width, out, **kw),
    )


def sum_net(width, out, param="ntk"):
    # Three non-centred parts: relu(W1 u), relu(W2 u) and relu(u) + u (elementwise of the shared u).
    kw = {**KW, "parameterization": param}
    return N.Sequential(
        N.Linear(3, width, **kw),
        N.Parallel(
            N.Sequential(N.Linear(width, width, **kw), N.ReLU()),
            N.Sequential(N.Linear(width, width, **kw), N.ReLU()),
            N.ReLU(),
            N.Identity(),
            fan_in="sum",
        ),
        N.Linear(width, out, **kw),
    )


def conv_product_net(width, out, param="ntk"):
    kw = {**KW, "parameterization": param}
    return N.Sequential(
        N.Conv2d(2, width, 3, **kw),
        N.Parallel(
            N.Sequential(N.Conv2d(width, width, 2, **kw), N.ReLU()),
            N.Sequential(N.Conv2d(width, width, 3, **kw), N.Erf(), N.AvgPool2d(2, 1, "same")),
            fan_in="product",
        ),
        N.Conv2d(width, width, 2, **kw),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(width, out, **kw),
    )


def _inputs(shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    x[1] = 0.5 * x[0] + 0.2 * x[1]  # a correlated pair
    return x


NETS = {"product": (product_net, (4, 3)), "sum": (sum_net, (4, 3)), "conv_product": (conv_product_net, (3, 2, 3, 3))}


@pytest.mark.parametrize("name", NETS)
def test_matches_monte_carlo(name):
    make, shape = NETS[name]
    assert_network_matches(lambda out: make(WIDTH, out), _inputs(shape), WIDTH)


@pytest.mark.parametrize("name", ["product", "sum"])
def test_standard_parameterization_matches_monte_carlo(name):
    make, shape = NETS[name]
    x = _inputs(shape)
    k = nk.kernel(make(WIDTH, 1, "standard"), x)
    mc = mc_ntk(lambda: make(WIDTH, 1, "standard"), x, None, 40, scale=1 / k.sp_normalizer())
    assert_matches(k.ntk, mc, bias=3 / WIDTH)


def test_mean_cross_terms_matter():
    # The check has power: the sum's NNGP without the cross terms E[a]E[b'] is rejected by the same Monte Carlo.
    x = _inputs((4, 3))
    net = sum_net(WIDTH, 1)
    k = nk.kernel(net[:2], x)
    parts = [nk.kernel(N.Sequential(net[0], branch), x) for branch in net[1].branches]
    shared = nk.kernel(N.Sequential(net[0], N.Parallel(N.ReLU(), N.Identity())), x).nngp
    without = sum(p.nngp for p in parts[:2]) + shared
    mc = mc_nngp(lambda: N.Sequential(*list(sum_net(WIDTH, 1))[:2]), x, None, 60)
    assert_matches(k.nngp, mc, bias=3 / WIDTH)
    with pytest.raises(AssertionError):
        assert_matches(without, mc, bias=3 / WIDTH)


def test_shared_non_elementwise_branches_are_refused():
    # Two different linear maps of a shared activation layer (pooled and not): correlated, no closed form.
    net = N.Sequential(
        N.Conv2d(2, 4, 3), N.ReLU(), N.Parallel(N.Identity(), N.AvgPool2d(3, 1, "same"), fan_in="product"), N.Flatten()
    )
    with pytest.raises(UnsupportedError, match="monte_carlo_kernel"):
        nk.kernel(net, torch.randn(2, 2, 4, 4))


def test_sum_of_two_flattened_activations_is_refused():
    # Only the mean over units is known after flattening: the cross terms of two such parts are not.
    branch = lambda: N.Sequential(N.Conv2d(2, 3, 3), N.ReLU(), N.Flatten())  # noqa: E731
    net = N.Sequential(N.Parallel(branch(), branch()), N.Linear(48, 1))
    with pytest.raises(UnsupportedError, match="means"):
        nk.kernel(net, torch.randn(2, 2, 4, 4))
