"""Bad input to ntkit.predict: singular and non-PSD kernels, NaNs, shape mismatches, out-of-range arguments.
Each gives an ntkit error (or a documented warning and repair), never a NaN."""

import math

import pytest
import torch
from predict_helpers import rel, relu_kernels

import ntkit as nk
from ntkit.errors import (
    IllConditionedError,
    InvalidArgumentError,
    MemoryBudgetError,
    NonFiniteError,
    NotPSDError,
    NumericalWarning,
    ShapeError,
    UnsupportedError,
)

N, M, N_OUT = 10, 4, 2


def gram(n, p, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, p, generator=g, dtype=torch.float64)
    return a @ a.T, a


def spectrum_kernel(values):
    """V diag(values) Vᵀ with a random orthogonal V."""
    q, _ = torch.linalg.qr(torch.randn(len(values), len(values), dtype=torch.float64))
    return q @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ q.T


@pytest.fixture
def problem():
    k, a = gram(N, 30)
    x_test = torch.randn(M, 30, dtype=torch.float64)
    return k, x_test @ a.T, torch.randn(N, N_OUT, dtype=torch.float64)


def test_singular_kernel_converged_limit_uses_jitter_and_matches_pseudo_inverse():
    """Θ = J Jᵀ of rank 4 < N: the loop converges to f_0 − Θ Θ⁺ r_0 (null-space residuals stay). At t = inf
    the Cholesky factorization needs jitter (warned): 1e-8 x mean diagonal, which turns the round-off null-space
    eigenvalues (~1e-15) into ~4e-8, so the result is that limit up to ~1e-15/4e-8 + 4e-8/λ_min+ ~ 1e-8."""
    k, a = gram(N, 4)
    k_test = torch.randn(M, 4, dtype=torch.float64) @ a.T
    y, f0 = torch.randn(N, N_OUT, dtype=torch.float64), torch.randn(N, N_OUT, dtype=torch.float64)
    lr = 0.5 * nk.predict.max_learning_rate(k, n_outputs=N_OUT)
    p = nk.predict.gradient_descent_mse(k, y, lr)
    with pytest.warns(NumericalWarning, match="jitter"):
        train, test = p(None, f0, 0.0, k_test)
    pinv = torch.linalg.pinv(k, hermitian=True)
    assert rel(train, f0 - k @ pinv @ (f0 - y)) < 1e-6
    assert rel(test, -k_test @ pinv @ (f0 - y)) < 1e-6
    # finite times need no jitter: zero eigenvalues are exact (the null-space residual simply stays)
    late = p(10_000, f0)
    assert rel(late, f0 - k @ pinv @ (f0 - y)) < 1e-9


def test_ill_conditioned_kernel_names_condition_number_and_fix():
    """A slightly indefinite kernel (λ_min = −5e-7 λ_max, within the clipping tolerance but beyond the largest
    jitter, 1e-6 x mean diagonal = 1e-7 λ_max here) cannot be factored at t = inf."""
    k = spectrum_kernel([1.0] + [1e-3] * 8 + [-5e-7])
    y = torch.randn(N, 1, dtype=torch.float64)
    with pytest.raises(IllConditionedError, match="condition number"):
        nk.predict.gradient_descent_mse(k, y, continuous=True)(None, 0.0)
    with pytest.raises(IllConditionedError, match="diag_reg"):
        nk.predict.gp_inference({"nngp": k}, y)("nngp", {"nngp": k[:3]})
    # the suggested fix works
    fixed = nk.predict.gradient_descent_mse(k, y, continuous=True, diag_reg=1e-4)(None, 0.0)
    assert torch.isfinite(fixed).all()


def test_non_psd_kernels():
    y = torch.randn(N, 1, dtype=torch.float64)
    bad = spectrum_kernel([1.0] * 9 + [-0.1])
    with pytest.raises(NotPSDError, match="not positive semi-definite"):
        nk.predict.gradient_descent_mse(bad, y, 0.1)(5, 0.0)
    with pytest.raises(NotPSDError, match="not positive semi-definite"):
        nk.predict.gradient_descent_mse(bad, y, 0.1, continuous=True)(None, 0.0)
    with pytest.raises(NotPSDError):
        nk.predict.max_learning_rate(bad)
    # slightly negative (1e-9 relative, e.g. float32 round-off): clipped, with a warning that says how negative
    slight = spectrum_kernel([1.0] * 9 + [-1e-9])
    with pytest.warns(NumericalWarning, match=r"-1e-09"):
        out = nk.predict.gradient_descent_mse(slight, y, 1.0)(5, 0.0)
    assert torch.isfinite(out).all()
    # not symmetric (a test-train kernel passed as train kernel, say)
    asym = torch.randn(N, N, dtype=torch.float64)
    with pytest.raises(NotPSDError, match="not symmetric"):
        nk.predict.gradient_descent_mse(asym, y)(1, 0.0)
    with pytest.raises(NotPSDError, match="no positive eigenvalue"):
        nk.predict.gradient_descent_mse(torch.zeros(N, N, dtype=torch.float64), y)(1, 0.0)


