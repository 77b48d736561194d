"""compose() and the cross expectations E[φ1(u) φ2(v)], E[φ1'(u) φ2'(v)] of two activations of one Gaussian:
closed-form folding checked against the chained functions, everything else against Monte Carlo over pairs."""

from __future__ import annotations

import itertools

import pytest
import torch

import ntkit.nn as nnk
from gaussian_pairs import assert_matches_mc, pairs_at
from ntkit.errors import InvalidArgumentError
from ntkit.gaussian.functions import cross_nngp, cross_ntk_factor

F64 = torch.float64
POINTS = [(1.3, -0.6, 0.7), (0.9, 0.8, 1.6), (1.1, 1.0, 1.1)]


@pytest.fixture(scope="module")
def z():
    # 1e6 pairs: 5 standard errors of ~1e-3 relative spread each.
    return torch.randn(2, 1_000_000, dtype=F64, generator=torch.Generator().manual_seed(99))


def _t(*xs):
    return [torch.tensor(float(x), dtype=F64) for x in xs]


def _fn(act):
    return (lambda x: x) if act is None or isinstance(act, torch.nn.Identity) else act.fn


def _derivative(act):
    return torch.ones_like if act is None or isinstance(act, torch.nn.Identity) else act.derivative


# ----------------------------------------------------------------------------------------------- folding


def test_relu_family_folds_to_closed_forms():
    assert type(nnk.compose(nnk.ReLU(), nnk.ReLU())) is nnk.ReLU
    assert type(nnk.compose(nnk.Abs(), nnk.Abs())) is nnk.Abs
    assert type(nnk.compose(nnk.LeakyReLU(0.3), nnk.ReLU())) is nnk.ReLU
    leaky = nnk.compose(nnk.LeakyReLU(0.1), nnk.LeakyReLU(0.2))
    assert type(leaky) is nnk.LeakyReLU and leaky.a == pytest.approx(0.02)


@pytest.mark.parametrize(("s1", "s2"), list(itertools.product([(-1.5, 0.5), (0.0, 2.0), (0.7, -0.4)], repeat=2)))
def test_abrelu_folding_equals_the_chained_function(s1, s2):
    inner, outer = nnk.ABReLU(*s1), nnk.ABReLU(*s2)
    folded = nnk.compose(inner, outer)
    assert isinstance(folded, nnk.ABReLU)
    x = torch.linspace(-3, 3, 121, dtype=F64)
    torch.testing.assert_close(folded.fn(x), outer.fn(inner.fn(x)))


def test_polynomials_fold():
    m = nnk.compose(nnk.Monomial(2), nnk.Monomial(3))
    assert type(m) is nnk.Monomial and m.degree == 6
    inner, outer = nnk.Polynomial([0.5, -1.0, 0.3]), nnk.Polynomial([1.0, 2.0, 0.0, -0.5])
    folded = nnk.compose(inner, outer)
    assert type(folded) is nnk.Polynomial
    x = torch.linspace(-2, 2, 41, dtype=F64)
    torch.testing.assert_close(folded.fn(x), outer.fn(inner.fn(x)))


def test_identities_are_dropped_and_chains_flattened():
    relu = nnk.ReLU()
    assert nnk.compose(None, relu, torch.nn.Identity()) is relu
    assert type(nnk.compose()) is nnk.Monomial and nnk.compose().degree == 1
    assert type(nnk.compose(nnk.ABReLU(2.0, 2.0), nnk.ABReLU(0.5, 0.5))) is nnk.Monomial  # x ↦ x
    chain = nnk.compose(nnk.compose(nnk.ReLU(), nnk.Erf()), nnk.Sin(), degree=20)
    assert isinstance(chain, nnk.Composed) and len(chain.acts) == 3 and chain.degree == 20
    assert not chain.closed_form
    with pytest.raises(InvalidArgumentError, match="Elementwise"):
        nnk.compose(nnk.ReLU(), torch.tanh)


def test_composed_fn_and_chain_rule_derivative():
    chain = nnk.compose(nnk.GELU(), nnk.Erf(0.5, 2.0), nnk.Sin())
    x = torch.linspace(-3, 3, 31, dtype=F64, requires_grad=True)
    torch.testing.assert_close(chain(x), torch.sin(0.5 * torch.erf(2 * torch.nn.functional.gelu(x))))
    (auto,) = torch.autograd.grad(chain.fn(x).sum(), x)
    torch.testing.assert_close(chain.derivative(x.detach()), auto)


# Composites by quadrature (default degree) against Monte Carlo, smooth ones and ones with kinks at 0.
COMPOSITES = {
    "erf(gelu)": nnk.compose(nnk.GELU(), nnk.Erf()),
    "sin(tanh)": nnk.compose(nnk.Elementwise(torch.tanh), nnk.Sin(1.0, 2.0, 0.3)),
    "erf(relu)": nnk.compose(nnk.ReLU(), nnk.Erf(1.0, 1.5)),
    "abs(erf)": nnk.compose(nnk.Erf(), nnk.Abs()),
}


