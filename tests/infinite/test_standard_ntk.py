"""The standard-parameterization NTK at every depth (issue 13, bug 3): ``Kernel.neural_tangents_ntk()`` and
``Kernel.sp_normalizer()`` against the exact J Jᵀ of a one-layer network and against neural-tangents.

References: a single weight layer y = x W + b has J Jᵀ = x·x' + 1 whatever its weights (exact, so 1e-12); deeper
networks against neural-tangents 0.6.5's float64 values stored in tests/nt_reference (the same recursion in
another implementation: agreement to round-off, rtol 1e-10).
"""

import pytest
import torch

import ntkit as nk
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N

SP = {"parameterization": "standard"}


def test_one_weight_layer_reading_the_input():
    """The issue's case: with one weight layer sp_width[0] was 0 and the documented k.ntk * sp_width[0] gave 0."""
    x1, x2 = torch.randn(4, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    net = N.Sequential(N.Linear(5, 2, W_std=1.3, b_std=0.2, **SP))
    k = nk.kernel(net, x1, x2)
    exact = x1 @ x2.T + 1.0  # J Jᵀ: dy/dW = x, dy/db = 1
    assert k.sp_normalizer() == 5
    torch.testing.assert_close(k.neural_tangents_ntk(), exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k.ntk, exact / 5, rtol=1e-12, atol=1e-12)


def test_ntk_parameterization_is_unchanged():
    k = nk.kernel(N.Sequential(N.Linear(3, 4), N.ReLU(), N.Linear(4, 1)), torch.randn(3, 3))
    assert k.sp_normalizer() == 1 and torch.equal(k.neural_tangents_ntk(), k.ntk)


def test_hand_composed_kernels_stay_unnormalised():
    """layer.kernel_transform(...) does not normalise, so neural_tangents_ntk() returns its Θ as it is."""
    x = torch.randn(3, 5, dtype=torch.float64)
    k = N.Linear(5, 2, b_std=0.2, **SP).kernel_transform(nk.Kernel.from_inputs(x))
    torch.testing.assert_close(k.neural_tangents_ntk(), x @ x.T + 1.0, rtol=1e-12, atol=1e-12)


NETS = {
    "sp_one_dense": lambda: N.Sequential(N.Linear(4, 1, W_std=1.3, b_std=0.2, **SP)),
    "sp_two_dense": lambda: N.Sequential(
        N.Linear(4, 7, W_std=1.3, b_std=0.2, **SP), N.ReLU(), N.Linear(7, 1, W_std=1.1, b_std=0.1, **SP)
    ),
    "sp_three_dense": lambda: N.Sequential(
        N.Linear(4, 7, W_std=1.3, b_std=0.2, **SP),
        N.ReLU(),
        N.Linear(7, 11, W_std=1.1, b_std=0.1, **SP),
        N.Erf(),
        N.Linear(11, 1, b_std=None, **SP),
    ),
    "sp_conv_flatten": lambda: N.Sequential(
        N.Conv2d(2, 6, 3, W_std=1.3, b_std=0.2, **SP), N.ReLU(), N.Flatten(), N.Linear(150, 1, b_std=None, **SP)
    ),
    "sp_one_conv": lambda: N.Sequential(N.Conv2d(2, 1, 3, W_std=1.3, b_std=0.2, **SP), N.Flatten()),
}


@pytest.mark.parametrize("name", NETS)
def test_matches_neural_tangents(name):
    assert_matches_neural_tangents(name, NETS[name]())
