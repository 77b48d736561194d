"""End to end: every activation inside a finite network, Sequential(Linear(d, n), φ, Linear(n, O)), whose
infinite-width kernels (nk.kernel) must match the average of its empirical kernels over random initialisations
(nk.monte_carlo_kernel), NNGP and NTK, in the NTK and the standard parameterization.

With one hidden layer both averages are exact at any width: the hidden pre-activations are exactly Gaussian,
so E[f fᵀ] = W_std² T + b_std² and E[J Jᵀ] is the NTK recursion term by term (the standard parameterization's
Θ is normalised by the width n, with its O(1/n) first-layer and bias terms kept, theory.md §4.4). So the only
difference is Monte Carlo noise, and the bound is 5 reported standard errors (about 3 expected false failures
in 10⁵ such tests); each test also checks that those errors are below 10% of the kernel's scale, so it can fail.
With 200 networks the standard errors are about 3.5% (NNGP) and 0.8% (NTK) of the scale: this catches wiring
and convention errors (a 15% error in ReLU's T is 13 standard errors off); the formulas themselves are checked
to 1e-3 against Gaussian pairs in test_activations.py.
"""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
import ntkit.nn as nnk

F64 = torch.float64
D, WIDTH, OUTPUTS, W_STD, B_STD = 4, 64, 8, 1.3, 0.2

ACTIVATIONS = {
    "relu": nnk.ReLU,
    "leaky": lambda: nnk.LeakyReLU(0.2),
    "abrelu": lambda: nnk.ABReLU(-0.5, 1.5),
    "abs": nnk.Abs,
    "sign": nnk.Sign,
    "erf": lambda: nnk.Erf(0.7, 1.3, 0.2),
    "sigmoid_like": nnk.SigmoidLike,
    "gelu": nnk.GELU,
    "sin": lambda: nnk.Sin(0.8, 1.2, 0.3),
    "cos": lambda: nnk.Cos(1.0, 0.7, -0.4),
    "rbf": lambda: nnk.RBF(0.6),
    "exp": lambda: nnk.Exp(0.5, 0.4),
    "gaussian": lambda: nnk.Gaussian(1.2, -0.7),
    "gaussian_pos": lambda: nnk.Gaussian(1.0, 0.02),  # b > 0: finite while b·var < 1/4 (var reaches 9 here)
    "mono2": lambda: nnk.Monomial(2),
    "mono3": lambda: nnk.Monomial(3),
    "poly": lambda: nnk.Polynomial([0.3, -1.0, 0.5, 0.2]),
    "tanh": lambda: nnk.Elementwise(torch.tanh),
    "softplus": lambda: nnk.Elementwise(torch.nn.functional.softplus),
    "erf(relu)": lambda: nnk.compose(nnk.ReLU(), nnk.Erf()),
}
# Default run: a closed form, a quadrature and a composition, across both parameterizations; the slow sweep
# has every activation in both. Heavy-tailed ones (exp, cubic polynomials) need more networks for standard
# errors below 10%.
DEFAULT = {("relu", "ntk"), ("tanh", "standard"), ("erf(relu)", "ntk")}
SAMPLES = {"exp": 1600, "poly": 1600, "mono3": 800}


def network(act, parameterization):
    return nnk.Sequential(
        nnk.Linear(D, WIDTH, W_std=W_STD, b_std=B_STD, parameterization=parameterization),
        act(),
        nnk.Linear(WIDTH, OUTPUTS, W_std=W_STD, b_std=B_STD, parameterization=parameterization),
    ).double()


def assert_within_standard_errors(mc, se, exact, what):
    # 5 standard errors, plus round-off (1e-10 of the scale) for entries every network gives alike (zero spread)
    scale = torch.sqrt(torch.diagonal(exact)[:, None] * torch.diagonal(exact)[None, :])
    excess = ((mc - exact).abs() - 1e-10 * scale) / (5 * se)
    assert float(excess.max()) <= 1, f"{what}: {5 * float(excess.max()):.1f} standard errors off"
    assert float((se / scale).max()) < 0.1, f"{what}: standard errors too large for a test"


@pytest.mark.parametrize(
    ("name", "parameterization"),
    [
        case if case in DEFAULT else pytest.param(*case, marks=pytest.mark.slow)
        for case in [(n, p) for n in ACTIVATIONS for p in ("ntk", "standard")]
    ],
)
def test_activation_in_a_network_matches_monte_carlo(name, parameterization):
    x = torch.randn(5, D, dtype=F64, generator=torch.Generator().manual_seed(1))
    act = ACTIVATIONS[name]
    k = nk.kernel(network(act, parameterization), x)
    n_samples = SAMPLES.get(name, 200)
    est = nk.monte_carlo_kernel(lambda: network(act, parameterization), x, n_samples=n_samples, seed=0)
    ntk_mc, ntk_se = est.ntk, est.ntk_stderr
    if parameterization == "standard":  # Θ = J Jᵀ / n (theory.md §4.4)
        ntk_mc, ntk_se = ntk_mc / k.sp_width[0], ntk_se / k.sp_width[0]
    assert_within_standard_errors(est.nngp, est.nngp_stderr, k.nngp, f"{name} NNGP")
    assert_within_standard_errors(ntk_mc, ntk_se, k.ntk, f"{name} NTK")
