"""gradient_descent_mse_ensemble: the mean and covariance of the infinite ensemble (theory.md §3.2-3.3) against

- the exact affine-Gaussian algebra written with dense matrices: f_t = A f_0 + b with f_0 ~ N(0, Σ), so
  mean = b and cov = A Σ Aᵀ, with A built from a dense matrix power / exponential / heavy-ball recursion
  and a dense solve (no eigendecomposition);
- Monte Carlo: initial outputs sampled from N(0, Σ) and trained by an explicit function-space loop;
- gp_inference at t = inf.
"""

import math

import pytest
import torch
from predict_helpers import rel, relu_kernels

import ntkit as nk

N, M, N_OUT = 14, 5, 2


def problem(seed=3):
    torch.manual_seed(seed)
    x = torch.randn(N + M, 3, dtype=torch.float64)
    y = torch.randn(N, N_OUT, dtype=torch.float64)
    return x[:N], x[N:], y


def residual_map(theta, c, t, momentum, continuous, lr):
    """S_t with r_t = S_t r_0 for the dense train kernel ``theta`` (N, N), by the definition of each regime."""
    eye = torch.eye(theta.shape[0], dtype=theta.dtype)
    if continuous:
        return torch.linalg.matrix_exp(-c * t * theta)
    if momentum == 0:
        return torch.linalg.matrix_power(eye - c * theta, t)
    # heavy ball: [r_{k+1}; r_k] = [[(1+β)I − cΘ, −βI], [I, 0]] [r_k; r_{k−1}], r_{−1} = r_0
    companion = torch.cat(
        [torch.cat([(1 + momentum) * eye - c * theta, -momentum * eye], 1), torch.cat([eye, 0 * eye], 1)]
    )
    power = torch.linalg.matrix_power(companion, t)
    return power[:N, :N] + power[:N, N:]


def dense_gaussian(
    kernels_train, kernels_test, kernels_tt, y, get, c, t, momentum=0.0, continuous=False, lr=1.0, diag_reg=0.0
):
    """Mean and covariance of f_t on [test; train] by the affine-Gaussian algebra, dense. ``diag_reg`` (relative to
    the mean diagonal) regularizes only the kernel of the dynamics (the one inverted), neural-tangents' rule: for
    "ntk" the train block of f_0's covariance stays the plain NNGP K."""
    dyn = "nngp" if get == "nngp" else "ntk"
    eye = torch.eye(N, dtype=torch.float64)
    kernels_train = dict(kernels_train)
    kernels_train[dyn] = kernels_train[dyn] + diag_reg * kernels_train[dyn].diagonal().mean() * eye
    theta, theta_test = kernels_train[dyn], kernels_test[dyn]
    s = residual_map(theta, c, t, momentum, continuous, lr)
    gain = theta_test @ torch.linalg.solve(theta, torch.eye(N, dtype=theta.dtype) - s)  # Θ_TX Θ⁻¹ (I − S_t)
    # f_t(T) = f_0(T) − gain (f_0(X) − y),  f_t(X) = S_t f_0(X) + (I − S_t) y
    a = torch.cat([torch.cat([torch.eye(M, dtype=s.dtype), -gain], 1), torch.cat([torch.zeros(N, M), s], 1)])
    sigma = torch.cat(
        [
            torch.cat([kernels_tt["nngp"], kernels_test["nngp"]], 1),
            torch.cat([kernels_test["nngp"].T, kernels_train["nngp"]], 1),
        ]
    )
    b = torch.cat([gain @ y, y - s @ y])
    return b, a @ sigma @ a.T


CASES = [
    ("ntk", dict()),
    ("nngp", dict()),
    ("ntk", dict(momentum=0.8)),
    ("ntk", dict(continuous=True)),
    ("nngp", dict(continuous=True)),
    ("ntk", dict(reduction="sum")),
    ("ntk", dict(diag_reg=1e-2)),
    ("nngp", dict(diag_reg=1e-2)),
]


