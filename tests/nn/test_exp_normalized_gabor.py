"""``ExpNormalized`` and ``Gabor`` (issue 13, item 6): neural-tangents' layers, as finite torch modules.

References: neural-tangents 0.6.5's float64 kernels (tests/nt_reference; rtol 1e-8 as the other cases), Monte
Carlo over the finite networks (tolerance 4 standard errors + 3/width, tests/nn/test_layer_kernels_mc.py: the
finite ExpNormalized divides by the channel norm, whose fluctuations are an O(1/width) bias too). Gabor's own
Gaussian expectations are checked against Monte Carlo pairs in tests/gaussian/test_activations.py.
"""

import pytest
import torch

import ntkit as nk
from kernel_mc import assert_network_matches
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N
from ntkit.errors import UnsupportedError

NT_NETS = {
    "exp_normalized_gabor_dense": lambda: N.Sequential(
        N.Linear(4, 5, W_std=1.3, b_std=0.2),
        N.ExpNormalized(gamma=0.8, shift=-0.5),
        N.Linear(5, 5, W_std=1.2, b_std=0.1),
        N.Gabor(),
        N.Linear(5, 1, b_std=None),
    ),
    "exp_normalized_gabor_conv": lambda: N.Sequential(
        N.Conv2d(2, 4, 3, W_std=1.3, b_std=0.2),
        N.Gabor(),
        N.Conv2d(4, 4, 2, W_std=1.5, b_std=None),
        N.ExpNormalized(gamma=1.2),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
}


@pytest.mark.parametrize("name", NT_NETS)
def test_matches_neural_tangents(name):
    assert_matches_neural_tangents(name, NT_NETS[name](), rtol=1e-8)


WIDTH = 96


def network(width, out, param="ntk"):
    kw = {"W_std": 1.4, "b_std": 0.3, "parameterization": param}
    return N.Sequential(
        N.Linear(3, width, **kw),
        N.ExpNormalized(gamma=0.7, shift=-0.6),
        N.Linear(width, width, **kw),
        N.Gabor(),
        N.Linear(width, out, **kw),
    )


def test_matches_monte_carlo():
    torch.manual_seed(0)
    x = torch.randn(4, 3, dtype=torch.float64)
    x[1] = 0.5 * x[0] + 0.2 * x[1]
    assert_network_matches(lambda out: network(WIDTH, out), x, WIDTH)


def test_finite_layer_is_the_closed_form_on_unit_inputs():
    # On inputs with mean square 1 over channels σ = 1: y = exp(√γ x + γ(shift − 1)/2) exactly.
    x = torch.randn(3, 50, dtype=torch.float64)
    x = x / x.square().mean(1, keepdim=True).sqrt()
    torch.testing.assert_close(N.ExpNormalized(0.7, -0.6)(x), torch.exp(0.7**0.5 * x + 0.7 * (-1.6) / 2))
    assert torch.equal(N.ExpNormalized()(torch.zeros(2, 3)), torch.zeros(2, 3))


def test_non_gaussian_inputs_are_refused():
    with pytest.raises(UnsupportedError, match="ExpNormalized needs a Gaussian layer"):
        nk.kernel(N.Sequential(N.Linear(3, 4), N.ReLU(), N.ExpNormalized()), torch.randn(2, 3))
