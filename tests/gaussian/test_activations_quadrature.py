"""Gauss-Hermite quadrature (``Elementwise``): accuracy against closed forms as the degree grows, exact
symmetry, memory chunking and checkpointing, user-supplied closed forms, and input errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import ntkit.nn as nnk
from ntkit.errors import InvalidArgumentError, MemoryBudgetError
from ntkit.gaussian.quadrature import gaussian_cross, gaussian_mean

F64 = torch.float64


def _point(var1, rho, var2):
    v1, v2 = torch.tensor(var1, dtype=F64), torch.tensor(var2, dtype=F64)
    return v1, rho * torch.sqrt(v1 * v2), v2


def _rel_errors(act, point, degrees, derivative):
    f, exact = (act.derivative, act.ntk_factor) if derivative else (act.fn, act.nngp)
    ref = exact(*point)
    scale = max(float(abs(ref)), 1e-300)  # Sign's Ṫ is 0: absolute error there
    return [float(abs(gaussian_cross(f, None, *point, degree=d) - ref)) / scale for d in degrees]


# Measured relative errors at degree 32, worst of the three points (ρ = 0.5, −0.6, 1) and of T / Ṫ
# (docs/infinite_activations.md): erf 7e-8, GELU 2e-9, sin 1e-8 (the duplicate point is the slowest), ReLU and
# Abs 4e-14 (the rule splits at their kink), Sign exact at any degree. Bounds leave a factor >= 10 of room.
@pytest.mark.parametrize(
    ("act", "bound_32"),
    [
        (nnk.Erf(), 1e-6),
        (nnk.GELU(), 1e-8),
        (nnk.Sin(1.0, 1.5, 0.3), 1e-7),
        (nnk.ReLU(), 1e-12),
        (nnk.Abs(), 1e-12),
        (nnk.Sign(), 1e-14),
    ],
    ids=["erf", "gelu", "sin", "relu", "abs", "sign"],
)
@pytest.mark.parametrize("derivative", [False, True], ids=["nngp", "ntk"])
def test_quadrature_error_shrinks_with_degree(act, bound_32, derivative):
    for point in (_point(1.0, 0.5, 0.81), _point(1.3, -0.6, 0.7), _point(1.2, 1.0, 1.2)):
        errors = _rel_errors(act, point, (4, 8, 16, 32), derivative)
        assert errors[-1] < bound_32, errors
        converged = [e for e in errors if e > 1e-12]  # near round-off the sequence stops shrinking
        assert all(b < a for a, b in itertools.pairwise(converged)), errors


def test_kinks_at_zero_are_integrated_exactly_where_a_hermite_grid_is_not():
    # ReLU's T is a polynomial of degree 2 along each ray and smooth in the angle between the kink rays:
    # at degree 16 the polar rule is at round-off, where a 16x16 Gauss-Hermite grid is 1% off.
    relu = nnk.ReLU()
    point = _point(1.0, 0.5, 0.81)
    assert _rel_errors(relu, point, (16,), False)[0] < 1e-12
    x, w = (torch.from_numpy(a) for a in np.polynomial.hermite_e.hermegauss(16))
    w = w / w.sum()
    v1, c, v2 = point
    u = v1.sqrt() * x[:, None]
    v = c / v1.sqrt() * x[:, None] + (v2 - c**2 / v1).sqrt() * x[None, :]
    hermite = (w[:, None] * w[None, :] * torch.relu(u) * torch.relu(v)).sum()
    assert abs(float(hermite / relu.nngp(*point)) - 1) > 1e-3


def test_one_dimensional_mean_converges():
    var = torch.tensor([0.3, 1.0, 2.5], dtype=F64)
    torch.testing.assert_close(gaussian_mean(nnk.GELU().fn, var, degree=32), nnk.GELU().mean(var), rtol=1e-8, atol=0)
    torch.testing.assert_close(
        gaussian_mean(nnk.Erf().derivative, var, degree=48), nnk.Erf().mean_derivative(var), rtol=1e-6, atol=0
    )


def test_same_function_quadrature_is_exactly_symmetric():
    act = nnk.Elementwise(torch.tanh)
    v1, c, v2 = _point(1.7, -0.3, 0.4)
    assert torch.equal(act.nngp(v1, c, v2), act.nngp(v2, c, v1))
    assert torch.equal(act.ntk_factor(v1, c, v2), act.ntk_factor(v2, c, v1))


def _batch(n):
    g = torch.Generator().manual_seed(5)
    v1 = torch.rand(n, 1, dtype=F64, generator=g) + 0.2
    v2 = torch.rand(1, n // 3, dtype=F64, generator=g) + 0.2
    rho = torch.rand(n, n // 3, dtype=F64, generator=g) * 2 - 1
    return v1, rho * torch.sqrt(v1 * v2), v2


def test_chunked_quadrature_equals_unchunked_and_respects_the_budget():
    v1, c, v2 = _batch(60)
    largest = []

    def tanh(x):
        largest.append(x.numel() * x.element_size())
        return torch.tanh(x)

    budget = 100_000
    small = nnk.Elementwise(tanh, degree=16, quadrature_budget=budget, tolerance=None)
    big = nnk.Elementwise(torch.tanh, degree=16, quadrature_budget=2**30, tolerance=None)
    torch.testing.assert_close(small.nngp(v1, c, v2), big.nngp(v1, c, v2), rtol=1e-14, atol=0)
    # one node array per chunk, with headroom for the function's temporaries: at most budget / 4 bytes each
    assert len(largest) > 10 and max(largest) <= budget // 4
    assert small.nngp(v1, c, v2).shape == (60, 20)


def test_gradients_through_checkpointed_chunks_match_and_the_graph_keeps_no_node_arrays():
    v1, c, v2 = (t.clone().requires_grad_() for t in _batch(30))
    grads = []
    for budget in (20_000, 2**30):
        act = nnk.Elementwise(torch.tanh, degree=12, quadrature_budget=budget, tolerance=None)
        saved = []

        def pack(t, saved=saved):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = act.nngp(v1, c, v2) + act.ntk_factor(v1, c, v2)
        grads.append(torch.autograd.grad(out.sum(), (v1, c, v2)))
        # checkpointing saves the chunk inputs only: far less than the 144 node values per element
        assert sum(saved) < 20 * out.numel()
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_refined_elements_keep_their_gradients():
    # Elements at large variance fail the first check and are recomputed at higher degrees; the assembled
    # result is still differentiable, and by Price's theorem ∂T/∂cov is erf's closed-form Ṫ.
    var = torch.tensor([1.0, 30.0, 300.0], dtype=F64)
    cov = (0.6 * var).requires_grad_()
    t = nnk.Elementwise(torch.erf).nngp(var, cov, var)
    (grad,) = torch.autograd.grad(t.sum(), cov)
    torch.testing.assert_close(grad, nnk.Erf().ntk_factor(var, cov.detach(), var), rtol=1e-4, atol=0)


def test_a_budget_below_one_element_is_a_clear_error():
    with pytest.raises(MemoryBudgetError, match="quadrature"):
        nnk.Elementwise(torch.tanh, degree=64, quadrature_budget=1000).nngp(*_point(1.0, 0.5, 1.0))


def test_user_closed_forms_and_derivative():
    erf = nnk.Erf()
    v1, c, v2 = _point(1.3, -0.4, 0.8)
    # nngp_fn given: Ṫ by autograd of it (Price's theorem) equals the closed form.
    priced = nnk.Elementwise(torch.erf, nngp_fn=erf.nngp)
    assert priced.closed_form
    torch.testing.assert_close(priced.ntk_factor(v1, c, v2), erf.ntk_factor(v1, c, v2), rtol=1e-13, atol=0)
    torch.testing.assert_close(priced.nngp(v1, c, v2), erf.nngp(v1, c, v2))
    # broadcasting and a cov that requires grad: Price's derivative stays elementwise and differentiable
    var = torch.tensor([[1.0], [2.0]], dtype=F64)
    cov = torch.tensor([0.1, -0.5, 0.9], dtype=F64, requires_grad=True)
    d = priced.ntk_factor(var, cov, var)
    assert d.shape == (2, 3) and d.requires_grad
    torch.testing.assert_close(d, erf.ntk_factor(var, cov, var))
    # ntk_fn and derivative given: used as they are.
    calls = []
    given = nnk.Elementwise(torch.erf, ntk_fn=lambda *a: torch.tensor(7.0), derivative=lambda x: calls.append(1) or x)
    assert float(given.ntk_factor(v1, c, v2)) == 7.0
    given.mean_derivative(v1)
    assert calls


def test_module_fn_and_autograd_derivative():
    act = nnk.Elementwise(torch.nn.Tanh(), degree=40)
    x = torch.linspace(-2, 2, 9, dtype=F64)
    torch.testing.assert_close(act.derivative(x), 1 - torch.tanh(x) ** 2)
    assert "Tanh" in repr(act)
    const = nnk.Elementwise(lambda x: torch.ones_like(x))
    assert torch.equal(const.derivative(x), torch.zeros_like(x))


def test_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="callable"):
        nnk.Elementwise("tanh")
    with pytest.raises(InvalidArgumentError, match="degree"):
        nnk.Elementwise(torch.tanh, degree=0)
    with pytest.raises(InvalidArgumentError, match="degree"):
        nnk.compose(nnk.ReLU(), nnk.Erf(), degree=2.5)
    with pytest.raises(InvalidArgumentError, match="Monomial"):
        nnk.Monomial(-1)
    with pytest.raises(InvalidArgumentError, match="coefficient"):
        nnk.Polynomial([])
