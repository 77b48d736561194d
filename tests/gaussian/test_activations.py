"""Gaussian expectations of every activation against Monte Carlo over Gaussian pairs, plus gradients,
edge cases (zero variance, |ρ| = 1, variance 1e6, float32) and the fixed identities of each closed form."""

from __future__ import annotations

import math

import pytest
import torch

import ntkit.nn as nnk
from gaussian_pairs import assert_matches_mc, pairs_at
from ntkit.errors import InvalidArgumentError, UnsupportedError
from ntkit.gaussian.quadrature import gaussian_cross

CLOSED = {
    "relu": nnk.ReLU(),
    "leaky": nnk.LeakyReLU(0.2),
    "abrelu": nnk.ABReLU(-0.5, 1.5),
    "abs": nnk.Abs(),
    "sign": nnk.Sign(),
    "erf": nnk.Erf(),
    "erf_abc": nnk.Erf(a=0.7, b=-1.3, c=0.2),
    "sigmoid_like": nnk.SigmoidLike(),
    "gelu": nnk.GELU(),
    "sin": nnk.Sin(0.8, 1.2, 0.3),
    "cos": nnk.Cos(1.0, 0.7, -0.4),
    "rbf": nnk.RBF(0.6),
    "exp": nnk.Exp(0.5, 0.4),
    "gabor": nnk.Gabor(),
    "gaussian": nnk.Gaussian(1.2, -0.7),
    "gaussian_pos": nnk.Gaussian(1.0, 0.1),
    "mono0": nnk.Monomial(0),
    "mono1": nnk.Monomial(1),
    "mono2": nnk.Monomial(2),
    "mono3": nnk.Monomial(3),
    "mono4": nnk.Monomial(4),
    "poly": nnk.Polynomial([0.3, -1.0, 0.5, 0.2]),
}
QUADRATURE = {
    "tanh": nnk.Elementwise(torch.tanh),
    "silu": nnk.Elementwise(torch.nn.SiLU()),
    "softplus": nnk.Elementwise(torch.nn.functional.softplus),
}
ALL = {**CLOSED, **QUADRATURE}
# ABReLU family and Sign: at zero variance ntk_factor takes the ρ → 1 limit (ϑ = 0), not φ'(0)², by convention.
KINK_AT_ZERO = {"relu", "leaky", "abrelu", "abs", "sign"}

# (var1, ρ, var2): negative ρ, ρ = 1 (duplicate inputs), zero variance on one side (default); positive ρ,
# ρ = −1 (negated inputs), correlations near ±1, both variances zero, unequal variances (slow sweep).
POINTS = [(1.3, -0.6, 0.7), (1.2, 1.0, 1.2), (0.0, 0.0, 1.4)]
MORE_POINTS = [(0.5, 0.3, 2.0), (0.8, -1.0, 1.5), (1.0, 0.95, 1.1), (2.5, -0.95, 0.4), (0.0, 0.0, 0.0), (3.0, 0.5, 0.2)]


@pytest.fixture(scope="module")
def z():
    # 1e6 standard normal pairs shared by the module: standard errors 1e-3 of the spread; bounds are 5 SE,
    # so with ~600 comparisons a false failure has probability < 1e-3 (and the draw is seeded anyway).
    return torch.randn(2, 1_000_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1234))


def _t(*xs):
    return [torch.tensor(float(x), dtype=torch.float64) for x in xs]


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("point", POINTS + [pytest.param(p, marks=pytest.mark.slow) for p in MORE_POINTS])
def test_expectations_match_monte_carlo(name, point, z):
    act = ALL[name]
    u, v, v1, c, v2 = pairs_at(point, z)
    assert_matches_mc(act.nngp(v1, c, v2), act.fn(u) * act.fn(v), f"{name} nngp at {point}")
    if not (point[0] == 0 and name in KINK_AT_ZERO):
        assert_matches_mc(act.ntk_factor(v1, c, v2), act.derivative(u) * act.derivative(v), f"{name} ntk at {point}")
    assert_matches_mc(act.mean(v2), act.fn(v), f"{name} mean at var {point[2]}")
    if point[2] > 0 or name not in KINK_AT_ZERO:
        assert_matches_mc(act.mean_derivative(v2), act.derivative(v), f"{name} mean_derivative at var {point[2]}")
    assert_matches_mc(act.identity_cross(c, v2), u * act.fn(v), f"{name} E[u φ(v)] at {point}")


