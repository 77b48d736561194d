"""Input checks shared by every public entry point, raising :mod:`ntkit.errors` exceptions."""

from __future__ import annotations

import math

import torch

from .errors import NonFiniteError, ShapeError, UnsupportedError

__all__ = ["all_finite", "check_finite", "check_input_pair", "check_tensor", "format_shape"]


def format_shape(shape: torch.Size | tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or ±inf in the floating-point tensor ``t``: its min and max are finite (NaN propagates through
    both). One reduction and no temporary (``torch.isfinite(t).all()`` makes a boolean copy of ``t`` and reduces it)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.detach())
    return math.isfinite(lo) and math.isfinite(hi)


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise :class:`NonFiniteError` if ``t`` holds NaN or Inf, saying how many."""
    if t.is_floating_point() and not all_finite(t):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise NonFiniteError(
            f"{name} holds {n_nan} NaN and {n_inf} infinite values (shape {format_shape(t.shape)}); "
            "clean or impute the data before computing kernels."
        )


def check_tensor(
    t: object,
    name: str,
    *,
    min_ndim: int = 0,
    ndim: int | None = None,
    allow_integer: bool = False,
    finite: bool = True,
    nonempty: bool = True,
) -> torch.Tensor:
    """Check that ``t`` is a real tensor of the right rank, non-empty and finite; return it.

    Integer tensors are accepted only with ``allow_integer`` (token ids for embeddings).
    """
    if not isinstance(t, torch.Tensor):
        raise UnsupportedError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    if t.is_complex():
        raise UnsupportedError(
            f"{name} has complex dtype {t.dtype}; ntkit works with real tensors. Split real and imaginary "
            "parts into channels (torch.view_as_real) if the model needs both."
        )
    if not (t.is_floating_point() or (allow_integer and not t.dtype == torch.bool)):
        raise UnsupportedError(f"{name} has dtype {t.dtype}; a floating-point tensor is expected.")
    if ndim is not None and t.ndim != ndim:
        raise ShapeError(f"{name} must have {ndim} dimensions, got shape {format_shape(t.shape)}.")
    if t.ndim < min_ndim:
        raise ShapeError(f"{name} must have at least {min_ndim} dimensions, got shape {format_shape(t.shape)}.")
    if nonempty and (t.ndim == 0 or t.shape[0] == 0 or math.prod(t.shape) == 0):
        raise ShapeError(f"{name} is empty (shape {format_shape(t.shape)}); pass at least one example.")
    if finite:
        check_finite(t, name)
    return t


def check_input_pair(
    x1: object, x2: object | None, *, allow_integer: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check a batch pair: both real, non-empty, finite, same per-example shape, dtype and device.

    ``x2=None`` (meaning x2 = x1) is passed through. Batches are indexed by their first dimension.
    """
    x1 = check_tensor(x1, "x1", min_ndim=1, allow_integer=allow_integer)
    if x2 is None:
        return x1, None
    x2 = check_tensor(x2, "x2", min_ndim=1, allow_integer=allow_integer)
    if x1.shape[1:] != x2.shape[1:]:
        raise ShapeError(
            f"x1 and x2 must have the same per-example shape; got x1 {format_shape(x1.shape)} and "
            f"x2 {format_shape(x2.shape)} (examples are indexed by the first dimension)."
        )
    if x1.dtype != x2.dtype:
        raise UnsupportedError(f"x1 has dtype {x1.dtype} but x2 has {x2.dtype}; convert one of them.")
    if x1.device != x2.device:
        raise UnsupportedError(f"x1 is on {x1.device} but x2 is on {x2.device}; move them to one device.")
    return x1, x2