def test_non_finite_inputs(problem):
    k, k_test, y = problem
    nan_k = k.clone()
    nan_k[0, 1] = math.nan
    with pytest.raises(NonFiniteError, match="ntk_train_train"):
        nk.predict.gradient_descent_mse(nan_k, y)
    nan_y = y.clone()
    nan_y[3, 0] = math.inf
    with pytest.raises(NonFiniteError, match="y_train"):
        nk.predict.gradient_descent_mse(k, nan_y)
    with pytest.raises(NonFiniteError, match="y_train"):
        nk.predict.gp_inference({"nngp": k}, nan_y)
    p = nk.predict.gradient_descent_mse(k, y, 1e-3)
    with pytest.raises(NonFiniteError, match="fx_train_0"):
        p(1, torch.full_like(y, math.nan))
    nan_test = k_test.clone()
    nan_test[0, 0] = math.nan
    with pytest.raises(NonFiniteError, match="ntk_test_train"):
        p(1, 0.0, 0.0, nan_test)
    with pytest.raises(NonFiniteError, match="t holds NaN"):
        p(torch.tensor([1.0, math.nan]), 0.0)
    with pytest.raises(NonFiniteError, match="learning_rate"):
        nk.predict.gradient_descent_mse(k, y, math.nan)


def test_shape_mismatches(problem):
    k, k_test, y = problem
    with pytest.raises(ShapeError, match=r"y_train has 11 rows .* the kernel of 10 examples"):
        nk.predict.gradient_descent_mse(k, torch.randn(N + 1, N_OUT, dtype=torch.float64))
    with pytest.raises(ShapeError, match="full"):
        nk.predict.gradient_descent_mse(torch.zeros(N, N, N_OUT + 1, N_OUT + 1, dtype=torch.float64), y)
    with pytest.raises(ShapeError, match=r"must be \(10, 10, 2, 2\)"):  # outputs (N, O, 2), the last axis traced
        nk.predict.gradient_descent_mse(k, torch.randn(N, N_OUT, 2, dtype=torch.float64), trace_axes=-1)
    with pytest.raises(ShapeError, match="pass trace_axes="):  # neither per-output nor full for outputs (N, O, 2)
        nk.predict.gradient_descent_mse(torch.zeros(N, N, 2, 2), torch.randn(N, N_OUT, 2, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="axis 0, the examples, cannot be traced"):
        nk.predict.gradient_descent_mse(k, y, trace_axes=(0,))
    with pytest.raises(InvalidArgumentError, match="trace_axes must be an int or a tuple"):
        nk.predict.gradient_descent_mse(k, y, trace_axes="channels")
    p = nk.predict.gradient_descent_mse(k, y, 1e-3)
    with pytest.raises(ShapeError, match="fx_train_0"):
        p(1, torch.zeros(N, N_OUT + 1, dtype=torch.float64))
    with pytest.raises(ShapeError, match="ntk_test_train"):
        p(1, 0.0, 0.0, k_test[:, :-1])
    with pytest.raises(ShapeError, match=r"\(M, 10, 2, 2\)"):  # per-output test kernel with a full train kernel
        full = torch.einsum("nm,ab->nmab", k, torch.eye(N_OUT, dtype=torch.float64))
        nk.predict.gradient_descent_mse(full, y, 1e-3)(1, 0.0, 0.0, k_test)
    with pytest.raises(ShapeError, match="fx_test_0"):
        p(1, 0.0, torch.zeros(M + 1, N_OUT, dtype=torch.float64), k_test)
    with pytest.raises(ShapeError, match="without ntk_test_train"):
        p(1, 0.0, torch.zeros(M, N_OUT, dtype=torch.float64))
    with pytest.raises(ShapeError, match="1-D"):
        p(torch.ones(2, 2), 0.0)
    with pytest.raises(ShapeError, match="per-output"):
        nk.predict.gp_inference({"nngp": k}, y)("nngp", {"nngp": k_test.T})


def test_out_of_range_arguments(problem):
    k, _, y = problem
    for kwargs, match in [
        (dict(learning_rate=-0.1), "learning_rate must be positive"),
        (dict(learning_rate=0.0), "learning_rate must be positive"),
        (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (dict(momentum=-0.1), r"momentum must be in \[0, 1\)"),
        (dict(reduction="avg"), "reduction"),
        (dict(diag_reg=-1e-3), "diag_reg"),
    ]:
        with pytest.raises(InvalidArgumentError, match=match):
            nk.predict.gradient_descent_mse(k, y, **kwargs)
    with pytest.raises(InvalidArgumentError, match="learning_rate"):
        nk.predict.gradient_descent(torch.nn.MSELoss(), k, y, -1.0)
    with pytest.raises(InvalidArgumentError, match="learning_rate"):
        nk.predict.gradient_descent_mse_ensemble(relu_kernels, torch.randn(N, 3), y, -1.0)
    with pytest.raises(InvalidArgumentError, match="momentum"):
        nk.predict.max_learning_rate(k, momentum=1.5)
    with pytest.raises(UnsupportedError, match="dtype"):
        nk.predict.gradient_descent_mse(k, y, dtype=torch.float16)
    p = nk.predict.gradient_descent_mse(k, y, 1e-3)
    with pytest.raises(InvalidArgumentError, match=">= 0"):
        p(-1, 0.0)
    with pytest.raises(InvalidArgumentError, match="whole number"):
        nk.predict.gradient_descent_mse(k, y, 1e-3, momentum=0.5)(2.5, 0.0)
    # a fractional step is undefined when some factor 1 − cλ is negative
    lr = 0.75 * nk.predict.max_learning_rate(k, n_outputs=N_OUT)
    with pytest.raises(InvalidArgumentError, match="flip sign"):
        nk.predict.gradient_descent_mse(k, y, lr)(2.5, 0.0)


def test_general_loss_errors(problem):
    k, _, y = problem
    labels = torch.randint(0, N_OUT, (N,))
    ce = nk.predict.gradient_descent(torch.nn.CrossEntropyLoss(), k, labels, 0.1)
    with pytest.raises(ShapeError, match="fx_train_0"):
        ce(3, 0.0)
    f0 = torch.zeros(N, N_OUT, dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match="no closed-form limit"):
        ce(None, f0)
    with pytest.raises(InvalidArgumentError, match="whole number"):
        ce(1.5, f0)
    per_example = nk.predict.gradient_descent(torch.nn.MSELoss(reduction="none"), k, y, 0.1)
    with pytest.raises(UnsupportedError, match="scalar"):
        per_example(1, 0.0)
    with pytest.raises(NonFiniteError, match="diverged"):
        nk.predict.gradient_descent(torch.nn.MSELoss(reduction="sum"), k, y, 1e3)(200, 1.0)


def test_kernel_arguments(problem):
    k, k_test, y = problem
    x = torch.randn(N, 3, dtype=torch.float64)
    with pytest.raises(UnsupportedError, match="plain tensor"):  # "ntk" with a covariance needs K and Θ
        nk.predict.gp_inference(k, y)("ntk", k_test, k)
    only_nngp = nk.predict.gradient_descent_mse_ensemble(lambda a, b: {"nngp": relu_kernels(a, b)["nngp"]}, x, y, 0.1)
    with pytest.raises(UnsupportedError, match="'ntk'"):
        only_nngp(1, None, "ntk")
    with pytest.raises(InvalidArgumentError, match="get"):
        only_nngp(1, None, "ntkgp")
    with pytest.raises(InvalidArgumentError, match="get"):
        nk.predict.gp_inference({"nngp": k}, y)("bayes", {"nngp": k_test})
    wrong = nk.predict.gradient_descent_mse_ensemble(lambda a, b: relu_kernels(a, b[:-1]), x, y, 0.1)
    with pytest.raises(ShapeError, match="kernel_fn"):
        wrong(1, None, "nngp")
    with pytest.raises(InvalidArgumentError, match="kernel_fn"):
        nk.predict.gradient_descent_mse_ensemble("relu", x, y)


def test_memory_budget_is_checked(problem, monkeypatch):
    """Every predictor that factors the train kernel checks the same budget first (issue 10 item 9: gp_inference
    and max_learning_rate ignored it)."""
    k, k_test, y = problem
    kernels = {"nngp": k, "ntk": k}
    monkeypatch.setenv("NTKIT_MEMORY_BUDGET", "1K")
    with pytest.raises(MemoryBudgetError, match="eigendecomposition"):
        nk.predict.gradient_descent_mse(k, y, 1e-3)(1, 0.0)
    with pytest.raises(MemoryBudgetError, match=r"k_train_train\.nngp"):
        nk.predict.gp_inference(kernels, y)("nngp", {"nngp": k_test})
    with pytest.raises(MemoryBudgetError, match="ntk_train_train"):
        nk.predict.max_learning_rate(k)
    with pytest.raises(MemoryBudgetError, match="ntk_train_train"):
        nk.predict.critical_learning_rate(k)


def test_weight_change_shape_mismatch():
    model = torch.nn.Linear(3, 2).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ShapeError, match="y_train"):
        nk.predict.weight_change(model, x, torch.randn(5, 3, dtype=torch.float64), 0.1, 1)