@pytest.mark.parametrize(("get", "options"), CASES)
def test_matches_dense_affine_gaussian(get, options):
    x_train, x_test, y = problem()
    k_train, k_test, k_tt = relu_kernels(x_train, x_train), relu_kernels(x_test, x_train), relu_kernels(x_test, x_test)
    scale = 2.0 if options.get("reduction") == "sum" else 2 / y.numel()
    lr = 0.4 * nk.predict.max_learning_rate(
        k_train["ntk"], n_outputs=N_OUT, **{k: v for k, v in options.items() if k in ("momentum", "reduction")}
    )
    predict = nk.predict.gradient_descent_mse_ensemble(relu_kernels, x_train, y, lr, **options)
    times = [1, 10, 100]
    mean, cov = predict(torch.tensor(times), x_test, get=get, compute_cov=True)
    mean_train, cov_train = predict(torch.tensor(times), None, get=get, compute_cov=True)
    assert mean.shape == (3, M, N_OUT) and cov.shape == (3, M, M) and cov_train.shape == (3, N, N)
    for i, t in enumerate(times):
        ref_mean, ref_cov = dense_gaussian(
            k_train,
            k_test,
            k_tt,
            y,
            get,
            lr * scale,
            t,
            options.get("momentum", 0.0),
            options.get("continuous", False),
            lr,
            options.get("diag_reg", 0.0),
        )
        # dense solve/power vs eigenbasis: both backward stable, cond(Θ) ~ 1e3 -> ~1e-12; 1e-9 leaves margin
        assert rel(mean[i], ref_mean[:M]) < 1e-9
        assert rel(cov[i], ref_cov[:M, :M]) < 1e-9
        assert rel(mean_train[i], ref_mean[M:]) < 1e-9
        assert rel(cov_train[i], ref_cov[M:, M:]) < 1e-9


def test_readout_only_variance_uses_twice_the_rate():
    """theory.md §3.3 (the v3 erratum): Var f_t = K_** − K_*X K⁻¹ (I − e^{−2ηKt}) K_X* (not e^{−ηKt})."""
    x_train, x_test, y = problem()
    k, k_s, k_ss = relu_kernels(x_train, x_train)["nngp"], relu_kernels(x_test, x_train)["nngp"], None
    k_ss = relu_kernels(x_test, x_test)["nngp"]
    lr, t = 2.0, 30.0
    c = lr * 2 / y.numel()
    _, cov = nk.predict.gradient_descent_mse_ensemble(relu_kernels, x_train, y, lr, continuous=True)(
        t, x_test, get="nngp", compute_cov=True
    )
    eye = torch.eye(N, dtype=k.dtype)
    right = k_ss - k_s @ torch.linalg.solve(k, eye - torch.linalg.matrix_exp(-2 * c * t * k)) @ k_s.T
    wrong = k_ss - k_s @ torch.linalg.solve(k, eye - torch.linalg.matrix_exp(-c * t * k)) @ k_s.T
    assert rel(cov, right) < 1e-10
    assert rel(cov, wrong) > 1e-3


def sample_and_train(k_train, k_test, k_tt, y, get, c, t, n_samples):
    """Monte Carlo: f_0 ~ N(0, Σ) (n_samples draws), then t explicit GD steps in function space."""
    sigma = torch.cat([torch.cat([k_tt["nngp"], k_test["nngp"]], 1), torch.cat([k_test["nngp"].T, k_train["nngp"]], 1)])
    chol = torch.linalg.cholesky(sigma + 1e-12 * torch.eye(M + N, dtype=sigma.dtype))
    f0 = chol @ torch.randn(M + N, n_samples, dtype=sigma.dtype)  # each column one draw of one output
    f_test, f_train = f0[:M], f0[M:]
    dyn = "nngp" if get == "nngp" else "ntk"
    for _ in range(t):
        residual = f_train - y[:, :1]
        f_test = f_test - c * k_test[dyn] @ residual
        f_train = f_train - c * k_train[dyn] @ residual
    return f_test


@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_matches_monte_carlo(get):
    """40 000 draws. Each mean entry must lie within 4 standard errors (sqrt(var/S)) of the prediction and each
    covariance entry within 4 standard errors of a sample covariance (sqrt((Σ_ii Σ_jj + Σ_ij²)/S)); with a fixed
    seed the test is deterministic, and a wrong formula (e.g. e^{−ηKt} variance) is off by many SE."""
    x_train, x_test, y = problem()
    k_train, k_test, k_tt = relu_kernels(x_train, x_train), relu_kernels(x_test, x_train), relu_kernels(x_test, x_test)
    lr, t, n_samples = 0.4 * nk.predict.max_learning_rate(k_train["ntk"], n_outputs=N_OUT), 10, 40_000
    mean, cov = nk.predict.gradient_descent_mse_ensemble(relu_kernels, x_train, y, lr)(t, x_test, get, True)
    c = lr * 2 / y.numel()
    torch.manual_seed(11)
    samples = sample_and_train(k_train, k_test, k_tt, y, get, c, t, n_samples)
    se_mean = (cov.diagonal() / n_samples).sqrt()
    assert ((samples.mean(1) - mean[:, 0]).abs() <= 4 * se_mean).all()
    sample_cov = torch.cov(samples)
    var = cov.diagonal()
    se_cov = ((var[:, None] * var[None, :] + cov**2) / n_samples).sqrt()
    assert ((sample_cov - cov).abs() <= 4 * se_cov).all()


