"""Input checks shared by every public entry point, raising :mod:`ntkit.errors` exceptions."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal, TypeAlias, overload

import torch

from .errors import InvalidArgumentError, NonFiniteError, ShapeError, UnsupportedError

__all__ = [
    "Std",
    "all_finite",
    "as_tuple",
    "check_finite",
    "check_input_pair",
    "check_number",
    "check_positive_int",
    "check_std",
    "check_tensor",
    "format_shape",
    "parse_get",
    "same_examples",
]


def format_shape(shape: torch.Size | tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


#: A standard deviation ``W_std`` or ``b_std``: a number, or a one-element tensor (kernels are differentiable in it).
Std: TypeAlias = float | torch.Tensor


def as_tuple(value: object, n: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """An int or a sequence of ``n`` ints (each >= ``minimum``) as a tuple of ``n`` ints (a layer's kernel size,
    stride or padding per spatial axis); anything else (a float, a string) is an
    :class:`~ntkit.errors.InvalidArgumentError` naming ``name``."""
    items = [value] * n if isinstance(value, int) else list(value) if isinstance(value, Sequence) else []
    ints = [v for v in items if isinstance(v, int) and v >= minimum]
    if len(items) != n or len(ints) != n:
        raise InvalidArgumentError(f"{name} must be an int >= {minimum} or a tuple of {n} of them, got {value!r}.")
    return tuple(ints)


def parse_get(get: object, allowed: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
    """A ``get=`` argument (one name or a tuple/list of names from ``allowed``) as a tuple of names, and whether a
    single name (not a tuple) was asked for; else :class:`~ntkit.errors.InvalidArgumentError`."""
    names = (get,) if isinstance(get, str) else get
    if not isinstance(names, tuple | list) or not names or any(g not in allowed for g in names):
        raise InvalidArgumentError(f"get must be one of {allowed} or a tuple of them, got {get!r}.")
    return tuple(names), isinstance(get, str)


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
        raise InvalidArgumentError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
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
    if nonempty and (t.ndim == 0 or t.shape[0] == 0):
        raise ShapeError(f"{name} is empty (shape {format_shape(t.shape)}); pass at least one example.")
    if nonempty and math.prod(t.shape) == 0:
        raise ShapeError(
            f"{name} has {t.shape[0]} examples of zero size (shape {format_shape(t.shape)}): every example needs at "
            "least one entry (for targets, at least one output column)."
        )
    if finite:
        check_finite(t, name)
    return t


def check_input_pair(
    x1: object, x2: object | None, *, allow_integer: bool = False, name: tuple[str, str] = ("x1", "x2")
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check a batch pair: both real, non-empty, finite, same per-example shape, dtype and device.

    ``x2=None`` (meaning x2 = x1) is passed through. Batches are indexed by their first dimension. ``name``: how
    messages call the two.
    """
    a, b = name
    if isinstance(x1, tuple | list):
        raise InvalidArgumentError(
            f"x1 is a {type(x1).__name__} (several inputs); this function takes one input tensor. Only nk.kernel "
            "takes a tuple of inputs (networks with several inputs); here, wrap the model so that it takes one "
            "tensor (e.g. the inputs concatenated) and returns one."
        )
    x1 = check_tensor(x1, a, min_ndim=1, allow_integer=allow_integer)
    if x2 is None:
        return x1, None
    x2 = check_tensor(x2, b, min_ndim=1, allow_integer=allow_integer)
    if x1.shape[1:] != x2.shape[1:]:
        raise ShapeError(
            f"{a} and {b} must have the same per-example shape; got {a} {format_shape(x1.shape)} and "
            f"{b} {format_shape(x2.shape)} (examples are indexed by the first dimension)."
        )
    if x1.dtype != x2.dtype:
        raise UnsupportedError(f"{a} has dtype {x1.dtype} but {b} has {x2.dtype}; convert one of them.")
    if x1.device != x2.device:
        raise UnsupportedError(f"{a} is on {x1.device} but {b} is on {x2.device}; move them to one device.")
    return x1, x2


@overload
def check_positive_int(value: object, name: str, *, allow_none: Literal[False] = False) -> int: ...


@overload
def check_positive_int(value: object, name: str, *, allow_none: bool) -> int | None: ...


def check_positive_int(value: object, name: str, *, allow_none: bool = False) -> int | None:
    """``value`` if it is an int >= 1 (``None`` too with ``allow_none``); else :class:`InvalidArgumentError`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a positive integer" + (" or None" if allow_none else "")
        raise InvalidArgumentError(f"{name} must be {allowed}, got {value!r}.")
    return value


def check_number(value: object, name: str, *, minimum: float | None = None, inclusive: bool = True) -> float:
    """``value`` as a float if it is a finite real number (>= ``minimum``, or > it when not ``inclusive``);
    else :class:`InvalidArgumentError` naming ``name`` and the valid range."""
    bound = "" if minimum is None else f" {'>=' if inclusive else '>'} {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name} must be a finite real number{bound}, got {value!r}.")
    number = float(value)
    below = minimum is not None and (number < minimum if inclusive else number <= minimum)
    if not math.isfinite(number) or below:
        raise InvalidArgumentError(f"{name} must be a finite real number{bound}, got {number}.")
    return number


def check_std(value: object, name: str, *, allow_none: bool = False) -> None:
    """A standard deviation (``W_std``, ``b_std``): a finite real number >= 0, or such a one-element
    floating-point tensor (kept as given, for gradients); ``None`` (no bias) with ``allow_none``."""
    if value is None and allow_none:
        return
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise InvalidArgumentError(
                f"{name} must be a number >= 0 or a one-element floating-point tensor, got a tensor of shape "
                f"{format_shape(value.shape)} and dtype {value.dtype}."
            )
        value = float(value.detach())
    check_number(value, name + (" (None for no bias)" if allow_none else ""), minimum=0.0)


def same_examples(x1: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor | None:
    """``x2``, or None when it holds the same examples as x1, so that the caller takes its symmetric path.

    ntkit's rule "equal inputs give equal answers" (docs/empirical.md, docs/infinite.md): a kernel of x with
    itself must not depend on whether x2 was left out, passed as x1, or passed as an equal copy. x2 is dropped
    when it is x1, or when it equals x1 (``torch.equal``) and does not require a gradient of its own (then it
    must stay a separate input).
    """
    if x2 is None or x2 is x1:
        return None
    if x2.requires_grad or x2.shape != x1.shape or not torch.equal(x1, x2):
        return x2
    return None
