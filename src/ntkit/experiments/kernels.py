"""Kernels at initialization and the linearization's outputs, as several experiments use them."""

from __future__ import annotations

import torch
from torch import nn

from ..empirical import empirical_ntk
from ..predict import gradient_descent_mse

__all__ = ["blocked_ntk", "linearized_outputs"]


def blocked_ntk(model: nn.Module, x: torch.Tensor, block: int | None) -> torch.Tensor:
    """Θ̂ on ``x`` (N, N) by ``nk.empirical_ntk`` on blocks of ``block`` points (the upper triangle of blocks,
    mirrored), so that at most the Jacobians of 2·block points are held at once; ``None``: one call."""
    n = x.shape[0]
    if block is None or block >= n:
        return empirical_ntk(model, x)
    out = x.new_empty(n, n)
    for i in range(0, n, block):
        for j in range(i, n, block):
            xi, xj = x[i : i + block], x[j : j + block]
            out[i : i + block, j : j + block] = empirical_ntk(model, xi) if i == j else empirical_ntk(model, xi, xj)
            out[j : j + block, i : i + block] = out[i : i + block, j : j + block].T
    return out


def linearized_outputs(
    ntk: torch.Tensor, f0: torch.Tensor, y: torch.Tensor, lr: float, steps: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) outputs, (T, N, k) and (T, M, k), after each of ``steps`` of ``torch.optim.SGD(lr)`` on
    ``MSELoss(reduction="mean")`` of the linear model with tangent kernel ``ntk`` on the N training points followed
    by M test points (N + M, N + M) and initial outputs ``f0`` (N + M, k), for targets ``y`` (N, k): the closed form
    ``nk.predict.gradient_descent_mse`` (theory.md §2.3). With the network's own Θ̂_0 and f_0 it equals training
    ``nk.linearize(network)`` with that loop, to float64 round-off."""
    n = y.shape[0]
    train, test = gradient_descent_mse(ntk[:n, :n], y, lr)(steps, f0[:n], f0[n:], ntk[n:, :n])
    return train, test
