"""``nk.approx.ridge(feats, x_train, y_train, diag_reg)``: kernel ridge regression in feature space.

With Φ = feats(x_train) (N, F), the posterior mean of kernel regression with the approximate kernel Φ Φᵀ is

    mean(x) = φ(x)ᵀ w,    w = (ΦᵀΦ + λ I_F)⁻¹ Φᵀ y,

equal to φ(x)ᵀ Φᵀ (Φ Φᵀ + λ I_N)⁻¹ y (push-through identity), the ``nk.predict.gp_inference`` mean with
the kernel Φ Φᵀ: O(N F²) time and O(F²) memory instead of O(N³) and O(N²). ΦᵀΦ and Φᵀy are accumulated over
batches of φ (never all of Φ at once): each batch's product in φ's dtype, their sum and the Cholesky solve in
float64 (float32 features lose ~1e-7 relative per batch product, far below their own O(F^-1/2) error).
λ = ``diag_reg`` × the mean diagonal of Φ Φᵀ (‖Φ‖²_F / N), as ``nk.predict``'s ``diag_reg``, or ``diag_reg``
itself with ``diag_reg_absolute_scale=True``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from .._validation import check_tensor, format_shape
from ..errors import IllConditionedError, InvalidArgumentError, ShapeError

__all__ = ["Features", "RidgeFit", "ridge"]


class Features(Protocol):
    """What ``ridge`` needs of a feature map (``FeatureMap``, ``NystromFeatures``)."""

    n_features: int

    def batches(self, x: torch.Tensor, *, progress: bool | None = None) -> Iterator[tuple[slice, torch.Tensor]]: ...


class RidgeFit:
    """The fitted weights w (F, O) in float64; ``fit(x)`` is the predicted mean φ(x)ᵀ w."""

    def __init__(self, feats: Features, weights: torch.Tensor, squeeze: bool, dtype: torch.dtype, reg: float):
        self.feats, self.weights, self._squeeze, self._dtype = feats, weights, squeeze, dtype
        #: λ actually added to the diagonal of ΦᵀΦ.
        self.regularization = reg

    def __call__(self, x: torch.Tensor, *, progress: bool | None = None) -> torch.Tensor:
        """(M, d) -> (M, O) predictions (or (M,) if y_train was (N,)), in y_train's dtype, on x's device."""
        w = self.weights.to(x.device)
        out = torch.empty((x.shape[0], w.shape[1]), dtype=self._dtype, device=x.device)
        for rows, phi in self.feats.batches(x, progress=progress):
            out[rows] = (phi.to(torch.float64) @ w).to(self._dtype)
        return out[:, 0] if self._squeeze else out


def ridge(
    feats: Features,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    diag_reg: float = 1e-4,
    *,
    diag_reg_absolute_scale: bool = False,
    progress: bool | None = None,
) -> RidgeFit:
    """Fit w = (ΦᵀΦ + λI)⁻¹ Φᵀ y (module doc) and return the predictor.

    Args:
        feats: a feature map (``nk.approx.features`` or ``nk.approx.nystrom``).
        x_train: (N, d) inputs; y_train: (N,) or (N, O) targets.
        diag_reg: λ relative to the mean diagonal of Φ Φᵀ (or absolute, ``diag_reg_absolute_scale=True``).
        progress: a tqdm bar over the batches of features.
    """
    y = check_tensor(y_train, "y_train", min_ndim=1)
    if y.ndim > 2 or y.shape[0] != getattr(x_train, "shape", (None,))[0]:
        raise ShapeError(
            f"y_train must be (N,) or (N, outputs) with N = x_train.shape[0]; got y_train {format_shape(y.shape)} "
            f"and x_train {format_shape(getattr(x_train, 'shape', ()))}."
        )
    if not isinstance(diag_reg, float | int) or diag_reg < 0:
        raise InvalidArgumentError(f"diag_reg must be a number >= 0, got {diag_reg!r}.")
    squeeze = y.ndim == 1
    y64 = (y[:, None] if squeeze else y).to(torch.float64)
    f = feats.n_features
    gram = torch.zeros((f, f), dtype=torch.float64, device=y.device)
    rhs = torch.zeros((f, y64.shape[1]), dtype=torch.float64, device=y.device)
    for rows, phi in feats.batches(x_train, progress=progress):
        phi = phi.to(y.device)
        gram.add_(phi.T @ phi)  # each batch's product in φ's dtype (float32: half the time), summed in float64
        rhs.addmm_(phi.T.to(torch.float64), y64[rows])
    mean_diagonal = float(gram.diagonal().sum()) / y.shape[0]
    reg = float(diag_reg) if diag_reg_absolute_scale else float(diag_reg) * mean_diagonal
    gram.diagonal().add_(reg)
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        raise IllConditionedError(
            f"ΦᵀΦ + λI is not positive definite in float64 (λ = {reg:.3g}): the features are degenerate. Pass a "
            "larger diag_reg (e.g. 1e-3)."
        )
    weights = torch.cholesky_solve(rhs, factor)
    return RidgeFit(feats, weights, squeeze, y.dtype, reg)
