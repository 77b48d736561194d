"""Round-off rules of ntkit.predict (docs/predict.md, "Numerics and errors"): eigenvalues at round-off level are the
null space at every t; posterior variances are never negative."""

import pytest
import torch
from predict_helpers import rel, relu_kernels

import ntkit as nk

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def rank_deficient():
    """The empirical NTK (float64) of an 81-parameter network on 600 points: rank 81, so 519 eigenvalues are 0 in
    exact arithmetic; in float32 they become round-off of either sign (measured near 0.04·eps·λ_max)."""
    torch.manual_seed(0)
    n = 600
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    x, x_test = torch.randn(n, 3, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    with torch.no_grad():
        f0, f0_test = net(x), net(x_test)
    return nk.empirical_ntk(net, x), nk.empirical_ntk(net, x_test, x), y, f0, f0_test


def test_float32_kernel_stays_bounded_at_large_t(rank_deficient):
    """Issue 10 item 3: a float32 kernel gave test outputs of 26 (instead of ~1) at t = 1e12 because positive
    round-off eigenvalues were inverted. Reference: the closed form (1 − (1 − cλ)^t)/λ written here in float64 on
    the exact kernel's eigenmodes above the round-off level eps32·tr(K) (the documented rule); the rest stay put."""
    k, k_test, y, f0, f0_test = rank_deficient
    n = k.shape[0]
    lr = 0.5 * nk.predict.max_learning_rate(k)
    c = lr * 2 / n  # MSELoss(reduction="mean"), one output
    lam, v = torch.linalg.eigh(k)
    keep = lam > EPS32 * float(k.float().double().trace())
    lam, v = lam[keep], v[:, keep]
    coords = v.T @ (f0 - y)
    p32 = nk.predict.gradient_descent_mse(k.float(), y.float(), lr)
    p64 = nk.predict.gradient_descent_mse(k, y, lr)
    for t in (1e3, 1e6, 1e9, 1e12, 1e30):
        g = -torch.expm1(t * torch.log1p(-c * lam)) / lam
        ref_train = f0 - k @ v @ (g[:, None] * coords)
        ref_test = f0_test - k_test @ v @ (g[:, None] * coords)
        train, test = p32(t, f0.float(), f0_test.float(), k_test.float())
        # The kept modes' eigenvalues carry the float32 kernel's round-off, ‖E‖ ≈ 0.1·eps·λ_max, relative error
        # up to ~5% for those just above the threshold (2.4·eps·λ_max here) and far less for the others; they
        # make up a small part of the outputs: measured 7e-5, so 1e-3 (before the fix: 25 at t = 1e12).
        assert rel(test.double(), ref_test) < 1e-3, t
        assert rel(train.double(), ref_train) < 1e-3, t
    # At t = 1000 the modes below the threshold (λ < 2.8e-7·λ_max) have moved by c·t·λ < 3e-4 of their part of
    # the residual, so the float32 prediction still agrees with the full float64 one (measured 4e-7).
    train, test = p32(1000, f0.float(), f0_test.float(), k_test.float())
    train64, test64 = p64(1000, f0, f0_test, k_test)
    assert rel(test.double(), test64) < 1e-4
    assert rel(train.double(), train64) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_posterior_variances_are_never_negative(dtype):
    """Issue 10 item 6: at training points the posterior variance is 0 in exact arithmetic, and round-off made it
    negative (-2e-16 in float64, -2e-13 in float32), so sqrt gave NaN error bars. Rule: variances (the diagonal of
    every returned covariance) are clamped at 0."""
    torch.manual_seed(1)
    x, y = torch.randn(30, 4, dtype=dtype), torch.randn(30, 2, dtype=dtype)
    k = relu_kernels(x, x)
    predict = nk.predict.gp_inference(k, y)
    for get in ("nngp", "ntk", "ntkgp"):
        _, cov = predict(get, k, k)
        assert bool((cov.diagonal() >= 0).all()), get
        # only round-off was removed: the variances at training points are 0 to round-off of the prior's scale
        assert float(cov.diagonal().max()) < 1e-5 * float(k["nngp"].diagonal().max()), get
    ensemble = nk.predict.gradient_descent_mse_ensemble(relu_kernels, x, y, learning_rate=1.0, continuous=True)
    for get in ("nngp", "ntk"):
        for x_test in (x, None):
            _, cov = ensemble(torch.tensor([1e6, float("inf")]), x_test, get, compute_cov=True)
            assert bool((cov.diagonal(dim1=1, dim2=2) >= 0).all()), (get, x_test is None)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_huge_step_counts_follow_one_rule(momentum):
    """Issue 10 item 9: momentum refused t = 2**62 while plain SGD accepted 2**70. One rule now: any t >= 0 that is
    a whole number of steps (every float above 2**53 is one). Reference: for a positive definite kernel below
    max_learning_rate, t = 2**62 or 2**70 steps is converged to round-off, i.e. the t = inf limit (Cholesky);
    tolerance 1e-10 for cond(Θ) ~ 1e3, and t = 2**300 (binary powering: 300 squarings) as well."""
    torch.manual_seed(2)
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    k_train, k_test = relu_kernels(x, x)["ntk"], relu_kernels(x[:4] + 0.1, x)["ntk"]
    lr = 0.5 * nk.predict.max_learning_rate(k_train, n_outputs=2, momentum=momentum)
    p = nk.predict.gradient_descent_mse(k_train, y, lr, momentum=momentum)
    f0, f0_test = torch.randn(12, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    limit = p(None, f0, f0_test, k_test)
    for t in (2**62, 2**70, 2.0**300, [2**62, 2**70]):
        train, test = p(t, f0, f0_test, k_test)
        assert rel(train, limit[0].expand_as(train)) < 1e-10, t
        assert rel(test, limit[1].expand_as(test)) < 1e-10, t