@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_converged_limit_is_gp_inference(get):
    x_train, x_test, y = problem()
    predict = nk.predict.gradient_descent_mse_ensemble(relu_kernels, x_train, y, 0.5, diag_reg=1e-3)
    gp = nk.predict.gp_inference(relu_kernels(x_train, x_train), y, diag_reg=1e-3)
    mean, cov = predict(None, x_test, get, compute_cov=True)
    ref_mean, ref_cov = gp(get, relu_kernels(x_test, x_train), relu_kernels(x_test, x_test))
    assert rel(mean, ref_mean) < 1e-12 and rel(cov, ref_cov) < 1e-12
    # the closed form at a late finite time (eigenbasis) approaches the Cholesky-based limit
    late_mean, late_cov = predict(1e6, x_test, get, compute_cov=True)
    assert rel(late_mean, ref_mean) < 1e-8 and rel(late_cov, ref_cov) < 1e-8
    # mixing finite and infinite times keeps their order
    both = predict(torch.tensor([math.inf, 3.0, math.inf]), x_test, get)
    assert rel(both[0], ref_mean) < 1e-12 and rel(both[1], predict(3, x_test, get)) < 1e-14
    assert torch.equal(both[2], both[0])
    assert predict(torch.tensor([math.inf, math.inf]), x_test, get).shape == (2, M, N_OUT)


def test_covariances_symmetric_psd_and_tuple_get():
    x_train, x_test, y = problem()
    predict = nk.predict.gradient_descent_mse_ensemble(relu_kernels, x_train, y, 0.5, momentum=0.5)
    out = predict(torch.tensor([0, 1, 7, 50]), x_test, get=("nngp", "ntk"), compute_cov=True)
    assert set(out) == {"nngp", "ntk"}
    for mean, cov in out.values():
        assert mean.shape == (4, M, N_OUT)
        assert torch.equal(cov, cov.transpose(1, 2))
        # PSD to round-off: eigenvalues >= −1e-12 × the largest
        evals = torch.linalg.eigvalsh(cov)
        assert (evals >= -1e-12 * evals[:, -1:].abs()).all()
    # t = 0: the prior, N(0, K_TT)
    assert rel(out["ntk"][1][0], relu_kernels(x_test, x_test)["nngp"]) < 1e-13
    assert out["ntk"][0][0].abs().max() < 1e-13


def test_kernel_fn_called_once_on_the_training_set():
    x_train, x_test, y = problem()
    calls = []

    def counting(x1, x2):
        calls.append((x1.shape[0], x2.shape[0]))
        return relu_kernels(x1, x2)

    predict = nk.predict.gradient_descent_mse_ensemble(counting, x_train, y, 0.5)
    predict(3, x_test, "ntk", compute_cov=True)
    predict(None, x_test, ("ntk", "nngp"))
    assert calls.count((N, N)) == 1


@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_train_set_limit_with_diag_reg(get):
    """With diag_reg the train set at t = inf is seen as at finite t (the regularized dynamics kernel, the
    unregularized K in the "ntk" covariance): the limit equals a late finite time, to the round-off of the
    eigenbasis (1e-10 for cond(Θ) ~ 1e3)."""
    x_train, _, y = problem()
    predict = nk.predict.gradient_descent_mse_ensemble(relu_kernels, x_train, y, 1.0, diag_reg=1e-2, continuous=True)
    mean, cov = predict(torch.tensor([1e9, math.inf]), None, get, compute_cov=True)
    assert rel(mean[1], mean[0]) < 1e-10
    assert float((cov[1] - cov[0]).abs().max()) < 1e-10 * float(relu_kernels(x_train, x_train)["nngp"].abs().max())
