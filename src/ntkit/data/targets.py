"""Regression targets for class labels, in the conventions of the papers the experiments follow.

- one-hot ``e_c`` (neural-tangents' examples);
- centred one-hot ``-0.1·1 + e_c`` (Arora et al. 2019, Novak et al. 2019): 0.9 for the class, -0.1 elsewhere;
- ±1 for two classes (Lee et al. 2019): label 0 → -1, label 1 → +1, one output.

All take int64 labels of shape (N,) and return floating targets of shape (N, C) or (N, 1).
"""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError, ShapeError

__all__ = ["ENCODINGS", "centered_one_hot", "encode_targets", "one_hot", "plus_minus_one", "predicted_labels"]

ENCODINGS = ("auto", "one_hot", "centered", "pm1")


def _check_labels(labels: torch.Tensor, n_classes: int) -> None:
    if labels.ndim != 1 or labels.is_floating_point():
        raise ShapeError(f"labels must be a (N,) integer tensor, got shape {tuple(labels.shape)} and {labels.dtype}.")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise InvalidArgumentError(
            f"labels must lie in 0..{n_classes - 1}, got {int(labels.min())}..{int(labels.max())}."
        )


def one_hot(labels: torch.Tensor, n_classes: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(N,) labels → (N, n_classes) with 1 at the label, 0 elsewhere."""
    _check_labels(labels, n_classes)
    return torch.nn.functional.one_hot(labels, n_classes).to(dtype)


def centered_one_hot(labels: torch.Tensor, n_classes: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(N,) labels → (N, n_classes) holding -0.1·1 + e_c (Arora et al. 2019): 0.9 at the label, -0.1 elsewhere."""
    return one_hot(labels, n_classes, dtype=dtype) - 0.1


def plus_minus_one(labels: torch.Tensor, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(N,) labels in {0, 1} → (N, 1) targets: -1 for class 0, +1 for class 1 (Lee et al. 2019)."""
    _check_labels(labels, 2)
    return (2.0 * labels.to(dtype) - 1.0).unsqueeze(1)


def encode_targets(
    y: torch.Tensor, n_classes: int | None, encoding: str = "auto", *, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Targets for labels ``y`` (N,) of a data set with ``n_classes`` classes.

    ``encoding``: ``"one_hot"``, ``"centered"``, ``"pm1"`` (two classes only), or ``"auto"``: ±1 for two classes,
    centred one-hot for more, and for a regression set (``n_classes is None``, ``y`` of shape (N, 1)) the
    targets themselves, the only encoding a regression set accepts.
    """
    if encoding not in ENCODINGS:
        raise InvalidArgumentError(f"encoding={encoding!r} is not one of {', '.join(map(repr, ENCODINGS))}.")
    if n_classes is None:
        if encoding != "auto":
            raise InvalidArgumentError(
                f"a regression data set has real-valued targets; encoding={encoding!r} needs labels."
            )
        return y.to(dtype)
    if encoding == "auto":
        encoding = "pm1" if n_classes == 2 else "centered"
    if encoding == "pm1":
        if n_classes != 2:
            raise InvalidArgumentError(f"encoding='pm1' needs two classes, the data set has {n_classes}.")
        return plus_minus_one(y, dtype=dtype)
    if encoding == "centered":
        return centered_one_hot(y, n_classes, dtype=dtype)
    return one_hot(y, n_classes, dtype=dtype)


def predicted_labels(outputs: torch.Tensor) -> torch.Tensor:
    """Class predictions from network outputs: (N, 1) → 1 where the output is > 0 else 0 (±1 targets);
    (N, C) with C > 1 → argmax over outputs. Returns (N,) int64."""
    if outputs.ndim != 2:
        raise ShapeError(f"outputs must have shape (N, C), got {tuple(outputs.shape)}.")
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0).to(torch.int64)
    return outputs.argmax(dim=1)
