"""The full-batch training loop against closed forms for a model that is linear in its parameters
(theory.md §2.3: the linearized dynamics are exact there) and an explicit heavy-ball recursion."""

import copy
import itertools

import numpy as np
import pytest
import torch

from ntkit.errors import InvalidArgumentError
from ntkit.experiments import dense, log_spaced_steps, train_full_batch, train_side_by_side
from reference import dense_jacobian, dense_ntk


def _linear_problem(n=8, d=5, k=2):
    model = dense(
        d, k, W_std=1.2, b_std=0.4, parameterization="ntk", generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )  # fmt: skip
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


def test_loss_curve_has_every_step_and_matches_the_recorded_losses():
    model, x, y = _linear_problem()
    hist = train_full_batch(model, x, y, lr=0.1, steps=6, record_steps=[0, 3])
    assert len(hist.loss_curve) == 7 and hist.loss_curve[0] == hist.loss[0] and hist.loss_curve[3] == hist.loss[1]
    assert all(b < a for a, b in itertools.pairwise(hist.loss_curve))  # a small step on a convex loss
    model, x, y = _linear_problem()
    hist = train_full_batch(model, x, y, lr=1e6, steps=200)
    assert hist.diverged and not np.isfinite(hist.loss_curve[-1]) and len(hist.loss_curve) < 201


def test_per_parameter_learning_rates():
    """One SGD step with ``param_lr`` moves each parameter by −(its lr)·(its gradient), computed here by autograd."""
    model, x, y = _linear_problem()
    loss = torch.nn.functional.mse_loss(model(x), y)
    g_w, g_b = torch.autograd.grad(loss, [model.weight, model.bias])
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    train_full_batch(model, x, y, lr=0.3, steps=1, param_lr={"bias": 0.05})
    torch.testing.assert_close(model.weight.detach(), w0 - 0.3 * g_w, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(model.bias.detach(), b0 - 0.05 * g_b, rtol=1e-14, atol=1e-15)
    with pytest.raises(InvalidArgumentError, match="unknown parameters"):
        train_full_batch(model, x, y, lr=0.3, steps=1, param_lr={"weights": 0.1})


def test_side_by_side_full_batch_equals_the_single_model_loop():
    model, x, y = _linear_problem()
    reference = copy.deepcopy(model)
    ref = train_full_batch(reference, x, y, lr=0.2, momentum=0.9, steps=7, record_steps=[0, 7])
    models = {"a": model, "b": copy.deepcopy(model)}
    hist = train_side_by_side(
        models, x, y, lr=0.2, momentum=0.9, steps=7, loss="mse", record_steps=[0, 7],
        on_record=lambda step, ms: {k: m(x).detach() for k, m in ms.items()},
    )  # fmt: skip
    assert hist.steps == [0, 7]
    for rec, out in zip(hist.records, ref.outputs, strict=True):
        assert torch.equal(rec["a"], out) and torch.equal(rec["b"], out)


def test_side_by_side_minibatches_are_shared_and_seeded():
    """The models see the same minibatches: an explicit loop with the same generator gives the same parameters."""
    model, x, _ = _linear_problem(k=3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    twin = copy.deepcopy(model)
    explicit = copy.deepcopy(model)
    train_side_by_side({"m": model, "twin": twin}, x, labels, lr=0.5, momentum=0.5, steps=5, batch_size=3, seed=4)
    gen, opt = torch.Generator().manual_seed(4), torch.optim.SGD(explicit.parameters(), lr=0.5, momentum=0.5)
    for _ in range(5):
        idx = torch.randint(0, 8, (3,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(explicit(x[idx]), labels[idx]).backward()
        opt.step()
    for a, b, c in zip(model.parameters(), twin.parameters(), explicit.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        train_side_by_side({"m": model}, x, labels, lr=0.1, steps=1, batch_size=0)
