"""Small statistics the experiments report: log-log slope fits with confidence intervals, RMSE, relative
changes, accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NonFiniteError, ShapeError

__all__ = ["SlopeFit", "accuracy", "fit_loglog_slope", "relative_change", "rmse"]


@dataclass(frozen=True)
class SlopeFit:
    """Least-squares fit of log y = intercept + slope · log x, with a ``level`` confidence interval for the slope.

    ``ci_low``/``ci_high`` use Student's t with n - 2 degrees of freedom (infinite for n = 2). ``intercept`` is
    for natural logarithms, so the fitted curve is ``exp(intercept) * x ** slope``.
    """

    slope: float
    intercept: float
    stderr: float
    ci_low: float
    ci_high: float
    r2: float
    n: int
    level: float

    @property
    def halfwidth(self) -> float:
        return (self.ci_high - self.ci_low) / 2

    def predict(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        values: np.ndarray = np.exp(self.intercept) * np.asarray(x, dtype=float) ** self.slope
        return values

    def format(self) -> str:
        """'-0.49 [-0.53, -0.45]'."""
        return f"{self.slope:+.2f} [{self.ci_low:+.2f}, {self.ci_high:+.2f}]"


def fit_loglog_slope(x: Sequence[float], y: Sequence[float], *, level: float = 0.95) -> SlopeFit:
    """Fit y ∝ x^slope by ordinary least squares on (log x, log y); x and y positive, at least two distinct x.

    Several y per x (seeds) are fitted as separate points.
    """
    from scipy import stats

    lx, ly = np.log(np.asarray(x, dtype=float)), np.asarray(y, dtype=float)
    if lx.shape != ly.shape or lx.ndim != 1:
        raise ShapeError(f"x and y must be 1-d of the same length, got {lx.shape} and {ly.shape}.")
    if not (np.all(np.isfinite(ly)) and np.all(ly > 0) and np.all(np.isfinite(lx))):
        raise NonFiniteError("a log-log fit needs finite, positive x and y; got " + np.array2string(ly, precision=3))
    ly = np.log(ly)
    n = len(lx)
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    if n < 2 or sxx == 0:
        raise ShapeError("a log-log fit needs at least two distinct x values.")
    slope = float(np.sum((lx - lx.mean()) * (ly - ly.mean())) / sxx)
    intercept = float(ly.mean() - slope * lx.mean())
    resid = ly - (intercept + slope * lx)
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0
    if n > 2:
        stderr = math.sqrt(float(np.sum(resid**2)) / (n - 2) / sxx)
        t = float(stats.t.ppf(0.5 + level / 2, n - 2))
    else:
        stderr, t = math.inf, math.inf
    half = t * stderr if stderr > 0 else 0.0
    return SlopeFit(slope, intercept, stderr, slope - half, slope + half, r2, n, level)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """sqrt(mean((a - b)²)) over all entries."""
    if a.shape != b.shape:
        raise ShapeError(f"rmse of tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}.")
    return float(torch.sqrt(torch.mean((a - b) ** 2)))


def relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """‖new − old‖_F / ‖old‖_F (the quantity of Fig. 1 of Lee et al. 2019)."""
    return float(torch.linalg.vector_norm(new - old) / torch.linalg.vector_norm(old))


def accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of correct predictions; outputs (N, 1) are read as ±1 scores, (N, C) by argmax."""
    from ..data.targets import predicted_labels

    return float((predicted_labels(outputs) == labels.to(outputs.device)).double().mean())
