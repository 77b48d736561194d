"""The private Gaussian quadrature against closed forms and Monte Carlo; its accuracy as documented."""

import math

import pytest
import torch

from ntkit.errors import UnsupportedError
from ntkit.infinite._quadrature import expectation, pair_expectation
from ntkit.nn import Erf, ReLU

RHOS = [-1.0, -0.99, -0.5, 0.0, 0.3, 0.9, 0.999, 1.0]


def _pair(rho, var1=1.3, var2=0.7):
    v1, v2 = torch.tensor(var1, dtype=torch.float64), torch.tensor(var2, dtype=torch.float64)
    return v1, rho * torch.sqrt(v1 * v2), v2


@pytest.mark.parametrize("rho", RHOS)
def test_kinked_functions_are_integrated_to_round_off(rho):
    # Kinks and jumps at 0 sit on the split lines of the polar rule: ReLU and its derivative are exact up to
    # round-off (at |ρ| = 1 the angle between the lines, arccos ρ, is only known to √eps ≈ 1e-8).
    v1, c, v2 = _pair(rho)
    relu = ReLU()
    torch.testing.assert_close(
        pair_expectation(torch.relu, torch.relu, v1, c, v2), relu.nngp(v1, c, v2), rtol=1e-10, atol=1e-12
    )
    step = relu.derivative
    torch.testing.assert_close(
        pair_expectation(step, step, v1, c, v2), relu.ntk_factor(v1, c, v2), rtol=1e-8, atol=1e-8
    )
    # Stein's lemma: E[u relu(v)] = c P(v > 0) = c / 2.
    torch.testing.assert_close(pair_expectation(lambda x: x, torch.relu, v1, c, v2), c / 2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rho", RHOS)
def test_smooth_functions_match_closed_forms(rho):
    # Documented accuracy for smooth functions with the default rule: 1e-6 relative (Erf: Williams' formula).
    v1, c, v2 = _pair(rho, 2.0, 0.5)
    erf = Erf(a=1.0, b=1.3)
    torch.testing.assert_close(pair_expectation(erf.fn, erf.fn, v1, c, v2), erf.nngp(v1, c, v2), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(
        pair_expectation(erf.derivative, erf.derivative, v1, c, v2), erf.ntk_factor(v1, c, v2), rtol=1e-6, atol=1e-9
    )


def test_tanh_against_monte_carlo():
    # No closed form: 4e6 Gaussian pairs, standard error ~3e-4; allow 5 of them.
    v1, c, v2 = _pair(0.6, 1.5, 0.8)
    z = torch.randn(2, 4_000_000, dtype=torch.float64)
    u = v1.sqrt() * z[0]
    v = c / v1.sqrt() * z[0] + (v2 - c**2 / v1).sqrt() * z[1]
    samples = torch.tanh(u) * torch.tanh(v)
    assert (
        abs(float(pair_expectation(torch.tanh, torch.tanh, v1, c, v2) - samples.mean()))
        < 5 * float(samples.std()) / 2000
    )


def test_one_dimensional_expectation():
    var = torch.tensor([0.0, 0.5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(expectation(torch.relu, var), torch.sqrt(var / (2 * math.pi)), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(expectation(lambda x: x**2, var), var, rtol=1e-12, atol=1e-15)


def test_degenerate_variances_and_gradients_are_finite():
    # Zero variance on one side (zero-norm inputs), |ρ| = 1 (duplicates): finite values and gradients.
    var1 = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    var2 = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    cov = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    out = pair_expectation(torch.relu, torch.tanh, var1, cov, var2)
    out.sum().backward()
    assert torch.isfinite(out).all()
    for t in (var1, var2, cov):
        assert torch.isfinite(t.grad).all()
    # With one side degenerate the expectation factorises: E[relu(0)] E[tanh(v)] = 0.
    torch.testing.assert_close(out[:2], torch.zeros(2, dtype=torch.float64))


def test_gradients_match_finite_differences_away_from_duplicates():
    v1, c, v2 = (t.clone().requires_grad_() for t in _pair(0.4))
    assert torch.autograd.gradcheck(lambda a, b, d: pair_expectation(torch.tanh, torch.relu, a, b, d), (v1, c, v2))


@pytest.mark.parametrize(("b", "tolerance"), [(1.0, 1e-7), (2.0, 1e-7), (3.0, 1e-6)])
def test_documented_accuracy_for_steep_smooth_functions(b, tolerance):
    # erf(b x) at variances 2 and 0.5: b² var up to 18 (module docstring).
    erf = Erf(b=b)
    for rho in (-0.99, 0.0, 0.5, 0.999):
        v1, c, v2 = _pair(rho, 2.0, 0.5)
        assert abs(float(pair_expectation(erf.fn, erf.fn, v1, c, v2) - erf.nngp(v1, c, v2))) < tolerance
        exact = erf.ntk_factor(v1, c, v2)
        got = pair_expectation(erf.derivative, erf.derivative, v1, c, v2)
        assert abs(float(got / exact - 1)) < tolerance


def test_too_steep_functions_are_refused_not_wrong():
    # erf(10 x) at variance 2 (b² var = 200): the coarse and fine rules disagree, so the result is refused.
    erf = Erf(b=10.0)
    v1, c, v2 = _pair(0.5, 2.0, 0.5)
    with pytest.raises(UnsupportedError, match="did not converge"):
        pair_expectation(erf.derivative, erf.derivative, v1, c, v2)
