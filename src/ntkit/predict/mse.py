"""Closed-form gradient descent on MSE for one linearized network (or one infinite-width network's kernel).

theory.md §2.2-2.5 in the units of a PyTorch loop: ``torch.optim.SGD(params, lr, momentum)`` on
``torch.nn.MSELoss(reduction)``, where time counts optimizer steps. With s = 2/(N·O) ("mean") or 2
("sum") and c = lr·s, the linearized model's train residual r_t = f_t(X) − Y obeys

    r_{t+1} = (I − cΘ) r_t                               (SGD; exact: r_t = (I − cΘ)^t r_0)
    r_{t+1} = (1 + β − cΘ) r_t − β r_{t−1},  r_{−1} = r_0  (heavy ball, momentum β)

and for the test set f_t(x) = f_0(x) − Θ(x, X) Θ⁻¹ (r_0 − r_t) (eqs. 10-11). ``continuous=True`` gives
gradient flow, r_t = e^{−cΘt} r_0 (time t·lr), or with momentum the second-order ODE of theory.md §2.5 in
time t·√lr. See :mod:`ntkit.predict.modes` for the per-eigenmode solution and docs/predict.md for the
mapping to the paper's and neural-tangents' conventions.
"""

from __future__ import annotations

import torch

from .._validation import check_tensor
from .args import check_dtype, check_nonnegative
from .layout import Layout, check_targets, layout_of, promote_dtype
from .modes import Schedule, check_limit_exists, check_times, mode_factors, warn_if_divergent
from .predictor import FunctionSpacePredictor
from .train_kernels import TrainKernels

__all__ = ["MSEPredictor", "gradient_descent_mse"]


def gradient_descent_mse(
    ntk_train_train: torch.Tensor,
    y_train: torch.Tensor,
    learning_rate: float = 1.0,
    *,
    momentum: float = 0.0,
    reduction: str = "mean",
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    continuous: bool = False,
    dtype: torch.dtype = torch.float64,
    trace_axes: int | tuple[int, ...] | None = None,
) -> MSEPredictor:
    """Predictor of gradient-descent training on MSE of a linearized model, in closed form.

    Args:
        ntk_train_train: the NTK on the training set, per-output (N, N) (applied to every output) or full
            (N, N, O, O) (``nk.empirical_ntk(..., trace_outputs=False)``); for outputs with more axes
            (N, *F), (N, N, F_a, F_a', F_b, F_b', ...) over the axes a < b < ... that ``trace_axes`` leaves.
        y_train: targets, (N, O) or (N,), or (N, *F) (e.g. (N, C, H, W) of a convolutional network without
            pooling).
        learning_rate: ``lr`` of torch.optim.SGD; > 0.
        momentum: ``momentum`` of torch.optim.SGD (heavy ball, no dampening, no Nesterov), in [0, 1).
        reduction: ``"mean"`` or ``"sum"``, as in torch.nn.MSELoss.
        diag_reg: added to the diagonal of the train kernel, times its mean diagonal (or as is with
            ``diag_reg_absolute_scale=True``).
        continuous: gradient flow (time t·lr) instead of discrete steps; with momentum, the ODE of theory.md §2.5
            in time t·√lr.
        dtype: dtype of the linear algebra (float64 by default).
        trace_axes: output axes (of y_train's, 1..ndim−1, or negative) over which the kernel is Θ ⊗ I
            (neural-tangents' ``trace_axes``): the kernel omits them. E.g. ``trace_axes=(1,)`` for outputs
            (N, C, H, W) and the kernel (N, N, H, H', W, W') of ``nk.kernel(net, x, diagonal_spatial=False).ntk``.
            None (default): inferred, (N, N) (every axis traced) or full (N, N, F_1, F_1', ...) (none).

    Returns:
        A :class:`MSEPredictor` ``p``; ``p(t, fx_train_0, fx_test_0=None, ntk_test_train=None)`` gives the
        outputs after ``t`` steps. The eigendecomposition (finite t) or Cholesky factor (t = inf) of the
        train kernel is computed on first use and reused.
    """
    k = check_tensor(ntk_train_train, "ntk_train_train", min_ndim=2)
    y, targets = check_targets(y_train, k.device, output_axes=True)
    layout = layout_of(k, targets.n_train, targets.out_shape, targets.vector_targets, "ntk_train_train", trace_axes)
    dtype = check_dtype(dtype)
    matrix = layout.kernel_matrix(k, "ntk_train_train")
    kernels = TrainKernels(
        lambda _: matrix,
        lambda _: "ntk_train_train",
        diag_reg=check_nonnegative(diag_reg, "diag_reg"),
        absolute=bool(diag_reg_absolute_scale),
        dtype=dtype,
    )
    schedule = Schedule.from_loop(learning_rate, momentum, reduction, continuous, y.numel())
    return MSEPredictor(kernels, layout.to_matrix(y).to(dtype), layout, schedule, k, promote_dtype(k, y))


class MSEPredictor(FunctionSpacePredictor):
    """See :func:`gradient_descent_mse`. Holds the prepared train kernel (``kernels``), the targets in matrix
    layout, the ``layout`` (per-output or full kernel) and the ``schedule`` (the loop's lr, MSE scale, momentum)."""

    def __init__(
        self,
        kernels: TrainKernels,
        y: torch.Tensor,
        layout: Layout,
        schedule: Schedule,
        kernel: torch.Tensor,
        out_dtype: torch.dtype,
    ):
        self._kernels, self._y, self.layout, self.schedule = kernels, y, layout, schedule
        self._kernel, self._out_dtype, self.dtype = kernel, out_dtype, kernels.dtype

    def _layout(self, fx_train_0: object) -> Layout:
        return self.layout

    def _evolve(self, times: torch.Tensor, f0: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
        r0 = f0 - self._y
        finite = torch.isfinite(times)
        train = torch.empty(times.numel(), *r0.shape, dtype=self.dtype, device=self.device)
        coef = torch.empty_like(train)
        if bool(finite.any()):
            idx = finite.nonzero().squeeze(1)
            residual, coef[idx] = self._finite_time(times[finite], r0)
            train[idx] = self._y + residual
        if not bool(finite.all()):
            check_limit_exists(self.schedule, self._kernels.matrix("ntk"), self._largest_eigenvalue)
            alpha = self._kernels.solver("ntk").solve(r0)
            idx = (~finite).nonzero().squeeze(1)
            train[idx] = self._y + r0 - self._kernels.matrix("ntk") @ alpha
            coef[idx] = alpha
        return train, coef

    def _finite_time(self, times: torch.Tensor, r0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals V φ_t Vᵀ r0 and coefficients V g_t Vᵀ r0, each (T, D, C), in one matrix product."""
        eig = self._kernels.eigen("ntk")
        check_times(times, eig.values, self.schedule)
        warn_if_divergent(self.schedule, float(eig.values[-1]))
        phi, g = mode_factors(eig.values, times, self.schedule)  # (T, D) each
        both = eig.combine(torch.cat([phi, g]), r0)
        return both[: times.numel()], both[times.numel() :]

    def _largest_eigenvalue(self) -> float:
        return float(self._kernels.eigen("ntk").values[-1])
