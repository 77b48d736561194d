"""Networks that mix the NTK and the standard parameterization, and the standard parameterization's width
multiplier ``s = (s_in, s_out)`` (issue 13, item 6; theory.md §4.4).

References: neural-tangents 0.6.5's float64 kernels (tests/nt_reference: its Dense/Conv with ``s`` and networks
mixing the parameterizations; ntkit's ``neural_tangents_ntk()`` is its unnormalised J Jᵀ; rtol 1e-8: its
arc-cosine loses √eps on the batch diagonal), and Monte Carlo over the finite networks: the mean empirical NTK
J Jᵀ divided by ``sp_normalizer()``, tolerance 4 standard errors + 3/width (tests/nn/test_layer_kernels_mc.py).
"""

import pytest
import torch

import ntkit as nk
from kernel_mc import assert_matches, mc_nngp, mc_ntk
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N
from ntkit.errors import InvalidArgumentError

SP = {"parameterization": "standard"}

NT_NETS = {
    "sp_width_multiplier": lambda: N.Sequential(
        N.Linear(4, 5, W_std=1.3, b_std=0.2, s=(1, 3), **SP),
        N.ReLU(),
        N.Linear(5, 4, W_std=1.1, b_std=0.1, s=(3, 2), **SP),
        N.Erf(),
        N.Linear(4, 1, b_std=None, s=(2, 1), **SP),
    ),
    "mixed_parameterization_dense": lambda: N.Sequential(
        N.Linear(4, 5, W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.Linear(5, 6, W_std=1.1, b_std=0.1, **SP),
        N.Erf(),
        N.Linear(6, 1, b_std=0.1),
    ),
    "mixed_parameterization_conv": lambda: N.Sequential(
        N.Conv2d(2, 4, 3, W_std=1.3, b_std=0.2, s=(1, 2), **SP),
        N.ReLU(),
        N.Conv2d(8, 4, 2, b_std=0.1),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None, **SP),
    ),
}


@pytest.mark.parametrize("name", NT_NETS)
def test_matches_neural_tangents(name):
    assert_matches_neural_tangents(name, NT_NETS[name](), rtol=1e-8)


WIDTH = 96
KW = {"W_std": 1.4, "b_std": 0.3}


def mixed(width, out):
    return N.Sequential(
        N.Linear(3, width, **KW),
        N.ReLU(),
        N.Linear(width, width, **KW, **SP),
        N.Erf(),
        N.Linear(width, width, **KW),
        N.ReLU(),
        N.Linear(width, out, **KW, **SP),
    )


def widened(width, out, s=4):
    # Base width width/s, every hidden layer s times wider: the kernels of the base network.
    base = width // s
    return N.Sequential(
        N.Linear(3, base, **KW, **SP, s=(1, s)),
        N.ReLU(),
        N.Linear(base, base, **KW, **SP, s=(s, s)),
        N.Erf(),
        N.Linear(base, out, **KW, **SP, s=(s, 1)),
    )


def _inputs():
    torch.manual_seed(0)
    x = torch.randn(4, 3, dtype=torch.float64)
    x[1] = 0.5 * x[0] + 0.2 * x[1]
    return x


@pytest.mark.parametrize("make", [mixed, widened], ids=["mixed", "widened"])
def test_matches_monte_carlo(make):
    x = _inputs()
    k = nk.kernel(make(WIDTH, 1), x)
    assert_matches(k.nngp, mc_nngp(lambda: make(WIDTH, 16), x, None, 60), bias=3 / WIDTH)
    mc = mc_ntk(lambda: make(WIDTH, 1), x, None, 60, scale=1 / k.sp_normalizer())
    assert_matches(k.ntk, mc, bias=3 / WIDTH)


def test_mixed_ntk_is_the_sum_of_each_layers_term():
    # The check has power: dropping the NTK-parameterization layers' terms (the O(1) part of J Jᵀ) is rejected.
    x = _inputs()
    k = nk.kernel(mixed(WIDTH, 1), x)
    standard_only = nk.kernel(N.Sequential(*[_as_standard(m) for m in mixed(WIDTH, 1)]), x)
    assert k.sp_normalizer() == standard_only.sp_normalizer() == WIDTH
    mc = mc_ntk(lambda: mixed(WIDTH, 1), x, None, 60, scale=1 / WIDTH)
    with pytest.raises(AssertionError):
        assert_matches(standard_only.ntk, mc, bias=3 / WIDTH)


def _as_standard(m):
    if isinstance(m, N.Linear):
        return N.Linear(m.in_features, m.out_features, W_std=m.W_std, b_std=m.b_std, **SP)
    return m


def test_width_multiplier_gives_the_base_networks_kernels():
    x = _inputs()
    base = nk.kernel(widened(WIDTH, 1, s=1), x)
    wide = nk.kernel(widened(WIDTH, 1, s=4), x)
    assert widened(WIDTH, 1, s=4)[2].weight.shape == (WIDTH, WIDTH)
    torch.testing.assert_close(wide.nngp, nk.kernel(widened(WIDTH // 4, 1, s=1), x).nngp)
    torch.testing.assert_close(wide.ntk, nk.kernel(widened(WIDTH // 4, 1, s=1), x).ntk)
    assert wide.sp_normalizer() == WIDTH // 4 and base.sp_normalizer() == WIDTH


def test_bad_width_multipliers_are_refused():
    with pytest.raises(InvalidArgumentError, match="standard parameterization only"):
        N.Linear(3, 4, s=(1, 2))
    with pytest.raises(InvalidArgumentError, match="pair of positive ints"):
        N.Conv2d(3, 4, 3, s=(0, 2), **SP)
