"""The infinite ensemble of infinitely wide networks trained by gradient descent on MSE (theory.md §3.2-3.3).

At infinite width the initial outputs are Gaussian, f_0 ~ N(0, K) (K the NNGP), and a network trained
for t steps is the affine map of them given by :func:`~ntkit.predict.gradient_descent_mse`'s dynamics,
f_t(x) = f_0(x) − Θ(x, X) V diag(g_t) Vᵀ (f_0(X) − Y), with Θ = V diag(λ) Vᵀ the dynamics kernel (the NTK
for ``get="ntk"``: all layers trained, eqs. 14-15; the NNGP for ``get="nngp"``: only the readout trained,
SM D) and g_t = (1 − φ_t(λ))/λ the per-mode coefficients of :mod:`ntkit.predict.modes`. So at test
points T, with A = Θ_TX V, C = K_TX V, K̃ = Vᵀ K V and A_t = A diag(g_t):

    mean_t = A_t Vᵀ Y,     cov_t = K_TT − A_t Cᵀ − C A_tᵀ + A_t K̃ A_tᵀ             (theory.md §3.2, matrix form)

and on the train set mean_t = Y − V φ_t Vᵀ Y, cov_t = V φ_t K̃ φ_t Vᵀ. For ``get="nngp"`` (Θ = K) this is
cov_t = K_TT − A diag((1 − φ_t²)/λ) Aᵀ: the e^{−2ηKt} of the v3 erratum (theory.md §3.3), not e^{−ηKt}.
t = inf gives :func:`~ntkit.predict.gp_inference`'s "ntk" / "nngp" posteriors (computed by Cholesky).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._memory import resolve_budget
from .._validation import parse_get
from ..errors import InvalidArgumentError
from .args import parse_times
from .eigen import stacked_matmul
from .gp import Prediction, TestKernels, TrainingSet, covariance_result, part_getter, posterior
from .modes import Schedule, check_limit_exists, check_times, mode_factors, warn_if_divergent

__all__ = ["EnsemblePredictor", "gradient_descent_mse_ensemble"]

ENSEMBLE_GETS = ("nngp", "ntk")


def gradient_descent_mse_ensemble(
    kernel_fn: Callable[[torch.Tensor, torch.Tensor], object],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    learning_rate: float = 1.0,
    *,
    momentum: float = 0.0,
    reduction: str = "mean",
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    continuous: bool = False,
    dtype: torch.dtype = torch.float64,
) -> EnsemblePredictor:
    """Mean and covariance of the infinite ensemble of infinite-width networks trained on MSE.

    Args:
        kernel_fn: ``kernel_fn(x1, x2)`` returning an ``nk.Kernel`` (or any object with ``.nngp`` and ``.ntk``,
            or a dict with "nngp" and "ntk") of per-output (N1, N2) kernels. Called once on the training set
            (cached), and per prediction on (x_test, x_train) and, for covariances, (x_test, x_test). The
            train-train and test-test calls pass one tensor as both arguments, so ``nk.kernel`` takes its
            symmetric (x2=None) path there.
        x_train: training inputs, passed to ``kernel_fn``.
        y_train: targets (N, O) or (N,).
        learning_rate, momentum, reduction, continuous: the training loop, as in :func:`gradient_descent_mse`.
        diag_reg: added to the diagonal of the kernel of the dynamics (the NTK for "ntk", the NNGP for "nngp"),
            times its mean diagonal (or as is with ``diag_reg_absolute_scale=True``); the NNGP K inside the "ntk"
            covariance is f_0's covariance and stays unregularized (neural-tangents' rule).
        dtype: dtype of the linear algebra (float64 by default).

    Returns:
        ``predict(t=None, x_test=None, get="ntk", compute_cov=False)``: the mean ([T,] M, O), or
        ``(mean, covariance ([T,] M, M))`` with ``compute_cov`` (the same for every output), at time(s) ``t``
        (None or inf: converged). ``x_test=None`` gives the train set. ``get`` is "ntk" (all layers trained),
        "nngp" (readout only) or a tuple of them (then a dict keyed by name).
    """
    if not callable(kernel_fn):
        raise InvalidArgumentError(f"kernel_fn must be a callable kernel_fn(x1, x2), got {type(kernel_fn).__name__}.")
    train = TrainingSet.build(
        kernel_fn(x_train, x_train), y_train, "kernel_fn(x_train, x_train)", diag_reg, diag_reg_absolute_scale, dtype
    )
    n_entries = train.layout.n_train * train.layout.n_outputs
    schedule = Schedule.from_loop(learning_rate, momentum, reduction, continuous, n_entries)
    return EnsemblePredictor(kernel_fn, x_train, train, schedule)


class EnsemblePredictor:
    """See :func:`gradient_descent_mse_ensemble`. Holds ``kernel_fn``, the training inputs, the prepared
    :class:`~ntkit.predict.gp.TrainingSet` and the ``schedule`` of the training loop."""

    def __init__(self, kernel_fn: Callable[..., Any], x_train: object, train: TrainingSet, schedule: Schedule):
        self._kernel_fn, self._x_train, self.schedule = kernel_fn, x_train, schedule
        self.train = train
        self._train, self._y, self.layout = train.kernels, train.y, train.layout
        self.device, self.dtype = train.device, train.kernels.dtype

    def __call__(
        self, t: object = None, x_test: torch.Tensor | None = None, get: object = "ntk", compute_cov: bool = False
    ) -> Prediction | dict[str, Prediction]:
        times, scalar = parse_times(t)
        names, single = parse_get(get, ENSEMBLE_GETS)
        if x_test is None:
            test = None
        else:
            k_td = self._kernel_fn(x_test, self._x_train)
            k_tt = self._kernel_fn(x_test, x_test) if compute_cov else None
            labels = ("kernel_fn(x_test, x_train)", "kernel_fn(x_test, x_test)")
            test = TestKernels(
                part_getter(k_td, labels[0], self.device),
                None if k_tt is None else part_getter(k_tt, labels[1], self.device),
                self.layout.n_train,
                self.dtype,
                labels,
            )
        out: dict[str, Prediction] = {}
        for name in names:
            mean, cov = self._predict(name, times, test, bool(compute_cov))
            mean = self.train.output(mean, self._train.input_dtype(name))
            if scalar:
                mean, cov = mean[0], None if cov is None else cov[0]
            out[name] = mean if cov is None else (mean, cov.to(mean.dtype))
        return out[names[0]] if single else out

    def _predict(
        self, name: str, times: torch.Tensor, test: TestKernels | None, compute_cov: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Means (T, M, C) and covariances (T, M, M) (or None) at ``times``."""
        finite = torch.isfinite(times)
        parts: list[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]] = []
        if bool(finite.any()):
            parts.append((finite.nonzero().squeeze(1), self._finite(name, times[finite], test, compute_cov)))
        if not bool(finite.all()):
            check_limit_exists(
                self.schedule, self._train.matrix(name), lambda: float(self._train.eigen(name).values[-1])
            )
            on = test or self._on_train_set(name)
            result = posterior(self._train, self._y, name, on, compute_cov)
            mean, cov = result if isinstance(result, tuple) else (result, None)
            parts.append(((~finite).nonzero().squeeze(1), (mean[None], None if cov is None else cov[None])))
        return _assemble(times.numel(), parts)

    def _on_train_set(self, name: str) -> TestKernels:
        """The train set as test points at t = inf, seen as the finite-time formulas see it: the kernel of the
        dynamics with ``diag_reg`` (so the mean is Y), the NNGP K of the "ntk" covariance without it."""

        def part(kernel: str) -> torch.Tensor:
            return self._train.prior(kernel) if kernel != name else self._train.matrix(kernel)

        return TestKernels(part, part, self.layout.n_train, self.dtype)

    def _finite(
        self, name: str, times: torch.Tensor, test: TestKernels | None, compute_cov: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        eig = self._train.eigen(name)
        v, lam = eig.vectors, eig.values
        check_times(times, lam, self.schedule)
        warn_if_divergent(self.schedule, float(lam[-1]))
        phi, g = mode_factors(lam, times, self.schedule)  # (T, N)
        if test is None:
            mean = self._y - eig.combine(phi, self._y)
            return mean, self._train_cov(name, v, lam, phi) if compute_cov else None
        k_td = test.test_train(name)
        mean = stacked_matmul(k_td, eig.combine(g, self._y))
        return mean, self._test_cov(name, test, k_td @ v, lam, g) if compute_cov else None

    def _test_cov(
        self, name: str, test: TestKernels, a: torch.Tensor, lam: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        """cov_t at test points, (T, M, M), in chunks of times that fit the memory budget."""
        k_tt = test.test_test("nngp")
        if name == "nngp":  # Θ = K: cov_t = K_TT − A diag(g(2 − λg)) Aᵀ, g(2 − λg) = (1 − φ²)/λ
            weights = g * (2 - lam * g)
            covs = [k_tt - (a * w[:, None, :]) @ a.T for w in self._chunks(weights, a)]
        else:  # ½ A_t K̃ A_tᵀ − C A_tᵀ, plus its transpose
            c = test.test_train("nngp") @ self._train.eigen(name).vectors
            k_tilde = self._train.in_eigenbasis("nngp", name)
            covs = []
            for gc in self._chunks(g, a):
                a_t = a * gc[:, None, :]
                half = (a_t @ k_tilde).mul_(0.5).sub_(c) @ a_t.transpose(1, 2)
                covs.append(k_tt + half + half.transpose(1, 2))
        return covariance_result(torch.cat(covs))

    def _train_cov(self, name: str, v: torch.Tensor, lam: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """cov_t on the train set, V φ_t K̃ φ_t Vᵀ, (T, N, N)."""
        if name == "nngp":  # K̃ = diag(λ)
            covs = [(b := v * (p * lam.sqrt())[:, None, :]) @ b.transpose(1, 2) for p in self._chunks(phi, v)]
        else:
            k_tilde = self._train.in_eigenbasis("nngp", name)
            covs = [(b := v * p[:, None, :]) @ k_tilde @ b.transpose(1, 2) for p in self._chunks(phi, v)]
        return covariance_result(torch.cat(covs))

    def _chunks(self, per_time: torch.Tensor, rows: torch.Tensor) -> list[torch.Tensor]:
        """``per_time`` (T, N) split along T so that a few (chunk, M, N) intermediates fit the memory budget."""
        per_step = 4 * rows.numel() * rows.element_size()
        size = max(1, resolve_budget(None, rows.device) // per_step)
        return list(torch.split(per_time, size))


def _assemble(
    n_times: int, parts: list[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Put per-part results (finite times, t = inf) back in the order of the requested times."""
    if len(parts) == 1 and parts[0][1][0].shape[0] == n_times:  # all finite: already in order
        return parts[0][1]
    first_mean, first_cov = parts[0][1]
    mean = first_mean.new_empty(n_times, *first_mean.shape[1:])
    cov = None if first_cov is None else first_cov.new_empty(n_times, *first_cov.shape[1:])
    for idx, (m, c) in parts:
        mean[idx] = m
        if cov is not None and c is not None:
            cov[idx] = c
    return mean, cov
