"""The Gaussian-process log evidence (marginal likelihood) of training targets under a kernel.

For targets Y (N, O) whose O columns are independent draws from N(0, K + σ² I) (a per-output kernel K, the
K ⊗ I structure of infinite-width networks, theory.md §3.1), the log evidence is the sum over outputs

    log p(Y) = Σ_o [ −½ y_oᵀ (K + σ² I)⁻¹ y_o − ½ log det(K + σ² I) − (N/2) log 2π ]
             = −½ tr(Yᵀ A⁻¹ Y) − O Σ_i log L_ii − (N·O/2) log 2π,      A = K + σ² I = L Lᵀ

(Rasmussen & Williams 2006, eq. 2.30). It is what ``sklearn.gaussian_process.GaussianProcessRegressor``
maximises (its ``log_marginal_likelihood``) and what GPyTorch's ``ExactMarginalLogLikelihood`` returns times
N·O. Differentiable through ``k_dd`` and ``diag_reg``, so ``torch.optim`` can fit ``W_std``, ``b_std`` (given as
tensors to the ``ntkit.nn`` layers) and ``diag_reg`` by maximising it (docs/predict.md, "Fitting
hyperparameters").
"""

from __future__ import annotations

import math

import torch

from .._validation import check_tensor, format_shape
from ..errors import IllConditionedError, InvalidArgumentError, NonFiniteError, ShapeError, UnsupportedError

__all__ = ["marginal_log_likelihood"]


def _diag_reg(diag_reg: object) -> torch.Tensor | float:
    """``diag_reg`` as a float or a 0-d tensor (kept for its gradient), checked to be finite and >= 0."""
    if isinstance(diag_reg, torch.Tensor):
        if diag_reg.numel() != 1:
            raise ShapeError(f"diag_reg must be a number, got a tensor of shape {format_shape(diag_reg.shape)}.")
        value = float(diag_reg.detach())
    elif isinstance(diag_reg, int | float) and not isinstance(diag_reg, bool):
        value = float(diag_reg)
    else:
        raise InvalidArgumentError(f"diag_reg must be a real number or a 0-d tensor, got {type(diag_reg).__name__}.")
    if not math.isfinite(value):
        raise NonFiniteError(f"diag_reg must be finite, got {value}.")
    if value < 0:
        raise InvalidArgumentError(f"diag_reg must be >= 0, got {value}.")
    return diag_reg.reshape(()) if isinstance(diag_reg, torch.Tensor) else value


def marginal_log_likelihood(
    k_dd: torch.Tensor,
    y: torch.Tensor,
    diag_reg: float | torch.Tensor = 0.0,
    *,
    diag_reg_absolute_scale: bool = False,
) -> torch.Tensor:
    """The GP log evidence log p(y) of targets ``y`` under the prior covariance ``k_dd`` (module docs).

    Args:
        k_dd: the per-output train-train kernel (N, N), e.g. ``nk.kernel(net, x).nngp`` or ``.ntk`` (the NTK as
            a prior covariance is the NTK-GP of He et al. 2020). May require grad.
        y: targets (N,) or (N, O); the O outputs are independent given the kernel and their terms are summed.
        diag_reg: observation noise σ² added to the diagonal, as in :func:`ntkit.predict.gp_inference`:
            ``diag_reg`` × the mean diagonal of ``k_dd`` (the mean is part of the function, so gradients flow
            through it), or ``diag_reg`` itself with ``diag_reg_absolute_scale=True``. A number or a 0-d tensor
            (which may require grad, to fit it).

    Returns:
        A 0-d float64 tensor (computed by a float64 Cholesky factorization whatever the inputs' dtype), on the
        inputs' device, differentiable in ``k_dd``, ``y`` and a tensor ``diag_reg``.

    Raises:
        ShapeError: ``k_dd`` not square (N, N) or ``y`` not (N,) / (N, O).
        IllConditionedError: K + σ² I is not numerically positive definite; no jitter is added (it would change
            the objective being maximised): pass a larger ``diag_reg``.
    """
    if not isinstance(k_dd, torch.Tensor):
        raise InvalidArgumentError(
            f"k_dd must be a tensor (N, N), got {type(k_dd).__name__}; pass one kernel of an nk.Kernel, e.g. "
            "k.nngp or k.ntk."
        )
    k = check_tensor(k_dd, "k_dd", ndim=2)
    targets = check_tensor(y, "y", min_ndim=1)
    n = k.shape[0]
    if k.shape[1] != n:
        raise ShapeError(f"k_dd must be a square train-train kernel (N, N), got shape {format_shape(k.shape)}.")
    if targets.ndim > 2 or targets.shape[0] != n:
        raise ShapeError(f"y must be (N,) or (N, O) with N = {n} (the size of k_dd), got {format_shape(y.shape)}.")
    if targets.device != k.device:
        raise UnsupportedError(f"y is on {targets.device} but k_dd is on {k.device}; move them to one device.")
    noise = _diag_reg(diag_reg)
    k = k.to(torch.float64)
    targets = targets.to(torch.float64).reshape(n, -1)
    k = (k + k.T) / 2
    scale = noise if diag_reg_absolute_scale else noise * torch.diagonal(k).mean()
    a = k + torch.eye(n, dtype=torch.float64, device=k.device) * scale
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise IllConditionedError(
            f"k_dd + diag_reg I is not numerically positive definite (Cholesky failed at pivot {int(info)} of {n}), "
            f"with diag_reg = {float(noise):.3g}{'' if diag_reg_absolute_scale else ' x mean diagonal'}. Pass a "
            "larger diag_reg (e.g. 1e-6 relative to the mean diagonal or more), or remove duplicate inputs."
        )
    white = torch.linalg.solve_triangular(chol, targets, upper=False)  # L⁻¹ Y: tr(Yᵀ A⁻¹ Y) = ‖L⁻¹ Y‖²
    n_out = targets.shape[1]
    log_det_half = torch.log(torch.diagonal(chol)).sum()  # ½ log det A
    value: torch.Tensor = -0.5 * (white**2).sum() - n_out * log_det_half - 0.5 * n * n_out * math.log(2 * math.pi)
    return value
