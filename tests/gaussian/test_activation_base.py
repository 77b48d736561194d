"""Closed-form Gaussian expectations of the base activations against Monte Carlo over Gaussian pairs."""

import pytest
import torch

from ntkit.nn import Erf, ReLU


def _mc(fn, var1, cov, var2, n=2_000_000):
    z = torch.randn(2, n, dtype=torch.float64)
    u = var1**0.5 * z[0]
    v = cov / var1**0.5 * z[0] + (var2 - cov**2 / var1) ** 0.5 * z[1]
    vals = fn(u) * fn(v)
    return vals.mean(), vals.std() / n**0.5


@pytest.mark.parametrize("act", [ReLU(), Erf(), Erf(a=0.7, b=1.3, c=0.2)])
@pytest.mark.parametrize("rho", [-0.6, 0.3, 0.95])
def test_nngp_and_ntk_factor_match_monte_carlo(act, rho):
    # 2e6 Gaussian pairs: the estimate's standard error is ~1e-3; allow 5 standard errors.
    var1, var2 = torch.tensor(1.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    cov = rho * (var1 * var2) ** 0.5
    for exact, fn in ((act.nngp, act.fn), (act.ntk_factor, act.derivative)):
        mc, se = _mc(fn, var1, cov, var2)
        assert abs(float(exact(var1, cov, var2)) - float(mc)) < 5 * float(se) + 1e-12


def test_relu_finite_gradients_at_duplicates_and_zero():
    act = ReLU()
    v = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    act.nngp(v, c, v).sum().backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(c.grad).all()
    # dT/dc = Ṫ for ReLU; at ρ = 1 this is 1/2.
    assert abs(float(c.grad[0]) - 0.5) < 1e-12
    v.grad, c.grad = None, None
    act.ntk_factor(v, c, v).sum().backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(c.grad).all()