@pytest.mark.parametrize("name", list(ALL))
def test_symmetric_in_the_two_inputs(name):
    act = ALL[name]
    v1, c, v2 = _t(1.3, -0.4, 0.6)
    for f in (act.nngp, act.ntk_factor):
        a, b = f(v1, c, v2), f(v2, c, v1)
        assert torch.equal(a, b) if not act.closed_form else abs(float(a - b)) <= 1e-15 * (1 + abs(float(a)))


@pytest.mark.parametrize("name", [n for n in ALL if n != "sign"])
def test_derivative_is_the_derivative_of_fn(name):
    act = ALL[name]
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    x = x[x.abs() > 1e-3].requires_grad_()  # away from the kink at 0
    (auto,) = torch.autograd.grad(act.fn(x).sum(), x)
    torch.testing.assert_close(act.derivative(x.detach()), auto, rtol=1e-12, atol=1e-12)


def test_fns_match_torch_and_definitions():
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    torch.testing.assert_close(nnk.GELU()(x), torch.nn.functional.gelu(x))
    torch.testing.assert_close(nnk.LeakyReLU(0.2)(x), torch.nn.functional.leaky_relu(x, 0.2))
    torch.testing.assert_close(nnk.ABReLU(-0.5, 1.5)(x), -0.5 * x.clamp(max=0) + 1.5 * x.clamp(min=0))
    torch.testing.assert_close(nnk.RBF(0.6)(x), math.sqrt(2) * torch.sin(math.sqrt(1.2) * x + math.pi / 4))
    torch.testing.assert_close(nnk.Cos(1.0, 0.7, -0.4)(x), torch.cos(0.7 * x - 0.4))
    torch.testing.assert_close(nnk.Gaussian(1.2, -0.7)(x), 1.2 * torch.exp(-0.7 * x * x))
    torch.testing.assert_close(nnk.Polynomial([0.3, -1.0, 0.5, 0.2])(x), 0.3 - x + 0.5 * x**2 + 0.2 * x**3)
    # SigmoidLike is the L2-closest erf to the logistic sigmoid on [-5, 5]: within 0.02 everywhere there.
    s = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    assert float((nnk.SigmoidLike()(s) - torch.sigmoid(s)).abs().max()) < 0.02


def test_closed_forms_equal_independent_formulas():
    v1, c, v2 = _t(1.3, -0.5, 0.7)
    # Isserlis: E[u²v²] = v1 v2 + 2c², E[u³v³] = 9 v1 v2 c + 6c³, E[u⁴] = 3v².
    torch.testing.assert_close(nnk.Monomial(2).nngp(v1, c, v2), v1 * v2 + 2 * c**2)
    torch.testing.assert_close(nnk.Monomial(3).nngp(v1, c, v2), 9 * v1 * v2 * c + 6 * c**3)
    torch.testing.assert_close(nnk.Monomial(3).ntk_factor(v1, c, v2), 9 * (v1 * v2 + 2 * c**2))
    torch.testing.assert_close(nnk.Monomial(4).mean(v1), 3 * v1**2)
    # Abs: E|u||v| = (2/π)(√(v1v2 − c²) + c·arcsin ρ).
    rho = c / torch.sqrt(v1 * v2)
    torch.testing.assert_close(
        nnk.Abs().nngp(v1, c, v2), 2 / math.pi * (torch.sqrt(v1 * v2 - c**2) + c * torch.asin(rho))
    )
    # Sign: (2/π) arcsin ρ. RBF: exp(−γ E(u − v)²). Erf: Williams' arcsin form.
    torch.testing.assert_close(nnk.Sign().nngp(v1, c, v2), 2 / math.pi * torch.asin(rho))
    torch.testing.assert_close(nnk.RBF(0.6).nngp(v1, c, v2), torch.exp(-0.6 * (v1 + v2 - 2 * c)))
    torch.testing.assert_close(
        nnk.Erf().nngp(v1, c, v2), 2 / math.pi * torch.asin(2 * c / torch.sqrt((1 + 2 * v1) * (1 + 2 * v2)))
    )


