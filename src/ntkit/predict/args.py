"""Checks of the scalar arguments shared by the predictors, and the time argument ``t``.

Every check raises an :mod:`ntkit.errors` exception that names the argument and its valid range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import InvalidArgumentError, NonFiniteError, ShapeError, UnsupportedError

__all__ = [
    "check_dtype",
    "check_learning_rate",
    "check_momentum",
    "check_nonnegative",
    "check_reduction",
    "loss_scale",
    "parse_times",
]

REDUCTIONS = ("mean", "sum")


def _as_float(value: object, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ShapeError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}.")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"{name} must be a real number, got {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value):
        raise NonFiniteError(f"{name} must be finite, got {value}.")
    return value


def check_learning_rate(value: object) -> float:
    """The learning rate as a float; it must be finite and positive."""
    lr = _as_float(value, "learning_rate")
    if lr <= 0:
        raise InvalidArgumentError(
            f"learning_rate must be positive, got {lr}. (Gradient descent with a negative step ascends the loss.)"
        )
    return lr


def check_momentum(value: object) -> float:
    """Heavy-ball momentum β as a float in [0, 1) (torch.optim.SGD's ``momentum``)."""
    beta = _as_float(value, "momentum")
    if not 0.0 <= beta < 1.0:
        raise InvalidArgumentError(
            f"momentum must be in [0, 1), got {beta}; with momentum >= 1 heavy-ball gradient descent never converges."
        )
    return beta


def check_nonnegative(value: object, name: str) -> float:
    x = _as_float(value, name)
    if x < 0:
        raise InvalidArgumentError(f"{name} must be >= 0, got {x}.")
    return x


def check_reduction(reduction: object) -> str:
    if reduction not in REDUCTIONS:
        raise InvalidArgumentError(f"reduction must be 'mean' or 'sum' (as in torch.nn.MSELoss), got {reduction!r}.")
    return str(reduction)


def check_dtype(dtype: object) -> torch.dtype:
    """The dtype of the linear algebra: torch.float64 (default) or torch.float32."""
    if not isinstance(dtype, torch.dtype) or dtype not in (torch.float64, torch.float32):
        raise UnsupportedError(f"dtype must be torch.float64 or torch.float32, got {dtype!r}.")
    return dtype


def loss_scale(reduction: str, n_entries: int) -> float:
    """s in ∇_f MSELoss(f, y) = s (f − y): 2 / (N·O) for ``reduction="mean"``, 2 for ``"sum"``.

    torch.nn.MSELoss has no ½, hence the 2; ``n_entries`` = N·O is the number of entries of y.
    """
    return 2.0 / n_entries if reduction == "mean" else 2.0


def parse_times(t: object) -> tuple[torch.Tensor, bool]:
    """``t`` as a float64 CPU tensor of shape (T,) of times >= 0 (inf allowed), and whether it was a scalar.

    Accepted: None or inf (converged), an int or float, a 0-d tensor, a 1-D tensor or a sequence of numbers.
    """
    if t is None:
        return torch.tensor([math.inf], dtype=torch.float64), True
    if isinstance(t, bool):
        raise InvalidArgumentError("t must be a number of steps, a 1-D tensor of them, or None; got a bool.")
    if isinstance(t, int | float):
        times, scalar = torch.tensor([float(t)], dtype=torch.float64), True
    elif isinstance(t, torch.Tensor | Sequence) or hasattr(t, "__array__"):
        try:
            times = torch.as_tensor(t, dtype=torch.float64).detach().cpu()  # float64 directly: ints past 2**63 too
        except (TypeError, ValueError, RuntimeError) as err:
            raise InvalidArgumentError(f"t must be numbers; could not read {type(t).__name__}: {err}") from None
        if times.ndim > 1:
            raise ShapeError(f"t must be a scalar or a 1-D tensor of times, got shape {tuple(times.shape)}.")
        scalar = times.ndim == 0
        times = times.reshape(-1)
        if times.numel() == 0:
            raise ShapeError("t is empty; pass at least one time.")
    else:
        raise InvalidArgumentError(f"t must be a number, a 1-D tensor of numbers or None, got {type(t).__name__}.")
    if bool(torch.isnan(times).any()):
        raise NonFiniteError("t holds NaN.")
    if bool((times < 0).any()):
        raise InvalidArgumentError(f"times must be >= 0, got {times[times < 0][0].item()}.")
    return times, scalar
