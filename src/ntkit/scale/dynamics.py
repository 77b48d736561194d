"""``nk.scale.gradient_descent_mse``: the outputs of gradient-descent training on MSE at finite times t, from NTKs
too large for the eigendecomposition of :func:`ntkit.predict.gradient_descent_mse`, which it equals on small N.

With the regularized train NTK Θ̃ = Θ + δI, targets Y and the loop's schedule (learning rate, MSE scale, momentum,
discrete or continuous: :mod:`ntkit.predict.modes`), the train residual and the dual coefficients are matrix
functions of Θ̃ applied to r_0 = f_0(X) − Y (theory.md §2.2-2.5):

    f_t(X) = Y + φ_t(Θ̃) r_0,    α_t = g_t(Θ̃) r_0,    f_t(x) = f_0(x) − Θ(x, X) α_t,

e.g. φ_t(λ) = e^{−cλt}, g_t(λ) = (1 − e^{−cλt}) / λ for gradient flow. Both are computed for every output column
and every requested time by one Lanczos run (:mod:`ntkit.scale.krylov`: one product with Θ̃ per step, streamed
tile by tile from a store, or from memory when the stored tiles fit the memory budget), whose Ritz values go
through the same per-eigenmode formulas as the dense predictor. No eigendecomposition of Θ is formed.
"""

from __future__ import annotations

from typing import Any

import torch

from .._memory import resolve_budget
from ..errors import InvalidArgumentError, ShapeError
from ..predict.args import parse_times
from ..predict.modes import Schedule, check_times, mode_factors, warn_if_divergent
from .gp import training_system
from .krylov import lanczos_functions
from .matrix import KernelMatrix

__all__ = ["ScaleMSEPredictor", "gradient_descent_mse"]


def gradient_descent_mse(
    k_train_train: Any,
    y_train: torch.Tensor,
    learning_rate: float = 1.0,
    *,
    momentum: float = 0.0,
    reduction: str = "mean",
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    continuous: bool = False,
    tol: float = 1e-10,
    max_iter: int = 500,
    memory_budget: int | str | None = None,
) -> ScaleMSEPredictor:
    """Predictor of gradient-descent training on MSE at finite times (module docs), for a large train NTK.

    Args:
        k_train_train: the train NTK: a :class:`~ntkit.scale.KernelStore` with "ntk", a tensor (N, N), or an
            ``nk.Kernel`` / dict with ``ntk``.
        y_train, learning_rate, momentum, reduction, diag_reg, diag_reg_absolute_scale, continuous: as for
            :func:`ntkit.predict.gradient_descent_mse` (per-output kernels only).
        tol, max_iter: Lanczos stops when every result changed by at most ``tol`` (relative) in the last step;
            :class:`~ntkit.errors.NotConvergedError` after ``max_iter`` steps (each one product with Θ).
        memory_budget: the stored tiles are kept in memory when they fit it (else read once per step).

    Returns:
        :class:`ScaleMSEPredictor` ``p``: ``p(t, fx_train_0=0.0, fx_test_0=None, k_test_train=None)``.
    """
    train, y, shift = training_system(k_train_train, "ntk", y_train, diag_reg, diag_reg_absolute_scale)
    schedule = Schedule.from_loop(learning_rate, momentum, reduction, continuous, y.numel())
    train.keep_in_memory_if_fits(resolve_budget(memory_budget))
    return ScaleMSEPredictor(train, y, shift, schedule, tol, max_iter)


class ScaleMSEPredictor:
    """See :func:`gradient_descent_mse`. ``steps``: the Lanczos steps of the last call."""

    def __init__(
        self, train: KernelMatrix, y: torch.Tensor, shift: float, schedule: Schedule, tol: float, max_iter: int
    ):
        self._train, self._shift, self.schedule = train, shift, schedule
        self._vector = y.ndim == 1
        self._y = y.reshape(y.shape[0], -1).to(torch.float64)
        self._out_dtype = y.dtype
        self._tol, self._max_iter = tol, max_iter
        self.steps = 0

    def __call__(
        self, t: object, fx_train_0: object = 0.0, fx_test_0: object = None, k_test_train: Any = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Outputs after ``t`` steps (a number or a 1-D tensor of times; finite), as the dense predictor's call.

        Args:
            t: time(s) in optimizer steps (time t·lr with ``continuous``; t·√lr with momentum too).
            fx_train_0: outputs at initialization on the train set, (N, O) like ``y_train``, or a number.
            fx_test_0: outputs at initialization on the test set, (M, O), a number, or None (0).
            k_test_train: the test-train NTK (M, N): a KernelStore, a tensor, or an nk.Kernel / dict.

        Returns:
            ``fx_train_t`` ([T,] N, O), or ``(fx_train_t, fx_test_t)`` when ``k_test_train`` is given.
        """
        times, scalar = parse_times(t)
        if not bool(torch.isfinite(times).all()):
            raise InvalidArgumentError(
                "t must be finite: the converged outputs (t = inf) are the posterior mean of "
                "nk.scale.gp_inference(k_train_train, y_train - fx_train_0, get='ntk') plus the initial outputs."
            )
        n, o = self._y.shape
        r0 = self._outputs(fx_train_0, "fx_train_0", n) - self._y
        count = times.numel()

        def factors(theta: torch.Tensor) -> torch.Tensor:
            check_times(times, theta, self.schedule)
            phi, g = mode_factors(theta, times, self.schedule)
            return torch.cat([phi, g])  # (2T, k)

        result = lanczos_functions(
            self._matvec, r0, factors, tol=self._tol, max_iter=self._max_iter, label=self._train.label
        )
        both, self.steps = result.values, result.steps
        warn_if_divergent(self.schedule, result.largest)
        train = self._y + both[:count]  # (T, N, O)
        if k_test_train is None:
            if fx_test_0 is not None:
                raise ShapeError("fx_test_0 was given without k_test_train; pass the test-train kernel as well.")
            return self._result(train, scalar)
        k_test = KernelMatrix.of(k_test_train, "ntk", "k_test_train")
        if k_test.shape[1] != n:
            raise ShapeError(f"k_test_train must be (M, {n}), got ({k_test.shape[0]}, {k_test.shape[1]}).")
        m = k_test.shape[0]
        coefficients = both[count:].permute(1, 0, 2).reshape(n, count * o)  # (N, T·O)
        moved = k_test.matmul(coefficients).reshape(m, count, o).permute(1, 0, 2)
        test = self._outputs(0.0 if fx_test_0 is None else fx_test_0, "fx_test_0", m) - moved
        return self._result(train, scalar), self._result(test, scalar)

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._train.matmul(v) + self._shift * v

    def _outputs(self, value: object, name: str, rows: int) -> torch.Tensor:
        """A number (broadcast) or a tensor shaped like the targets with ``rows`` rows, as (rows, O) float64."""
        o = self._y.shape[1]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return torch.full((rows, o), float(value), dtype=torch.float64)
        shape = (rows,) if self._vector else (rows, o)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ShapeError(f"{name} must be a number or a tensor of shape {shape}, got {got}.")
        return value.reshape(rows, o).to(torch.float64)

    def _result(self, m: torch.Tensor, scalar: bool) -> torch.Tensor:
        out = m.squeeze(2) if self._vector else m
        return (out[0] if scalar else out).to(torch.promote_types(self._out_dtype, torch.float32))
