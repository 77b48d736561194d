"""gradient_descent on any loss (theory.md §2.6): cross-entropy against an explicit torch loop on a model
linear in its parameters, and the ODE solution against the small-step limit and the MSE closed form."""

import pytest
import torch
from predict_helpers import RandomFeatures, kernels, rel, sgd_loop

import ntkit as nk

N, M, N_OUT = 12, 5, 3
STEPS = (1, 10, 200)


def setup(full):
    torch.manual_seed(2)
    model = RandomFeatures(4, 64, N_OUT, mix=full).double()
    x = torch.randn(N + M, 4, dtype=torch.float64)
    labels = torch.randint(0, N_OUT, (N,))
    k_train, k_test = kernels(model, x[:N], x[N:], full)
    with torch.no_grad():
        f0 = model(x)
    return model, x, labels, k_train, k_test, f0


@pytest.mark.parametrize("full", [False, True], ids=["per-output", "full"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("one_hot", [False, True], ids=["labels", "probabilities"])
def test_cross_entropy_matches_sgd_loop(full, momentum, one_hot):
    """Exact function-space iteration versus torch.optim.SGD on CrossEntropyLoss: the same arithmetic up to
    round-off (the loop updates θ, the predictor f), so 1e-9 relative over 200 steps."""
    model, x, labels, k_train, k_test, f0 = setup(full)
    y = torch.nn.functional.one_hot(labels, N_OUT).double() if one_hot else labels
    loss = torch.nn.CrossEntropyLoss()
    lr = 0.2
    predictor = nk.predict.gradient_descent(loss, k_train, y, lr, momentum=momentum)
    loop = sgd_loop(model, x[:N], y, loss, lr, max(STEPS), momentum=momentum, record=STEPS, x_record=x)
    train, test = predictor(torch.tensor(STEPS), f0[:N], f0[N:], k_test)
    for i, step in enumerate(STEPS):
        assert rel(train[i], loop[step][0][:N]) < 1e-9, step
        assert rel(test[i], loop[step][0][N:]) < 1e-9, step


@pytest.mark.parametrize("momentum", [0.0, 0.6])
def test_ode_converges_to_small_step_limit(momentum):
    """At fixed continuous time (τ = t·lr, or t·√lr with momentum) the discrete iteration with lr/q and the
    matching number of steps approaches the ODE solution as q grows. The discretization error is O(lr/q) for
    gradient flow and O(sqrt(lr/q)) for the heavy-ball ODE (time step √lr): from q = 4 to q = 16 it must
    shrink by at least 80% of the expected factor (4, or 2) and end small."""
    _, _, labels, k_train, k_test, f0 = setup(False)
    loss = torch.nn.CrossEntropyLoss()
    lr, steps = 0.2, 40
    flow = nk.predict.gradient_descent(loss, k_train, labels, lr, momentum=momentum, continuous=True)
    ref_train, ref_test = flow(steps, f0[:N], f0[N:], k_test)
    errors = []
    for q in (4, 16):
        # same continuous time: t·lr (plain) or t·√lr (heavy ball); momentum scaled so γ = (1 − β)/√lr is fixed
        lr_q = lr / q
        steps_q, beta_q = (steps * q, 0.0) if momentum == 0 else (int(steps * q**0.5), 1 - (1 - momentum) / q**0.5)
        discrete = nk.predict.gradient_descent(loss, k_train, labels, lr_q, momentum=beta_q)
        train, test = discrete(steps_q, f0[:N], f0[N:], k_test)
        errors.append(max(rel(train, ref_train), rel(test, ref_test)))
    expected = 4 if momentum == 0 else 2
    assert errors[1] < errors[0] / (0.8 * expected)
    assert errors[1] < 1e-2


@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_ode_with_mse_matches_closed_form(momentum):
    """The ODE solver on torch.nn.MSELoss equals gradient_descent_mse's closed form (continuous), to the solver
    tolerance (rtol 1e-10 on α -> 1e-7 relative on outputs is safe)."""
    _, _, _, k_train, k_test, f0 = setup(False)
    y = torch.randn(N, N_OUT, dtype=torch.float64)
    lr, times = 0.05, torch.tensor([2.0, 30.0, 200.0])
    ode = nk.predict.gradient_descent(torch.nn.MSELoss(), k_train, y, lr, momentum=momentum, continuous=True)
    closed = nk.predict.gradient_descent_mse(k_train, y, lr, momentum=momentum, continuous=True)
    a_train, a_test = ode(times, f0[:N], f0[N:], k_test)
    b_train, b_test = closed(times, f0[:N], f0[N:], k_test)
    assert rel(a_train, b_train) < 1e-7 and rel(a_test, b_test) < 1e-7


def test_discrete_mse_matches_closed_form():
    """The iteration with MSELoss(reduction="sum") equals the closed form at whole steps (1e-10)."""
    _, _, _, k_train, _, f0 = setup(True)
    y = torch.randn(N, N_OUT, dtype=torch.float64)
    lr = 0.3 * nk.predict.max_learning_rate(k_train, reduction="sum", momentum=0.5)
    it = nk.predict.gradient_descent(torch.nn.MSELoss(reduction="sum"), k_train, y, lr, momentum=0.5)
    closed = nk.predict.gradient_descent_mse(k_train, y, lr, momentum=0.5, reduction="sum")
    assert rel(it(torch.tensor([0, 5, 50]), f0[:N]), closed(torch.tensor([0, 5, 50]), f0[:N])) < 1e-10


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("continuous", [False, True], ids=["steps", "ode"])
def test_resuming_from_a_state_equals_one_call(momentum, continuous):
    """p.state(t1) then p(t2, start=state) against p(t2) from step 0 (issue 10 item 10). Whole steps repeat the
    same arithmetic, so they agree to round-off (1e-12 relative); the ODE restarts its adaptive steps at t1, so
    they agree to the solver's tolerance (rtol 1e-10 on α, 1e-7 relative on the outputs)."""
    _, _, labels, k_train, k_test, f0 = setup(False)
    p = nk.predict.gradient_descent(torch.nn.CrossEntropyLoss(), k_train, labels, 0.2, momentum=momentum,
                                    continuous=continuous)  # fmt: skip
    times = torch.tensor([30.0, 55.0])
    train, test = p(times, f0[:N], f0[N:], k_test)
    state = p.state(12, f0[:N])
    assert state.t == 12 and rel(state.fx_train, p(12, f0[:N])) < 1e-12
    state = p.state(30, start=state)  # resumed twice
    again_train, again_test = p(times, fx_test_0=f0[N:], ntk_test_train=k_test, start=state)
    tol = 1e-7 if continuous else 1e-12
    assert rel(again_train, train) < tol and rel(again_test, test) < tol


def test_bad_start_states():
    _, _, labels, k_train, _, f0 = setup(False)
    loss = torch.nn.CrossEntropyLoss()
    p = nk.predict.gradient_descent(loss, k_train, labels, 0.2)
    other = nk.predict.gradient_descent(loss, k_train, labels, 0.1)
    state = p.state(5, f0[:N])
    with pytest.raises(nk.errors.InvalidArgumentError, match="before the start state's t = 5"):
        p(3, start=state)
    with pytest.raises(nk.errors.InvalidArgumentError, match="another predictor"):
        other(10, start=state)
    with pytest.raises(nk.errors.InvalidArgumentError, match="either start= or fx_train_0"):
        p(10, f0[:N], start=state)
    with pytest.raises(nk.errors.ShapeError, match="one time"):
        p.state([1, 2], f0[:N])
