"""gradient_descent_mse and weight_change against an explicit torch training loop (torch.optim.SGD with and
without momentum on MSELoss, theory.md §2.3-2.5), and the continuous-time versions against dense matrix
exponentials / an ODE solver (§2.2, §2.5).

The model is linear in its parameters, so torch.optim.SGD on it is exactly the linearized dynamics: the
closed form and the loop differ by float64 round-off only, which grows at most like t·cond(Θ)·eps
(~1e-12 here). The tolerance 1e-9 relative leaves room for that and still catches any wrong factor
(a missing 2 of MSELoss, an off-by-one step, a wrong momentum convention are all O(1) errors).
"""

import math

import numpy as np
import pytest
import torch
from predict_helpers import RandomFeatures, kernels, rel, sgd_loop
from scipy.integrate import solve_ivp

import ntkit as nk

N, M, N_OUT, D_IN, P = 12, 5, 3, 4, 64
STEPS = (1, 10, 1000)


def setup(full: bool):
    torch.manual_seed(1)
    model = RandomFeatures(D_IN, P, N_OUT, mix=full).double()
    x = torch.randn(N + M, D_IN, dtype=torch.float64)
    y = torch.randn(N, N_OUT, dtype=torch.float64)
    k_train, k_test = kernels(model, x[:N], x[N:], full)
    return model, x, y, k_train, k_test


def mse_loop(model, x, y, lr, momentum, reduction):
    """torch.optim.SGD on MSELoss over the first N inputs, recording outputs on all inputs at STEPS."""
    loss = torch.nn.MSELoss(reduction=reduction)
    return sgd_loop(model, x[:N], y, loss, lr, max(STEPS), momentum=momentum, record=STEPS, x_record=x)


