"""A synthetic regression set: points on the unit circle (or sphere) with a smooth target.

Inputs are drawn uniformly on the unit sphere S^{d-1} in R^d (``dim=2``: the circle). The target is the
harmonic polynomial ``Im((x_0 + i·x_1)^k)``, which on the circle is ``sin(k·θ)`` with θ the polar angle, and is a
smooth function of the point everywhere on the sphere. Optional Gaussian label noise of standard deviation
``noise`` is added to the train targets only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .dataset import Dataset, prepare

__all__ = ["circle_target", "load_circle"]


def circle_target(x: np.ndarray, frequency: int) -> np.ndarray:
    """Im((x_0 + i x_1)^k) for rows of ``x`` (N, d) → (N, 1); equals sin(k θ) on the unit circle."""
    return np.imag((x[:, 0] + 1j * x[:, 1]) ** frequency)[:, None]


def _sphere(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    g = rng.standard_normal((n, dim))
    unit: np.ndarray = g / np.linalg.norm(g, axis=1, keepdims=True)
    return unit


def load_circle(
    n_train: int = 64,
    n_test: int = 256,
    *,
    dim: int = 2,
    frequency: int = 2,
    noise: float = 0.0,
    seed: int = 0,
    **options: Any,
) -> Dataset:
    """Points on the unit sphere in R^``dim`` with target ``sin(frequency·θ)`` (module docstring).

    Returns a regression :class:`~ntkit.data.Dataset` (``n_classes=None``): x (N, dim), y (N, 1).
    ``options`` are those of :func:`ntkit.data.prepare`; by default no standardisation (the points are
    already on the unit sphere).
    """
    if not isinstance(dim, int) or dim < 2:
        raise InvalidArgumentError(f"dim must be an integer >= 2, got {dim!r}.")
    if not isinstance(frequency, int) or frequency < 1:
        raise InvalidArgumentError(f"frequency must be a positive integer, got {frequency!r}.")
    if noise < 0:
        raise InvalidArgumentError(f"noise must be >= 0, got {noise!r}.")
    for key, n in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(n, int) or n < 1:
            raise InvalidArgumentError(f"{key} must be a positive integer, got {n!r}.")
    rng = np.random.default_rng(seed)
    x_train, x_test = _sphere(n_train, dim, rng), _sphere(n_test, dim, rng)
    y_train = circle_target(x_train, frequency) + noise * rng.standard_normal((n_train, 1))
    y_test = circle_target(x_test, frequency)
    options.setdefault("standardize", None)
    data = prepare("circle", x_train, y_train, x_test, y_test, n_classes=None, seed=seed, **options)
    data.info.update(dim=dim, frequency=frequency, noise=noise)
    return data