def test_rbf_after_a_bias_free_linear_layer_is_the_squared_exponential_kernel():
    # cov = σ² x·x'/n0 after Linear(n0, n, W_std=σ, b_std=None): NNGP = exp(−γ σ² ‖x − x'‖² / n0).
    n0, sigma, gamma = 5, 1.3, 0.4
    x = torch.randn(4, n0, dtype=torch.float64)
    k = sigma**2 * x @ x.T / n0
    d = torch.diagonal(k)
    got = nnk.RBF(gamma).nngp(d[:, None], k, d[None, :])
    torch.testing.assert_close(got, torch.exp(-gamma * sigma**2 * torch.cdist(x, x) ** 2 / n0))


def test_sign_has_zero_ntk_and_zero_at_zero_variance():
    v1, c, v2 = _t(1.0, 0.3, 2.0)
    assert float(nnk.Sign().ntk_factor(v1, c, v2)) == 0.0
    assert float(nnk.Sign().nngp(*_t(0.0, 0.0, 2.0))) == 0.0


@pytest.mark.parametrize("name", [*CLOSED, "tanh"])
def test_gradcheck(name):
    # tanh: through the quadrature and autograd's φ' (a coarse rule: gradcheck checks derivatives, not accuracy)
    act = CLOSED.get(name) or nnk.Elementwise(torch.tanh, degree=6, tolerance=None)
    var1 = torch.tensor([1.3, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    var2 = torch.tensor([0.7, 1.5, 0.9], dtype=torch.float64, requires_grad=True)
    rho = torch.tensor([-0.6, 0.3, 0.9], dtype=torch.float64)
    cov = (rho * torch.sqrt(var1 * var2)).detach().requires_grad_()

    def keep(f):  # constant outputs (Sign's Ṫ, Erf's mean) still need a graph for gradcheck
        return lambda *xs: f(*xs) + 0 * sum(x.sum() for x in xs)

    assert torch.autograd.gradcheck(keep(act.nngp), (var1, cov, var2))
    assert torch.autograd.gradcheck(keep(act.ntk_factor), (var1, cov, var2))
    assert torch.autograd.gradcheck(keep(act.mean), (var1,))
    assert torch.autograd.gradcheck(keep(act.mean_derivative), (var1,))


# Edge cases: zero variance (one or both inputs zero-norm), |ρ| = 1 and a hair beyond it (round-off),
# large variances (deep or large-W_std nets).
EDGES = [
    (0.0, 0.0, 0.0),
    (0.0, 0.0, 1.0),
    (1.7, 1.7, 1.7),
    (1.7, -1.7, 1.7),
    (1.7, math.sqrt(1.7 * 0.3) * (1 + 1e-6), 0.3),
    (1e6, 1e6, 1e6),
    (1e6, -0.5 * math.sqrt(2e12), 2e6),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", [n for n in ALL if n not in ("exp", "gaussian_pos")])
def test_finite_values_and_gradients_at_edges(name, dtype):
    # quadrature without its accuracy check, which refuses variance 1e6 for saturating functions (below)
    act = CLOSED.get(name) or nnk.Elementwise(QUADRATURE[name].function, tolerance=None)
    var1, cov, var2 = (torch.tensor(col, dtype=dtype, requires_grad=True) for col in zip(*EDGES, strict=True))
    outs = [act.nngp(var1, cov, var2), act.ntk_factor(var1, cov, var2), act.mean(var1), act.mean_derivative(var2)]
    for out in outs:
        assert torch.isfinite(out).all(), (name, out)
    grads = torch.autograd.grad(sum(o.sum() for o in outs), (var1, cov, var2), allow_unused=True)
    for g in grads:
        assert g is None or torch.isfinite(g).all(), (name, grads)


def test_exp_overflows_to_inf_not_nan():
    act = nnk.Exp()
    var = torch.tensor([1.0, 1e6], requires_grad=True)
    out = act.nngp(var, var, var)
    assert torch.isfinite(out[0]) and torch.isinf(out[1])
    (g,) = torch.autograd.grad(out.sum(), var)
    assert not torch.isnan(g).any()


def test_gaussian_with_positive_b_rejects_divergent_variances():
    act = nnk.Gaussian(1.0, 0.1)
    ok = _t(1.0, 0.5, 1.0)
    assert torch.isfinite(act.nngp(*ok))
    with pytest.raises(InvalidArgumentError, match="diverges"):
        act.nngp(*_t(3.0, 3.0, 3.0))  # E[exp(0.1·2u²)] needs var < 2.5
    with pytest.raises(InvalidArgumentError, match="b·var < 1/2"):
        act.mean(torch.tensor([1.0, 6.0]))
    assert torch.isfinite(act.mean(torch.tensor(4.0)))


def test_zero_variance_factorises():
    # One zero-norm input: u = 0, so E[φ(u)φ(v)] = φ(0)·E φ(v) for every activation.
    zero, v2 = _t(0.0, 1.4)
    for name, act in ALL.items():
        expected = act.fn(zero) * act.mean(v2)
        torch.testing.assert_close(act.nngp(zero, zero, v2), expected, msg=name)


@pytest.mark.parametrize("name", [n for n in CLOSED if n not in KINK_AT_ZERO])
def test_smooth_closed_forms_equal_high_degree_quadrature(name):
    # Quadrature of a smooth (entire) function converges geometrically: at degree 96, 1e-12 at these variances.
    act = CLOSED[name]
    var1 = torch.tensor([1.3, 0.5, 0.6], dtype=torch.float64)
    var2 = torch.tensor([0.7, 1.5, 0.6], dtype=torch.float64)
    cov = torch.tensor([-0.6, 0.3, 1.0], dtype=torch.float64) * torch.sqrt(var1 * var2)
    for exact, f in ((act.nngp, act.fn), (act.ntk_factor, act.derivative)):
        quad = gaussian_cross(f, None, var1, cov, var2, degree=96)
        torch.testing.assert_close(exact(var1, cov, var2), quad, rtol=1e-10, atol=1e-12)


def test_quadrature_is_accurate_or_refuses():
    # erf by quadrature against its closed form: up to variance 1e3 (where erf is a step at the scale of 3% of
    # the standard deviation) the checked, refined quadrature meets its 1e-4 tolerance (measured worst 6e-6);
    # at variance 1e6 and ρ = 0.99 the derivative kernel cannot be resolved and is refused, not returned wrong.
    quad, exact = nnk.Elementwise(torch.erf), nnk.Erf()
    for var in (1.0, 10.0, 100.0, 1e3):
        for rho in (0.5, 0.99, 1.0):
            args = _t(var, rho * var, var)
            for kind in ("nngp", "ntk_factor"):
                got, want = getattr(quad, kind)(*args), getattr(exact, kind)(*args)
                assert abs(float(got / want) - 1) < 1e-4, (var, rho, kind)
    with pytest.raises(UnsupportedError, match="tolerance"):
        quad.ntk_factor(*_t(1e6, 0.99e6, 1e6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_overflow_to_nan_at_any_representable_variance(dtype):
    # Deep or large-W_std networks reach variances far beyond 1e6. Closed forms are written in units of
    # λ = max(1, √(var1 var2)), so they stay finite wherever the kernel itself is representable (Exp and
    # polynomials of degree ≥ 2 grow past the dtype's range by nature and are left out).
    huge = 1e37 if dtype == torch.float32 else 1e300
    var = torch.tensor([1e18, huge, huge, huge, huge], dtype=dtype)
    cov = var * torch.tensor([0.5, 0.5, 1.0, -1.0, 0.0], dtype=dtype)
    for name, act in CLOSED.items():
        if name in ("exp", "gaussian_pos", "mono2", "mono3", "mono4", "poly"):
            continue
        for out in (act.nngp(var, cov, var), act.ntk_factor(var, cov, var), act.mean(var)):
            assert torch.isfinite(out).all(), (name, out)
    # and the homogeneous ones keep their exact scaling: ReLU's T at ρ = 1 is var / 2
    torch.testing.assert_close(nnk.ReLU().nngp(var, var, var), var / 2, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_do_not_depend_on_the_position_in_the_tensor(dtype):
    # K(x, x) and K(x, x') for a duplicate x' = x must stay bitwise equal, or deep networks in the chaotic
    # phase (erf with W_std² = 2) amplify the last-bit difference until duplicates decorrelate. On CPU,
    # torch.atan2's vectorised loop and its scalar tail differ in the last bit; the closed forms avoid it.
    g = torch.Generator().manual_seed(7)
    var = torch.rand(7, dtype=dtype, generator=g) + 0.2
    cov = var * (torch.rand(7, dtype=dtype, generator=g) * 2 - 1)
    big = [t.repeat(9) for t in (var, cov, var)]
    for name in [*CLOSED, "tanh"]:
        act = ALL[name]
        for f in (act.nngp, act.ntk_factor):
            small, large = f(var, cov, var), f(*big).reshape(9, 7)
            assert (large == small).all(), name


@pytest.mark.parametrize("name", ["relu", "leaky", "abrelu", "abs"])
def test_relu_family_fast_path_equals_the_autograd_path(name):
    # Without autograd the ReLU family runs a fused in-place form (ρ = cov / √var1 √var2, arccos); with it,
    # the clamp_cov/angle form. Independent formulas of the same T and Ṫ: float64 round-off (1e-12 relative
    # to √(var1 var2), the kernel's scale) away from |ρ| = 1; duplicates, negated inputs and zero variance
    # exactly, as the nk.kernel recursions rely on (K(x, x') = K(x, x) bitwise for x' = x).
    act = CLOSED[name]
    g = torch.Generator().manual_seed(3)
    var1 = torch.rand(50, 1, dtype=torch.float64, generator=g) * 3 + 0.01
    var2 = torch.rand(1, 60, dtype=torch.float64, generator=g) * 3 + 0.01
    cov = (var1 * var2).sqrt() * (torch.rand(50, 60, dtype=torch.float64, generator=g) * 2 - 1)
    scale = (var1 * var2).sqrt()
    # the full covariance, and one that broadcasts against the variances (not only the other way round)
    for c, v2 in ((cov, var2), (cov[:, :1], var2[:, :1].expand(1, 60))):
        with torch.no_grad():
            fast = act.nngp_and_ntk_factor(var1, c, v2)
        slow = [f(var1, c, v2.clone().requires_grad_()).detach() for f in (act.nngp, act.ntk_factor)]
        for a, b in zip(fast, slow, strict=True):
            assert a.shape == (50, 60) and float(((a - b).abs() / scale).max()) < 1e-12
    p = act.a**2 + act.b**2
    q = 2 * act.a * act.b
    var = torch.tensor([0.7, 2.0, 0.0, 1.5], dtype=torch.float64)
    cov = torch.tensor([0.7, -2.0, 0.0, 0.0], dtype=torch.float64)
    other = torch.tensor([0.7, 2.0, 0.0, 0.0], dtype=torch.float64)  # duplicate, negated, both zero, one zero
    with torch.no_grad():
        nngp, factor = act.nngp_and_ntk_factor(var, cov, other)
    torch.testing.assert_close(
        nngp, torch.tensor([p / 2 * 0.7, -q / 2 * 2.0, 0.0, 0.0], dtype=torch.float64), rtol=0, atol=0
    )
    torch.testing.assert_close(factor[:3], torch.tensor([p / 2, q / 2, p / 2], dtype=torch.float64), rtol=0, atol=0)