@pytest.mark.parametrize("full", [False, True], ids=["per-output", "full"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_matches_sgd_loop(full, reduction, momentum):
    model, x, y, k_train, k_test = setup(full)
    lr = 0.5 * nk.predict.max_learning_rate(k_train, n_outputs=N_OUT, momentum=momentum, reduction=reduction)
    with torch.no_grad():
        f0 = model(x)
    predictor = nk.predict.gradient_descent_mse(k_train, y, lr, momentum=momentum, reduction=reduction)
    loop = mse_loop(model, x, y, lr, momentum, reduction)
    train, test = predictor(torch.tensor(STEPS), f0[:N], f0[N:], k_test)
    for i, step in enumerate(STEPS):
        assert rel(train[i], loop[step][0][:N]) < 1e-9, step
        assert rel(test[i], loop[step][0][N:]) < 1e-9, step
    # after 1000 steps the slowest mode has contracted by < 1e-20 (cond(Θ) ~ 10 here): the loop has converged
    train_inf, test_inf = predictor(None, f0[:N], f0[N:], k_test)
    assert rel(train_inf, loop[1000][0][:N]) < 1e-9
    assert rel(test_inf, loop[1000][0][N:]) < 1e-9
    # scalar t gives the same as the stacked result
    assert rel(predictor(10, f0[:N]), train[1]) < 1e-13


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weight_change_matches_loop(momentum, reduction):
    model, x, y, k_train, _ = setup(full=False)
    lr = 0.5 * nk.predict.max_learning_rate(k_train, n_outputs=N_OUT, momentum=momentum, reduction=reduction)
    omega = nk.predict.weight_change(model, x[:N], y, lr, torch.tensor(STEPS), momentum=momentum, reduction=reduction)
    omega_inf = nk.predict.weight_change(model, x[:N], y, lr, None, momentum=momentum, reduction=reduction)
    loop = mse_loop(model, x, y, lr, momentum, reduction)
    assert set(omega) == {"readout.weight", "readout.bias"}
    for i, step in enumerate(STEPS):
        for name, change in loop[step][1].items():
            assert omega[name].shape == (len(STEPS), *change.shape)
            assert rel(omega[name][i], change) < 1e-9, (name, step)
    for name, change in loop[1000][1].items():
        assert rel(omega_inf[name], change) < 1e-9, name


def test_weight_change_parameter_selection():
    """Only the selected parameters move; their change equals the loop that trains only them."""
    model, x, y, _, _ = setup(full=False)
    k_bias = nk.empirical_ntk(model, x[:N], params=["readout.bias"], trace_outputs=False)
    lr = 0.5 * nk.predict.max_learning_rate(k_bias)
    omega = nk.predict.weight_change(model, x[:N], y, lr, 7, params=["readout.bias"])
    model.readout.weight.requires_grad_(False)
    loop = sgd_loop(model, x[:N], y, torch.nn.MSELoss(), lr, 7, record=(7,), x_record=x)
    assert set(omega) == {"readout.bias"}
    assert rel(omega["readout.bias"], loop[7][1]["readout.bias"]) < 1e-9


def dense_gradient_flow(k_train, k_test, f0_train, f0_test, y, c, t):
    """f_t on train and test by a dense matrix exponential and solve (theory.md §2.2-2.3, eqs. 9-11, with cΘ)."""
    decay = torch.linalg.matrix_exp(-c * t * k_train)
    r0 = f0_train - y
    train = y + decay @ r0
    test = f0_test - k_test @ torch.linalg.solve(k_train, r0 - decay @ r0)
    return train, test


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradient_flow_matches_matrix_exponential(reduction):
    model, x, y, k_train, k_test = setup(full=False)
    with torch.no_grad():
        f0 = model(x)
    lr = 0.3
    c = lr * (2 / y.numel() if reduction == "mean" else 2.0)
    predictor = nk.predict.gradient_descent_mse(k_train, y, lr, reduction=reduction, continuous=True)
    times = torch.tensor([0.5, 3.0, 40.0])
    train, test = predictor(times, f0[:N], f0[N:], k_test)
    for i, t in enumerate(times.tolist()):
        ref_train, ref_test = dense_gradient_flow(k_train, k_test, f0[:N], f0[N:], y, c, t)
        # expm and solve are backward stable; cond(Θ) ~ 10 keeps the forward error near 1e-14
        assert rel(train[i], ref_train) < 1e-10
        assert rel(test[i], ref_test) < 1e-10


def test_momentum_flow_matches_ode_solver():
    """Continuous heavy ball (theory.md §2.5): r̈ = −γṙ − sΘr in τ = t·√lr, γ = (1 − β)/√lr, solved by scipy
    with tight tolerances on the dense system; the closed form (per-mode matrix exponentials) must agree to
    the solver's accuracy (rtol 1e-11 -> 1e-8 relative is safe)."""
    _, _, y, k_train, _ = setup(full=False)
    f0 = torch.randn(N, N_OUT, dtype=torch.float64)
    lr, beta = 0.05, 0.7
    scale = 2 / y.numel()
    predictor = nk.predict.gradient_descent_mse(k_train, y, lr, momentum=beta, continuous=True)
    times = np.array([1.0, 20.0, 300.0])
    h, gamma = math.sqrt(lr), (1 - beta) / math.sqrt(lr)
    k, r0 = k_train.numpy(), (f0 - y).numpy()

    def rhs(_, state):
        r, v = state[: r0.size].reshape(r0.shape), state[r0.size :].reshape(r0.shape)
        return np.concatenate([v.ravel(), (-gamma * v - scale * k @ r).ravel()])

    sol = solve_ivp(
        rhs,
        (0, times[-1] * h),
        np.concatenate([r0.ravel(), np.zeros(r0.size)]),
        method="DOP853",
        t_eval=times * h,
        rtol=1e-11,
        atol=1e-13,
    )
    got = predictor(torch.from_numpy(times), f0)
    for i in range(len(times)):
        ref = torch.from_numpy(sol.y[: r0.size, i].reshape(r0.shape)) + y
        assert rel(got[i], ref) < 1e-8


def test_fractional_steps_form_a_semigroup():
    """For plain GD with all factors 1 − cλ > 0, t may be fractional: (1 − cλ)^a (1 − cλ)^b = (1 − cλ)^{a+b},
    so predicting 2.5 steps from the 2.5-step outputs gives the 5-step outputs."""
    _, _, y, k_train, _ = setup(full=False)
    f0 = torch.randn(N, N_OUT, dtype=torch.float64)
    lr = 0.4 * nk.predict.max_learning_rate(k_train, n_outputs=N_OUT)
    predictor = nk.predict.gradient_descent_mse(k_train, y, lr)
    assert rel(predictor(2.5, predictor(2.5, f0)), predictor(5, f0)) < 1e-12


def test_vector_targets_and_float32_dtype():
    """(N,) targets give (N,) outputs; float32 inputs give float32 outputs (linear algebra still in float64)."""
    _, _, y, k_train, k_test = setup(full=False)
    lr = 0.5 * nk.predict.max_learning_rate(k_train)
    f0 = torch.randn(N, dtype=torch.float64)
    p64 = nk.predict.gradient_descent_mse(k_train, y[:, 0], lr)
    train, test = p64(torch.tensor([3, 4]), f0, 0.0, k_test)
    assert train.shape == (2, N) and test.shape == (2, M)
    p32 = nk.predict.gradient_descent_mse(k_train.float(), y[:, 0].float(), lr)
    train32 = p32(3, f0.float())
    assert train32.dtype == torch.float32
    assert rel(train32.double(), train[0]) < 1e-6  # float32 rounding of the inputs
    p_single = nk.predict.gradient_descent_mse(k_train, y[:, 0], lr, dtype=torch.float32)
    assert rel(p_single(3, f0), train[0]) < 1e-5  # float32 linear algebra, cond(Θ) ~ 10
