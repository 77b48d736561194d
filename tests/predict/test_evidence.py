"""nk.predict.marginal_log_likelihood against scipy's Gaussian log density, and its gradients in W_std, b_std and
diag_reg against central finite differences."""

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import ntkit as nk
from ntkit import nn as N
from ntkit.errors import IllConditionedError, InvalidArgumentError, ShapeError

N_TRAIN, D, N_OUT = 20, 5, 3


def mlp(W_std, b_std):
    return N.Sequential(
        N.Linear(D, 8, W_std=W_std, b_std=b_std), N.ReLU(),
        N.Linear(8, 8, W_std=W_std, b_std=b_std), N.Erf(),
        N.Linear(8, 1, W_std=W_std, b_std=b_std),
    )  # fmt: skip


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN, D, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, :N_OUT] * 2) + 0.1 * torch.randn(N_TRAIN, N_OUT, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize(("diag_reg", "absolute"), [(0.0, False), (0.3, False), (0.05, True)])
def test_equals_gaussian_log_density(data, diag_reg, absolute):
    # Reference: scipy's multivariate normal log density of each output column under N(0, K + σ² I), summed.
    # Both are float64 Cholesky-based evaluations of the same number: 1e-10 relative.
    x, y = data
    k = nk.kernel(mlp(1.4, 0.3), x, get="nngp").nngp
    sigma2 = diag_reg if absolute else diag_reg * float(k.diagonal().mean())
    cov = k.numpy() + sigma2 * np.eye(N_TRAIN)
    ref = sum(multivariate_normal(np.zeros(N_TRAIN), cov).logpdf(y[:, o].numpy()) for o in range(N_OUT))
    value = nk.predict.marginal_log_likelihood(k, y, diag_reg, diag_reg_absolute_scale=absolute)
    assert value.dtype == torch.float64 and value.ndim == 0
    assert abs(float(value) - ref) < 1e-10 * abs(ref)
    # 1-D targets are one output
    one = nk.predict.marginal_log_likelihood(k, y[:, 0], diag_reg, diag_reg_absolute_scale=absolute)
    ref_one = multivariate_normal(np.zeros(N_TRAIN), cov).logpdf(y[:, 0].numpy())
    assert abs(float(one) - ref_one) < 1e-10 * abs(ref_one)


def test_float32_kernel_is_solved_in_float64(data):
    x, y = data
    k = nk.kernel(mlp(1.4, 0.3), x, get="nngp").nngp
    v64 = nk.predict.marginal_log_likelihood(k, y, 0.1)
    v32 = nk.predict.marginal_log_likelihood(k.float(), y.float(), 0.1)
    assert v32.dtype == torch.float64
    # only the rounding of the inputs to float32 differs (relative 6e-8 on entries, amplified by cond(A) ~ 1e2)
    assert abs(float(v32 - v64)) < 1e-4 * abs(float(v64))


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_gradients_match_central_differences(data, get):
    # d/dθ of log p(y | K(θ)) by autograd through nk.kernel and the Cholesky, against (f(θ+h) − f(θ−h)) / 2h.
    # Truncation error ~ h² f''' ~ 1e-10 and round-off ~ eps |f| / h ~ 1e-10 at h = 1e-5: 1e-6 relative holds
    # with a wide margin and fails for any missing term (e.g. a detached mean diagonal changes it by > 1e-2).
    x, y = data

    def evidence(W, b, reg):
        k = getattr(nk.kernel(mlp(W, b), x, get=get), get)
        return nk.predict.marginal_log_likelihood(k, y, reg)

    theta = torch.tensor([1.3, 0.4, 0.2], dtype=torch.float64, requires_grad=True)
    grad = torch.autograd.grad(evidence(*theta), theta)[0]
    h = 1e-5
    for i in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[i] = h
        with torch.no_grad():
            fd = (evidence(*(theta + step)) - evidence(*(theta - step))) / (2 * h)
        assert abs(float(grad[i] - fd)) < 1e-6 * max(1.0, abs(float(fd))), (i, float(grad[i]), float(fd))


def test_gradient_in_the_kernel_is_the_closed_form(data):
    # ∂ log p / ∂K = ½ (α αᵀ − O A⁻¹) summed over outputs, α = A⁻¹ y (Rasmussen & Williams eq. 5.9), A = K here.
    x, y = data
    k = nk.kernel(mlp(1.4, 0.3), x, get="nngp").nngp.clone().requires_grad_()
    grad = torch.autograd.grad(nk.predict.marginal_log_likelihood(k, y, 0.1, diag_reg_absolute_scale=True), k)[0]
    a_inv = torch.linalg.inv(k.detach() + 0.1 * torch.eye(N_TRAIN, dtype=torch.float64))
    alpha = a_inv @ y
    ref = 0.5 * (alpha @ alpha.T - N_OUT * a_inv)
    assert torch.allclose(grad, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


def test_bad_inputs_are_clear_errors(data):
    x, y = data
    k = nk.kernel(mlp(1.4, 0.3), x, get="nngp").nngp
    mll = nk.predict.marginal_log_likelihood
    with pytest.raises(ShapeError, match="square"):
        mll(k[:, :5], y)
    with pytest.raises(ShapeError, match="N = 20"):
        mll(k, y[:5])
    with pytest.raises(InvalidArgumentError, match="diag_reg must be >= 0"):
        mll(k, y, -0.1)
    with pytest.raises(InvalidArgumentError, match=r"k\.nngp or k\.ntk"):
        mll(nk.kernel(mlp(1.4, 0.3), x), y)
    low_rank = x[:, :2] @ x[:, :2].T  # rank 2: singular without noise
    with pytest.raises(IllConditionedError, match="larger diag_reg"):
        mll(low_rank, y)
    assert torch.isfinite(mll(low_rank, y, 1e-3))
