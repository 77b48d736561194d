"""The :class:`Dataset` value every loader returns, and :func:`prepare`, the preprocessing they share.

Every loader reads its raw arrays (images as uint8 or float, labels as integers) and hands them to
:func:`prepare`, which applies, in this order:

1. ``classes``: keep only these labels and renumber them 0..len(classes)-1 in the order given;
2. ``n_train`` / ``n_test``: a random subset of each split, drawn with ``seed`` (nested: the first 64 of a
   256-point subset are the 64-point subset with the same seed);
3. conversion to ``dtype`` with pixel values scaled to [0, 1] (``scale``);
4. ``standardize``: ``"global"`` subtracts the mean and divides by the standard deviation of all entries of the
   train split (one scalar each, as neural-tangents' examples do); ``"feature"`` does it per feature (pixel),
   features that are constant on the train split are only centred; ``None`` leaves the values as they are.
   Statistics always come from the train split and are applied to both splits;
5. ``normalize``: ``"unit"`` rescales each row to Euclidean norm 1 (the theorem's ‖x‖ ≤ 1, theory.md §5.1);
   ``"sqrt_dim"`` rescales each row to norm √d, so that the input kernel x·x'/d of the NTK parameterization
   (theory.md §4.1) has unit diagonal; ``None`` leaves the rows as they are. Zero rows stay zero;
6. ``flatten``: rows of shape (d,) (True) or images in NCHW (False).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..errors import InvalidArgumentError

__all__ = ["PREPARE_OPTIONS", "Dataset", "prepare"]

STANDARDIZE = (None, "global", "feature")
NORMALIZE = (None, "unit", "sqrt_dim")
PREPARE_OPTIONS = ("classes", "n_train", "n_test", "seed", "standardize", "normalize", "flatten", "dtype", "device")


@dataclass(frozen=True)
class Dataset:
    """A train/test split as tensors.

    Attributes:
        name: the data set's name (``"digits"``, ``"mnist"``, ...).
        x_train: (N_train, *input_shape) floating point; images are NCHW when not flattened.
        y_train: (N_train,) int64 class labels 0..n_classes-1, or (N_train, 1) floating targets for a
            regression set (``n_classes is None``).
        x_test, y_test: the same for the test split.
        n_classes: number of classes, ``None`` for regression.
        input_shape: per-example shape of ``x``: (d,) flattened, (C, H, W) for images.
        image_shape: (C, H, W) for image data sets (also when flattened), ``None`` otherwise.
        class_names: one name per class, in label order.
        info: the preprocessing that was applied (options and the train-split statistics).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int | None
    input_shape: tuple[int, ...]
    image_shape: tuple[int, int, int] | None = None
    class_names: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_test(self) -> int:
        return self.x_test.shape[0]

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def is_classification(self) -> bool:
        return self.n_classes is not None

    def targets(self, encoding: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
        """Regression targets for (train, test), in ``x_train``'s dtype, see :func:`ntkit.data.encode_targets`."""
        from .targets import encode_targets

        return (
            encode_targets(self.y_train, self.n_classes, encoding, dtype=self.x_train.dtype),
            encode_targets(self.y_test, self.n_classes, encoding, dtype=self.x_test.dtype),
        )

    def flatten(self) -> Dataset:
        """The same data with inputs flattened to (N, d)."""
        d = (self.n_features,)
        return replace(self, x_train=self.x_train.reshape(-1, *d), x_test=self.x_test.reshape(-1, *d), input_shape=d)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Dataset:
        """Inputs (and regression targets) moved to ``device`` and cast to the floating ``dtype``; labels keep int64."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return replace(
            self,
            x_train=move(self.x_train),
            y_train=move(self.y_train),
            x_test=move(self.x_test),
            y_test=move(self.y_test),
        )

    def __repr__(self) -> str:
        kind = f"{self.n_classes} classes" if self.is_classification else "regression"
        return (
            f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, {kind}, "
            f"dtype={self.x_train.dtype})"
        )


def _check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise InvalidArgumentError(f"{name}={value!r} is not one of {', '.join(repr(c) for c in choices)}.")


def _select_classes(
    x: np.ndarray, y: np.ndarray, classes: Sequence[int], n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isin(y, classes)
    relabel = np.full(n_classes, -1, dtype=np.int64)
    relabel[list(classes)] = np.arange(len(classes))
    return x[keep], relabel[y[keep]]


def _subset(
    x: np.ndarray, y: np.ndarray, n: int | None, seed: int, split: str, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` of a seeded permutation (one random stream per split, so the subsets are nested in n)."""
    if n is None:
        return x, y
    if not isinstance(n, int | np.integer) or n < 1:
        raise InvalidArgumentError(f"n_{split} must be a positive integer or None, got {n!r}.")
    if n > len(x):
        raise InvalidArgumentError(
            f"n_{split}={n} but the {split} split of {name!r} (after the class selection) has only {len(x)} examples."
        )
    idx = np.random.default_rng([seed, 0 if split == "train" else 1]).permutation(len(x))[:n]
    return x[idx], y[idx]


def _rescale_rows(x: torch.Tensor, target_norm: float) -> torch.Tensor:
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return torch.where(norms > 0, x * (target_norm / norms.clamp_min(torch.finfo(x.dtype).tiny)), x)


def prepare(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    n_classes: int | None,
    class_names: Sequence[str] = (),
    image_shape: tuple[int, int, int] | None = None,
    scale: float = 1.0,
    classes: Sequence[int] | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    standardize: str | None = "global",
    normalize: str | None = None,
    flatten: bool = True,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Dataset:
    """Turn raw arrays into a :class:`Dataset` (module docstring: the steps, in order).

    ``x_*``: (N, ...) arrays, rows in any shape (images as (N, C, H, W)); ``y_*``: (N,) integer labels, or
    (N, 1) float targets when ``n_classes`` is None. ``scale`` multiplies the raw values first (1/255 for
    uint8 pixels).
    """
    _check_choice("standardize", standardize, STANDARDIZE)
    _check_choice("normalize", normalize, NORMALIZE)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InvalidArgumentError(f"dtype must be a floating torch.dtype, got {dtype!r}.")
    info: dict[str, Any] = {"seed": seed, "standardize": standardize, "normalize": normalize}
    if classes is not None:
        if n_classes is None:
            raise InvalidArgumentError(f"{name!r} is a regression data set; it has no classes to select.")
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c < n_classes]
        if bad or len(set(classes)) != len(classes) or len(classes) < 2:
            raise InvalidArgumentError(
                f"classes={classes} must be at least two distinct labels in 0..{n_classes - 1} for {name!r}."
            )
        x_train, y_train = _select_classes(x_train, y_train, classes, n_classes)
        x_test, y_test = _select_classes(x_test, y_test, classes, n_classes)
        if class_names:
            class_names = [class_names[c] for c in classes]
        n_classes = len(classes)
        info["classes"] = classes
    x_train, y_train = _subset(x_train, y_train, n_train, seed, "train", name)
    x_test, y_test = _subset(x_test, y_test, n_test, seed, "test", name)

    xtr = torch.as_tensor(np.asarray(x_train, dtype=np.float64) * scale, dtype=dtype).reshape(len(x_train), -1)
    xte = torch.as_tensor(np.asarray(x_test, dtype=np.float64) * scale, dtype=dtype).reshape(len(x_test), -1)
    if standardize == "global":
        mean, std = xtr.mean(), xtr.std()
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
        info.update(mean=float(mean), std=float(std))
    elif standardize == "feature":
        mean, std = xtr.mean(0), xtr.std(0)
        std = torch.where(std > 1e-12 * std.max().clamp_min(1e-300), std, torch.ones_like(std))
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
    if normalize is not None:
        target = 1.0 if normalize == "unit" else float(xtr.shape[1]) ** 0.5
        xtr, xte = _rescale_rows(xtr, target), _rescale_rows(xte, target)

    shape = (xtr.shape[1],) if flatten or image_shape is None else tuple(image_shape)
    y_dtype = torch.int64 if n_classes is not None else dtype
    return Dataset(
        name=name,
        x_train=xtr.reshape(-1, *shape).to(device),
        y_train=torch.as_tensor(np.array(y_train), dtype=y_dtype).to(device),
        x_test=xte.reshape(-1, *shape).to(device),
        y_test=torch.as_tensor(np.array(y_test), dtype=y_dtype).to(device),
        n_classes=n_classes,
        input_shape=shape,
        image_shape=None if image_shape is None else (image_shape[0], image_shape[1], image_shape[2]),
        class_names=tuple(class_names),
        info=info,
    )
