"""Values of linearized and Taylor-expanded models against independent references.

References: the dense float64 Jacobian from plain autograd (``reference.dense_jacobian``, one gradient per
output), closed-form Taylor polynomials, and directional derivatives by repeated plain autograd in a
scalar step size. Tolerance 1e-10 relative: every route is exact up to float64 round-off (~1e-15 per
operation), so anything above 1e-10 is a wrong formula, not noise.
"""

from __future__ import annotations

import math

import pytest
import torch
from linearize_cases import CASES, cnn, dense_linearization, flat, mlp, random_delta, set_delta
from torch import nn
from torch.func import functional_call

import ntkit as nk
from reference import dense_jacobian, rel_err

METHODS = ["jvp", "double_vjp"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("case", "factory", "shape", "params"), CASES, ids=[c[0] for c in CASES])
def test_output_is_f0_plus_j0_delta(case, factory, shape, params, method):
    model = factory()
    x = torch.randn(4, *shape, dtype=torch.float64)
    lin = nk.linearize(model, params, method=method)
    jac = dense_jacobian(model, x, lin.param_names)  # (N, O, P), columns in lin.param_names order
    f0 = model(x).detach()
    for _ in range(2):  # two random directions
        delta = random_delta(lin)
        set_delta(lin, delta)
        out = lin(x).detach()
        expected = f0 + (jac @ flat(delta, lin.param_names)).reshape(f0.shape)
        assert out.shape == f0.shape and out.dtype == f0.dtype
        assert rel_err(out, expected) < 1e-10
        assert rel_err(out - f0, expected - f0) < 1e-10  # the J0 δ part on its own, not hidden by f0


def test_selected_parameters_only_are_trainable():
    model = mlp()
    lin = nk.linearize(model, ["0.*", "4.bias"])
    assert [n for n, _ in lin.theta.named_parameters()] == ["0.weight", "0.bias", "4.bias"]
    assert [n for n, _ in lin.named_parameters()] == ["theta.0.weight", "theta.0.bias", "theta.4.bias"]
    # frozen parameters and θ0 are buffers of model0, under the model's own names
    assert {n for n, _ in lin.model0.named_buffers()} == {n for n, _ in model.named_parameters()}
    assert not list(lin.model0.parameters())
    model[2].weight.requires_grad_(False)  # params=None selects what has requires_grad, as everywhere in ntkit
    assert "2.weight" not in nk.linearize(model).param_names


def test_at_theta0_equals_model_and_model0():
    model = cnn()
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    for degree in range(4):
        tay = nk.taylor_expand(model, degree)
        assert torch.equal(tay(x), model(x))  # every correction term is exactly 0 at δ = 0
    assert torch.equal(nk.linearize(model).model0(x), model(x))


def test_integer_inputs_and_extra_arguments():
    """Token ids (embedding) and extra positional/keyword arguments pass through to the model."""

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, tokens, scale, *, shift=0.0):
            return self.out(torch.tanh(self.emb(tokens) * scale + shift))

    model = Tagger().double()
    tokens = torch.randint(0, 11, (3, 5))
    lin = nk.linearize(model)
    delta = random_delta(lin)
    set_delta(lin, delta)
    jac = dense_jacobian(_Bound(model, 1.5, shift=0.2), tokens)
    f0 = model(tokens, 1.5, shift=0.2).detach()
    expected = f0 + (jac @ flat(delta, lin.param_names)).reshape(f0.shape)
    assert rel_err(lin(tokens, 1.5, shift=0.2).detach(), expected) < 1e-10


class _Bound(nn.Module):
    """model(x, *args, **kwargs) as a one-argument module, for the dense reference Jacobian."""

    def __init__(self, model, *args, **kwargs):
        super().__init__()
        self.model, self.args, self.kwargs = model, args, kwargs

    def forward(self, x):
        return self.model(x, *self.args, **self.kwargs)


# ----------------------------------------------------------------------------- Taylor expansion


def cubic(params, x):
    """f(w, x) = (w·x)^3: a polynomial of degree 3 in the parameters; output (N,)."""
    return (x @ params["w"]) ** 3


@pytest.mark.parametrize("method", METHODS)
def test_taylor_of_cubic_matches_closed_form(method):
    """(a + b)^3 with a = w0·x, b = δ·x: the degree-k expansion is the sum of its first k + 1 binomial terms,
    exact (equal to f(w0 + δ)) from degree 3 on, and wrong by the missing terms below."""
    w0 = torch.randn(6, dtype=torch.float64)
    x = torch.randn(7, 6, dtype=torch.float64)
    d = torch.randn(6, dtype=torch.float64)
    a, b = x @ w0, x @ d
    partial_sums = torch.cumsum(torch.stack([a**3, 3 * a**2 * b, 3 * a * b**2, b**3]), 0)
    exact = cubic({"w": w0 + d}, x)
    for degree in range(6):
        tay = nk.taylor_expand(cubic, degree, {"w": w0}, method=method)
        set_delta(tay, {"w": d})
        out = tay(x).detach()
        assert out.shape == (7,)
        assert rel_err(out, partial_sums[min(degree, 3)]) < 1e-10
        if degree >= 3:
            assert rel_err(out, exact) < 1e-10
        else:
            assert rel_err(out, exact) > 1e-2


