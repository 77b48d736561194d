"""Training a linearized model with torch.optim equals training the explicit linear model f0 + J0 (θ − θ0)
built from the dense float64 Jacobian (``reference.dense_jacobian``, flattened θ, explicit matrices), and
the closed form ``nk.predict.gradient_descent_mse`` at the same step (1e-9: an eigendecomposition instead of
a loop), and its empirical NTK stays Θ̂0. Tolerance 1e-10 relative: both sides are exact float64 recursions on the same
numbers, differing only in summation order (~1e-15 per step, a few dozen steps)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from linearize_cases import bn_model, flat, mlp
from torch import nn

import ntkit as nk
from reference import dense_jacobian, dense_ntk, rel_err


@dataclass
class LinearTrajectory:
    train: torch.Tensor  # f_t(X_train), (N, O)
    test: torch.Tensor  # f_t(X_test), (M, O)
    omega: torch.Tensor  # θ_t − θ0, (P,)


def explicit_linear_sgd(jac_train, jac_test, f0_train, f0_test, y, *, lr, momentum, steps, reduction):
    """Heavy-ball SGD as torch.optim.SGD runs it (buf ← μ buf + g, buf_1 = g_1; θ ← θ − lr buf), written out
    for f(θ) = f0 + J ω on MSELoss(reduction): g = c Jᵀ (f(X) − Y) with c = 2/(N O) ("mean") or 2 ("sum")."""
    j = jac_train.reshape(-1, jac_train.shape[-1])  # (N O, P)
    c = 2.0 / y.numel() if reduction == "mean" else 2.0
    omega = torch.zeros(j.shape[1], dtype=j.dtype)
    buf = None
    for _ in range(steps):
        residual = f0_train.reshape(-1) + j @ omega - y.reshape(-1)
        grad = c * (j.T @ residual)
        buf = grad if buf is None else momentum * buf + grad
        omega = omega - lr * buf
    train = f0_train + (j @ omega).reshape(f0_train.shape)
    test = f0_test + (jac_test.reshape(-1, j.shape[1]) @ omega).reshape(f0_test.shape)
    return LinearTrajectory(train, test, omega)


def train_with_optimizer(module, x, y, optimizer, loss_fn, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(module(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize(("factory", "shape", "params"), [(mlp, (5,), None), (bn_model, (2, 6, 6), ["1.*", "4.*"])])
def test_sgd_on_mse_equals_explicit_linear_model(factory, shape, params, momentum, reduction):
    model = factory()
    x_train, x_test = torch.randn(8, *shape, dtype=torch.float64), torch.randn(5, *shape, dtype=torch.float64)
    steps, lr = 25, (0.05 if reduction == "mean" else 0.005)
    lin = nk.linearize(model, params)
    y = torch.randn_like(model(x_train))
    opt = torch.optim.SGD(lin.parameters(), lr=lr, momentum=momentum)
    train_with_optimizer(lin, x_train, y, opt, nn.MSELoss(reduction=reduction), steps)
    with torch.no_grad():
        got_train, got_test = lin(x_train), lin(x_test)
        f0_train, f0_test = model(x_train), model(x_test)
    jac_train = dense_jacobian(model, x_train, lin.param_names)
    jac_test = dense_jacobian(model, x_test, lin.param_names)
    want = explicit_linear_sgd(
        jac_train, jac_test, f0_train, f0_test, y, lr=lr, momentum=momentum, steps=steps, reduction=reduction
    )
    assert rel_err(got_train - f0_train, want.train - f0_train) < 1e-10
    assert rel_err(got_test - f0_test, want.test - f0_test) < 1e-10
    assert rel_err(flat(lin.delta(), lin.param_names).detach(), want.omega) < 1e-10
    assert rel_err(want.train, f0_train) > 1e-2  # training moved the outputs: the comparison is not at θ0
    # The closed form of ntkit.predict (full (N, N, O, O) kernel of this finite network) gives the same outputs.
    ntk = nk.empirical_ntk(model, x_train, params=params, trace_outputs=False)
    ntk_test = nk.empirical_ntk(model, x_test, x_train, params=params, trace_outputs=False)
    predictor = nk.predict.gradient_descent_mse(ntk, y, lr, momentum=momentum, reduction=reduction)
    pred_train, pred_test = predictor(steps, f0_train, f0_test, ntk_test)
    assert rel_err(pred_train - f0_train, want.train - f0_train) < 1e-9
    assert rel_err(pred_test - f0_test, want.test - f0_test) < 1e-9


class ExplicitLinearModel(nn.Module):
    """f0(x) + J0(x) (θ − θ0) with one flattened θ and the dense Jacobian of a fixed batch."""

    def __init__(self, f0, jac, theta0):
        super().__init__()
        self.f0, self.jac, self.theta0 = f0, jac.reshape(-1, jac.shape[-1]), theta0
        self.theta = nn.Parameter(theta0.clone())

    def forward(self, _x):
        return self.f0 + (self.jac @ (self.theta - self.theta0)).reshape(self.f0.shape)


def test_adamw_on_cross_entropy_equals_explicit_linear_model():
    """Any optimizer and any loss: AdamW (with weight decay, which acts on θ, not on θ − θ0) on cross-entropy.
    AdamW is elementwise, so one flattened parameter vector follows the same trajectory."""
    model = mlp()
    x = torch.randn(10, 5, dtype=torch.float64)
    labels = torch.randint(0, 3, (10,))
    lin = nk.linearize(model)
    theta0 = flat(lin.theta0(), lin.param_names)
    explicit = ExplicitLinearModel(model(x).detach(), dense_jacobian(model, x), theta0)
    for module in (lin, explicit):
        opt = torch.optim.AdamW(module.parameters(), lr=0.05, weight_decay=0.1)
        train_with_optimizer(module, x, labels, opt, nn.CrossEntropyLoss(), steps=15)
    assert rel_err(lin(x).detach(), explicit(x).detach()) < 1e-10
    assert rel_err(flat(dict(lin.theta.named_parameters()), lin.param_names).detach(), explicit.theta.detach()) < 1e-10
    assert rel_err(explicit.theta.detach(), theta0) > 1e-2


@pytest.mark.parametrize(
    ("factory", "shape", "params"), [(mlp, (5,), None), (bn_model, (2, 6, 6), ["0.*", "4.weight"])]
)
def test_ntk_of_trained_linearized_model_is_ntk_at_init(factory, shape, params):
    """Θ̂ of the linearized model is J0 J0ᵀ at every θ; the network trained the same way has a moving Θ̂,
    which shows that the comparison can fail."""
    model = factory()
    x = torch.randn(6, *shape, dtype=torch.float64)
    y = torch.randn_like(model(x))
    lin = nk.linearize(model, params)
    net = copy.deepcopy(model)
    selected = [p for n, p in net.named_parameters() if n in lin.param_names]
    for module, ps in ((lin, lin.parameters()), (net, selected)):
        train_with_optimizer(module, x, y, torch.optim.SGD(ps, lr=0.1, momentum=0.9), nn.MSELoss(), steps=20)
    assert rel_err(flat(lin.delta(), lin.param_names).detach(), flat(lin.theta0(), lin.param_names)) > 1e-2
    for trace_outputs in (True, False):
        ntk0 = dense_ntk(model, x, names=lin.param_names, trace_outputs=trace_outputs)
        got = nk.empirical_ntk(lin, x, trace_outputs=trace_outputs)
        assert rel_err(got, ntk0) < 1e-10
        assert rel_err(dense_ntk(net, x, names=lin.param_names, trace_outputs=trace_outputs), ntk0) > 1e-3
