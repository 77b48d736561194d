"""max_learning_rate and critical_learning_rate (theory.md §2.7): an explicit torch loop on a model linear in its
parameters converges at 0.99 x max_learning_rate and diverges at 1.01 x, with and without momentum."""

import pytest
import torch
from predict_helpers import RandomFeatures, kernels, sgd_loop

import ntkit as nk

N, N_OUT, STEPS = 10, 2, 1000


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("full", [False, True], ids=["per-output", "full"])
def test_loop_converges_below_and_diverges_above(full, momentum, reduction):
    """Along the top eigenmode the per-step factor is 1 − 1.98 = −0.98 at 0.99x (plain GD; |root| < 0.96 with
    momentum 0.9) and −1.02 (|root| 1.17) at 1.01x, so after 1000 steps the loss has fallen below 1e-12 of its
    start, or grown beyond 1e6 of it, with a wide margin either way."""
    torch.manual_seed(4)
    model = RandomFeatures(3, 48, N_OUT, mix=full).double()
    x = torch.randn(N, 3, dtype=torch.float64)
    y = torch.randn(N, N_OUT, dtype=torch.float64)
    k_train, _ = kernels(model, x, x, full)
    lr_max = nk.predict.max_learning_rate(k_train, n_outputs=N_OUT, momentum=momentum, reduction=reduction)
    loss = torch.nn.MSELoss(reduction=reduction)
    state = {n: p.detach().clone() for n, p in model.state_dict().items()}
    with torch.no_grad():
        start = float(loss(model(x), y))
    final = {}
    for factor in (0.99, 1.01):
        model.load_state_dict(state)
        out = sgd_loop(model, x, y, loss, factor * lr_max, STEPS, momentum=momentum, record=(STEPS,), x_record=x)
        final[factor] = float(loss(out[STEPS][0], y))
    assert final[0.99] < 1e-12 * start
    assert final[1.01] > 1e6 * start


def test_formulas_against_dense_eigenvalues():
    """max = 2(1 + β)/(s λ_max), critical = 2/(s (λ_min + λ_max)), s = 2/(N·O) (mean) or 2 (sum)."""
    a = torch.randn(8, 20, dtype=torch.float64)
    k = a @ a.T
    lam = torch.linalg.eigvalsh(k)
    lmin, lmax = float(lam[0]), float(lam[-1])
    assert nk.predict.max_learning_rate(k, n_outputs=3, momentum=0.5) == pytest.approx(1.5 * 8 * 3 / lmax, rel=1e-12)
    assert nk.predict.max_learning_rate(k, reduction="sum") == pytest.approx(1 / lmax, rel=1e-12)
    assert nk.predict.critical_learning_rate(k, n_outputs=3) == pytest.approx(8 * 3 / (lmin + lmax), rel=1e-12)
    assert nk.predict.critical_learning_rate(k, reduction="sum") == pytest.approx(1 / (lmin + lmax), rel=1e-12)
    # a full kernel Θ̃ ⊗ I has the same eigenvalues; its output count comes from the shape
    full = torch.einsum("nm,ab->nmab", k, torch.eye(3, dtype=torch.float64))
    assert nk.predict.max_learning_rate(full) == pytest.approx(nk.predict.max_learning_rate(k, n_outputs=3), rel=1e-12)
    with pytest.raises(nk.errors.ShapeError, match="n_outputs"):
        nk.predict.max_learning_rate(full, n_outputs=2)


def test_predictor_warns_above_max_and_refuses_the_limit():
    a = torch.randn(6, 12, dtype=torch.float64)
    k, y = a @ a.T, torch.randn(6, 1, dtype=torch.float64)
    lr = 1.01 * nk.predict.max_learning_rate(k)
    p = nk.predict.gradient_descent_mse(k, y, lr)
    with pytest.warns(nk.errors.NumericalWarning, match="diverges"):
        p(10, 0.0)
    with pytest.raises(nk.errors.InvalidArgumentError, match="does not converge"):
        p(None, 0.0)
    # gradient flow has no step-size limit
    assert torch.isfinite(nk.predict.gradient_descent_mse(k, y, lr, continuous=True)(None, 0.0)).all()
