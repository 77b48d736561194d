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
    "no-activation-last": lambda: chain_of(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 6), nn.Linear(6, 2)),
}


def check_against_reference(model, params, chunk_size, tol):
    """Symmetric and not, traced and full, and the diagonal, against the float64 Jacobians of ``model``."""
    names = list(functionalize(model, params).params)
    dtype = next(model.parameters()).dtype
    x1, x2 = torch.randn(5, 5, dtype=dtype), torch.randn(3, 5, dtype=dtype)
    assert recognised(model, x1, params)
    reference = model.to(DT)
    J1, J2 = dense_jacobian(reference, x1.to(DT), names), dense_jacobian(reference, x2.to(DT), names)
    model.to(dtype)
    kw = {"params": params, "method": "structured", "chunk_size": chunk_size}
    for other, J_other in ((None, J1), (x2, J2)):
        for trace_outputs in (True, False):
            got = nk.empirical_ntk(model, x1, other, trace_outputs=trace_outputs, **kw)
            assert got.dtype == dtype
            assert rel_err(got.to(DT), kernel_from_jacobians(J1, J_other, trace_outputs)) < tol
    for trace_outputs in (True, False):
        got = nk.empirical_ntk(model, x1, diagonal=True, trace_outputs=trace_outputs, **kw)
        assert rel_err(got.to(DT), kernel_from_jacobians(J1, J1, trace_outputs, diagonal=True)) < tol


@pytest.mark.parametrize("name", list(CHAINS))
@pytest.mark.parametrize("params", [None, ["0.*"], ["*.weight"], ["*.bias"]])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_dense_chain_matches_dense_reference(name, params, chunk_size):
    """Every parameter, the first layer only (the cotangents run through all layers), weights only, biases only;
    in one block, and in blocks of 2 examples (features of both sides alive at once in the reused buffers)."""
    check_against_reference(CHAINS[name](), params, chunk_size, TOL)


@pytest.mark.parametrize("name", list(CHAINS))
def test_dense_chain_float32(name):
    """The same in float32. Tolerance 1e-5: float32 round-off is ~6e-8 per operation, and a kernel entry sums a
    few hundred products, so the relative error stays near 1e-6; a wrong term would be off by 1e-3 or more."""
    check_against_reference(CHAINS[name]().float(), None, 2, 1e-5)


def test_reused_buffers_never_leak_into_results():
    """Every call's intermediates are kept in buffers reused by the next call with the same model and shapes; a
    result (one block, symmetric or not, traced or full, diagonal) must not be one of them: it stays unchanged
    when later calls run on other inputs."""
    model = CHAINS["relu-tanh"]()
    x1, x2 = torch.randn(4, 5, dtype=DT), torch.randn(4, 5, dtype=DT)
    calls = [
        dict(trace_outputs=True),
        dict(trace_outputs=False),
        dict(diagonal=True),
        dict(diagonal=True, trace_outputs=False),
    ]
    for kw in calls:
        for other in (None, x2):
            first = nk.empirical_ntk(model, x1, other, method="structured", **kw)
            kept = first.clone()
            for y in (x2, -x1):
                nk.empirical_ntk(model, y, other, method="structured", **kw)
                nk.empirical_ntk(model, y, y, method="structured", **kw)
            assert torch.equal(first, kept)


def test_inputs_that_require_grad():
    """The capture works in place on its buffers; inputs that require grad must neither fail nor change the kernel."""
    model = CHAINS["leaky-sigmoid"]()
    x = torch.randn(4, 5, dtype=DT)
    expected = nk.empirical_ntk(model, x, method="structured")
    assert torch.equal(nk.empirical_ntk(model, x.clone().requires_grad_(), method="structured"), expected)


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