@pytest.mark.parametrize("name", list(COMPOSITES))
@pytest.mark.parametrize("point", POINTS)
def test_composed_expectations_match_monte_carlo(name, point, z):
    act = COMPOSITES[name]
    u, v, v1, c, v2 = pairs_at(point, z)
    assert_matches_mc(act.nngp(v1, c, v2), act.fn(u) * act.fn(v), f"{name} nngp")
    assert_matches_mc(act.ntk_factor(v1, c, v2), act.derivative(u) * act.derivative(v), f"{name} ntk")
    assert_matches_mc(act.mean(v1), act.fn(u), f"{name} mean")
    assert_matches_mc(act.identity_cross(c, v2), u * act.fn(v), f"{name} E[u φ(v)]")


# ----------------------------------------------------------------------------------------------- cross terms

PAIRS = {
    "relu,abs": (nnk.ReLU(), nnk.Abs()),
    "leaky,abrelu": (nnk.LeakyReLU(0.2), nnk.ABReLU(-0.5, 1.5)),
    "erf,erf_abc": (nnk.Erf(), nnk.Erf(0.7, -1.3, 0.2)),
    "sigmoid_like,erf": (nnk.SigmoidLike(), nnk.Erf(1.0, 2.0, -0.1)),
    "sin,cos": (nnk.Sin(0.8, 1.2, 0.3), nnk.Cos(1.0, 0.7, -0.4)),
    "rbf,sin": (nnk.RBF(0.6), nnk.Sin()),
    "exp,exp": (nnk.Exp(0.5, 0.4), nnk.Exp(1.0, -0.3)),
    "gaussian,gaussian": (nnk.Gaussian(1.2, -0.7), nnk.Gaussian(0.5, 0.1)),
    "poly,mono3": (nnk.Polynomial([0.3, -1.0, 0.5, 0.2]), nnk.Monomial(3)),
    "mono2,mono4": (nnk.Monomial(2), nnk.Monomial(4)),
    "id,relu": (None, nnk.ReLU()),
    "gelu,id": (nnk.GELU(), torch.nn.Identity()),
    "id,sign": (None, nnk.Sign()),
    "tanh,id": (nnk.Elementwise(torch.tanh), None),
    "id,id": (None, None),
    "gelu,erf (quadrature)": (nnk.GELU(), nnk.Erf(0.5, 1.5)),
    "tanh,sin (quadrature)": (nnk.Elementwise(torch.tanh), nnk.Sin()),
    "relu,erf (quadrature)": (nnk.ReLU(), nnk.Elementwise(torch.erf)),
}


@pytest.mark.parametrize("name", list(PAIRS))
@pytest.mark.parametrize("point", POINTS)
def test_cross_expectations_match_monte_carlo(name, point, z):
    act1, act2 = PAIRS[name]
    u, v, v1, c, v2 = pairs_at(point, z)
    assert_matches_mc(cross_nngp(act1, act2, v1, c, v2), _fn(act1)(u) * _fn(act2)(v), f"{name} cross nngp")
    assert_matches_mc(
        cross_ntk_factor(act1, act2, v1, c, v2), _derivative(act1)(u) * _derivative(act2)(v), f"{name} cross ntk"
    )


def test_cross_of_an_activation_with_itself_is_its_kernel():
    v1, c, v2 = _t(1.3, -0.4, 0.8)
    for act in (nnk.ReLU(), nnk.GELU(), nnk.Elementwise(torch.tanh), nnk.Erf(0.7, 1.3, 0.2)):
        assert torch.equal(cross_nngp(act, act, v1, c, v2), act.nngp(v1, c, v2))
        assert torch.equal(cross_ntk_factor(act, act, v1, c, v2), act.ntk_factor(v1, c, v2))
    # two equal instances of a closed-form family: the joint formula gives the same numbers
    torch.testing.assert_close(cross_nngp(nnk.ReLU(), nnk.ReLU(), v1, c, v2), nnk.ReLU().nngp(v1, c, v2))


def test_cross_broadcasts():
    v1 = torch.rand(3, 1, dtype=F64) + 0.5
    v2 = torch.rand(1, 4, dtype=F64) + 0.5
    c = 0.3 * torch.sqrt(v1 * v2)
    for a1, a2 in [(None, None), (None, nnk.ReLU()), (nnk.Sign(), None), (nnk.ReLU(), nnk.Erf())]:
        assert cross_nngp(a1, a2, v1, c, v2).shape == (3, 4)
        assert cross_ntk_factor(a1, a2, v1, c, v2).shape == (3, 4)
