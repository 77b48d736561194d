"""The full-batch training loop against closed forms for a model that is linear in its parameters
(theory.md 2.3: the linearized dynamics are exact there) and an explicit heavy-ball recursion."""

import numpy as np
import pytest
import torch

from ntkit.errors import InvalidArgumentError
from ntkit.experiments import NTKDense, log_spaced_steps, train_full_batch
from reference import dense_jacobian, dense_ntk


def _linear_problem(n=8, d=5, k=2):
    model = NTKDense(d, k, W_std=1.2, b_std=0.4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(n, d, dtype=torch.float64)
    y = torch.randn(n, k, dtype=torch.float64)
    return model, x, y


def test_gradient_descent_matches_the_closed_form_for_a_linear_model():
    """f_t − y = (I − η·2/(Nk)·Θ)^t (f_0 − y), with Θ the full (Nk × Nk) NTK; exact up to float64 round-off."""
    model, x, y = _linear_problem()
    n, k = y.shape
    theta = dense_ntk(model, x, trace_outputs=False).permute(0, 2, 1, 3).reshape(n * k, n * k)
    with torch.no_grad():
        r0 = (model(x) - y).reshape(-1)
    lr, steps = 0.3, 40
    hist = train_full_batch(model, x, y, lr=lr, steps=steps, record_steps=[0, 7, steps])
    step_matrix = torch.eye(n * k, dtype=torch.float64) - lr * 2 / (n * k) * theta
    for t, out in zip(hist.steps, hist.outputs, strict=True):
        expected = torch.linalg.matrix_power(step_matrix, t) @ r0
        torch.testing.assert_close((out - y).reshape(-1), expected, rtol=1e-10, atol=1e-12)
    assert hist.steps == [0, 7, 40] and hist.loss[0] > hist.loss[-1]
    assert hist.loss[0] == pytest.approx(float((r0**2).mean()), rel=1e-12)


def test_momentum_matches_an_explicit_heavy_ball_recursion():
    """torch.optim.SGD momentum: v ← βv + g, θ ← θ − ηv, computed here in numpy from the dense Jacobian."""
    model, x, y = _linear_problem()
    n, k = y.shape
    J = dense_jacobian(model, x).reshape(n * k, -1).numpy()
    with torch.no_grad():
        f0 = model(x).reshape(-1).numpy()
    lr, beta, steps = 0.2, 0.9, 25
    x_eval = torch.randn(3, 5, dtype=torch.float64)
    hist = train_full_batch(model, x, y, lr=lr, momentum=beta, steps=steps, record_steps=[steps], x_eval=x_eval)
    dtheta, v = np.zeros(J.shape[1]), np.zeros(J.shape[1])
    yv = y.reshape(-1).numpy()
    for _ in range(steps):
        g = J.T @ (2 / (n * k) * (f0 + J @ dtheta - yv))
        v = beta * v + g
        dtheta = dtheta - lr * v
    np.testing.assert_allclose(hist.outputs[-1].reshape(-1).numpy(), f0 + J @ dtheta, rtol=1e-10, atol=1e-12)
    assert hist.eval_outputs[0].shape == (3, 2)


def test_records_callback_and_divergence():
    model, x, y = _linear_problem()
    seen = []
    hist = train_full_batch(
        model, x, y, lr=0.01, steps=5, record_steps=[0, 2, 5], on_record=lambda s, m: seen.append(s) or s
    )
    assert seen == [0, 2, 5] and hist.records == [0, 2, 5] and not hist.diverged
    model, x, y = _linear_problem()
    hist = train_full_batch(model, x, y, lr=1e6, steps=200, record_steps=range(201))
    assert hist.diverged and not np.isfinite(hist.loss[-1]) and hist.steps[-1] < 200


def test_cross_entropy_loss_runs_and_decreases():
    model, x, _ = _linear_problem(k=3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    hist = train_full_batch(model, x, labels, lr=0.5, steps=30, record_steps=[0, 30], loss="cross_entropy")
    assert hist.loss[-1] < hist.loss[0]


def test_bad_arguments():
    model, x, y = _linear_problem()
    with pytest.raises(InvalidArgumentError, match="record_steps"):
        train_full_batch(model, x, y, lr=0.1, steps=3, record_steps=[4])
    with pytest.raises(InvalidArgumentError, match="loss"):
        train_full_batch(model, x, y, lr=0.1, steps=3, loss="hinge")


def test_log_spaced_steps():
    s = log_spaced_steps(1024, 11)
    assert s == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert log_spaced_steps(5, 20, include_zero=False) == [1, 2, 3, 4, 5]
    with pytest.raises(InvalidArgumentError):
        log_spaced_steps(0, 3)
