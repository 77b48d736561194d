"""Architectures and data shared by the adapter tests: a small MLP and a small CNN (on 1x6x6 images), built
with default W_std/b_std (the adapters replace them), and a regression data set drawn so that its evidence
has a well-defined maximum."""

from __future__ import annotations

import torch

from ntkit import nn as N

IMAGE = (1, 6, 6)


def mlp(d_in: int = 4) -> N.Sequential:
    return N.Sequential(N.Linear(d_in, 16), N.ReLU(), N.Linear(16, 16), N.Erf(), N.Linear(16, 1))


def cnn() -> N.Sequential:
    return N.Sequential(
        N.Conv2d(1, 4, 3), N.ReLU(), N.Conv2d(4, 4, 3), N.ReLU(), N.Flatten(), N.Linear(4 * 36, 1)
    )  # fmt: skip


def shared(architecture: N.Sequential, W_std: float, b_std: float) -> N.Sequential:
    """The same architecture with every weight layer's W_std, b_std set by hand (the adapters' reference)."""
    for m in architecture.modules():
        if isinstance(m, N.Linear | N.Conv2d):
            m.W_std, m.b_std = W_std, b_std
    return architecture


def regression_data(n_train: int, n_test: int, d: int, seed: int = 0):
    """x ~ N(0, I) (n, d) float64, y = sin(2 x·w) + noise (n,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64) / d**0.5
    y = torch.sin(2 * x @ w) + 0.1 * torch.randn(n_train + n_test, generator=g, dtype=torch.float64)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]
