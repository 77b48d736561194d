"""The structured method's hand-written capture for chains of dense layers (``empirical.dense_chain``), against
the dense float64 Jacobian (plain autograd, one gradient per example and output) to ``TOL``: both routes are
exact, so the difference is round-off; a wrong derivative, a missing layer or a wrong collapse of the output sum
is off by far more."""

from __future__ import annotations

import pytest
import torch
from empirical_reference import TOL, kernel_from_jacobians
from torch import nn

import ntkit as nk
from ntkit._functional import functionalize
from ntkit.empirical.dense_chain import dense_chain
from ntkit.empirical.tracing import trace_model
from reference import dense_jacobian, rel_err

DT = torch.float64


def chain_of(*layers: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*layers).to(DT).eval()


def recognised(model: nn.Module, x: torch.Tensor, params=None) -> bool:
    fm = functionalize(model, params)
    return dense_chain(fm, trace_model(fm, x)) is not None


CHAINS = {
    "relu-tanh": lambda: chain_of(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)),
    "leaky-sigmoid": lambda: chain_of(
        nn.Linear(5, 6), nn.LeakyReLU(0.2), nn.Linear(6, 6), nn.Sigmoid(), nn.Linear(6, 2, bias=False)
    ),
    "identity-between": lambda: chain_of(nn.Linear(5, 4), nn.Identity(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1)),
    "one-layer": lambda: chain_of(nn.Linear(5, 3)),
}


@pytest.mark.parametrize("name", list(CHAINS))
@pytest.mark.parametrize("params", [None, ["0.*"], ["*.weight"], ["*.bias"]])
def test_dense_chain_matches_dense_reference(name, params):
    """Every parameter, the first layer only (the cotangents run through all layers), weights only, biases only."""
    model = CHAINS[name]()
    names = list(functionalize(model, params).params)
    x1, x2 = torch.randn(5, 5, dtype=DT), torch.randn(3, 5, dtype=DT)
    assert recognised(model, x1, params)
    J1, J2 = dense_jacobian(model, x1, names), dense_jacobian(model, x2, names)
    for other, J_other in ((None, J1), (x2, J2)):
        for trace_outputs in (True, False):
            got = nk.empirical_ntk(model, x1, other, params=params, method="structured", trace_outputs=trace_outputs)
            assert rel_err(got, kernel_from_jacobians(J1, J_other, trace_outputs)) < TOL
    got = nk.empirical_ntk(model, x1, params=params, method="structured", diagonal=True, trace_outputs=False)
    assert rel_err(got, kernel_from_jacobians(J1, J1, False, diagonal=True)) < TOL


class Twice(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def test_what_is_not_a_dense_chain():
    """Anything but the listed classes, hooks, inputs with positions, or an activation at the end keep the generic
    capture (and its exact kernel)."""
    x = torch.randn(4, 5, dtype=DT)
    assert recognised(CHAINS["relu-tanh"](), x)
    assert not recognised(chain_of(Twice(5, 3)), x)  # a subclass may change the forward
    assert not recognised(chain_of(nn.Linear(5, 3), nn.Tanh()), x)  # ends with an activation
    assert not recognised(chain_of(nn.Linear(5, 4), nn.GELU(), nn.Linear(4, 2)), x)
    assert not recognised(chain_of(nn.Linear(5, 3)), torch.randn(4, 2, 5, dtype=DT))  # positions
    hooked = chain_of(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    hooked[1].register_forward_hook(lambda m, i, o: o * 3)
    assert not recognised(hooked, x)
    J = dense_jacobian(hooked, x)
    assert rel_err(nk.empirical_ntk(hooked, x, method="structured"), kernel_from_jacobians(J, J, True)) < TOL
