"""scikit-learn's handwritten digits: 1797 images of 8×8 pixels with values 0..16, ten classes.

The data ship inside scikit-learn (no download). ntkit splits them once, with a fixed seed, into 1348 train
and 449 test images (a quarter for testing); ``seed`` then only chooses the ``n_train`` / ``n_test`` subsets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .dataset import Dataset, prepare

__all__ = ["load_digits"]

_SPLIT_SEED = 0
_TEST_FRACTION = 0.25


def load_digits(**options: Any) -> Dataset:
    """The digits data set as a :class:`~ntkit.data.Dataset`: inputs (N, 64), or (N, 1, 8, 8) with
    ``flatten=False``, pixels scaled to [0, 1] before standardisation; labels 0..9.

    ``options`` are those of :func:`ntkit.data.prepare` (``classes``, ``n_train``, ``n_test``, ``seed``,
    ``standardize`` (default ``"global"``), ``normalize``, ``flatten``, ``dtype``, ``device``).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = bunch.data.reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(x))
    n_test = round(_TEST_FRACTION * len(x))
    test, train = order[:n_test], order[n_test:]
    return prepare(
        "digits",
        x[train],
        y[train],
        x[test],
        y[test],
        n_classes=10,
        class_names=[str(c) for c in range(10)],
        image_shape=(1, 8, 8),
        scale=1.0 / 16.0,
        **options,
    )