def test_taylor_of_deep_linear_network_is_exact_at_its_degree():
    """A 3-layer linear network (with biases) is a polynomial of degree 3 in its parameters, with mixed terms
    between layers: its degree-3 expansion equals the network at θ0 + δ, degree 2 does not."""
    model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 2)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    for method in METHODS:
        for degree, exact_expected in [(2, False), (3, True), (4, True)]:
            tay = nk.taylor_expand(model, degree, method=method)
            delta = random_delta(tay, scale=0.5)
            set_delta(tay, delta)
            theta = {n: p + delta[n] for n, p in model.named_parameters()}
            moved = functional_call(model, theta, (x,))
            assert (rel_err(tay(x).detach(), moved.detach()) < 1e-10) == exact_expected


def directional_derivatives(model, names, delta, x, order):
    """φ⁽ʲ⁾(0), j = 0..order, for φ(t) = model(x; θ0 + tδ): repeated plain autograd in the scalar t, one output
    entry at a time (an independent route: no torch.func transform, no dummy cotangent)."""
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    theta = {n: p.detach() + t * delta[n] if n in names else p.detach() for n, p in model.named_parameters()}
    out = functional_call(model, theta, (x,)).reshape(-1)
    derivs = [out.detach()]
    current = list(out)
    for _ in range(order):
        current = [
            torch.autograd.grad(c, t, create_graph=True, allow_unused=True)[0] if c.requires_grad else None
            for c in current
        ]
        current = [c if c is not None else torch.zeros((), dtype=torch.float64) for c in current]
        derivs.append(torch.stack([c.detach() for c in current]))
    return derivs


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("degree", [0, 2, 3])
def test_taylor_of_mlp_matches_directional_derivatives(method, degree):
    model = mlp()
    x = torch.randn(3, 5, dtype=torch.float64)
    tay = nk.taylor_expand(model, degree, ["0.*", "2.weight"], method=method)
    delta = random_delta(tay)
    set_delta(tay, delta)
    derivs = directional_derivatives(model, tay.param_names, delta, x, degree)
    expected = sum(d / math.factorial(j) for j, d in enumerate(derivs)).reshape(3, 3)
    out = tay(x).detach()
    assert rel_err(out, expected) < 1e-10
    if degree > 0:  # the highest term matters: dropping it is far outside the tolerance
        assert rel_err(out, expected - derivs[-1].reshape(3, 3) / math.factorial(degree)) > 1e-6


def test_jvp_and_double_vjp_agree_with_gradients():
    """The two routes give the same outputs and the same gradients with respect to θ (CNN, degree 1 and 2)."""
    model = cnn()
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    for degree in (1, 2):
        a = nk.taylor_expand(model, degree)
        b = nk.taylor_expand(model, degree, method="double_vjp")
        set_delta(a, random_delta(a))
        b.load_state_dict(a.state_dict())
        out_a, out_b = a(x), b(x)
        assert rel_err(out_b.detach(), out_a.detach()) < 1e-10
        weights = torch.randn_like(out_a)
        (out_a * weights).sum().backward()
        (out_b * weights).sum().backward()
        for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
            assert rel_err(pb.grad, pa.grad) < 1e-10


def test_no_grad_and_inference_mode():
    model = mlp()
    x = torch.randn(3, 5, dtype=torch.float64)
    lin = nk.linearize(model)
    set_delta(lin, random_delta(lin))
    expected = lin(x).detach()
    for method in METHODS:
        lin.method = method
        with torch.no_grad():
            out = lin(x)
        assert not out.requires_grad and rel_err(out, expected) < 1e-10
    lin.method = "jvp"
    with torch.inference_mode():
        assert rel_err(lin(x), expected) < 1e-10


class TiedAutoencoder(nn.Module):
    """Decoder weight tied to the encoder's: one parameter used in two places."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(4, 4), nn.Linear(4, 4)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(torch.tanh(self.enc(x)))


@pytest.mark.parametrize("method", METHODS)
def test_tied_weights_stay_tied(method):
    """θ holds the tied weight once, and moving it moves both of its uses (J0 sums both contributions)."""
    model = TiedAutoencoder().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    lin = nk.linearize(model, method=method)
    assert lin.param_names == ("enc.weight", "enc.bias", "dec.bias")
    delta = random_delta(lin)
    set_delta(lin, delta)
    expected = dense_linearization(model, x, delta)
    assert rel_err(lin(x).detach(), expected) < 1e-10
