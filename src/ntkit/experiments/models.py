"""The networks of the experiments: fully connected networks in the NTK or the standard parameterization.

A dense layer (theory.md §1.1, paper eq. 1) computes, for inputs x of width n_in,

- ``"ntk"``:      h = (σ_w / √n_in) · x ωᵀ + σ_b · β,  with ω, β ~ N(0, 1) the trained parameters;
- ``"standard"``: h = x Wᵀ + b,  with W = (σ_w / √n_in) · ω and b = σ_b · β trained directly (SM eq. S36).

Both draw the same ω, β from the same generator, so for one seed the two networks compute the same function at
initialization; only their gradients (and so their training) differ. ``b_std=None`` means no bias.

Every network is built from :func:`dense` layers: ``ntkit.nn.Linear`` modules whose ω, β are drawn from a
generator, so that both parameterizations draw the same ω, β for one seed and every experiment's networks are
reproducible from the run's seed alone. Being ``ntkit.nn`` layers, ``nk.kernel(mlp(...), x)`` gives the
infinite-width NNGP and NTK of the very network an experiment trains.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..nn.linear import Linear

__all__ = [
    "ACTIVATIONS",
    "config_mlp",
    "dense",
    "dense_layers",
    "mlp",
    "readout_parameters",
    "standard_from_ntk",
]


class _Erf(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "erf": _Erf, "identity": nn.Identity}


def dense(
    in_features: int,
    out_features: int,
    *,
    W_std: float,
    b_std: float | None,
    parameterization: str,
    generator: torch.Generator,
    dtype: torch.dtype,
) -> Linear:
    """One dense layer of an experiment network: an ``ntkit.nn.Linear`` whose ω, β ~ N(0, 1) are drawn from
    ``generator`` (ω first), so that one seed gives the same function in both parameterizations; the standard one
    stores W = (σ_w / √n_in)·ω and b = σ_b·β (module docstring)."""
    with torch.device("meta"):  # allocates and draws nothing: the values come from ``generator`` below
        layer = Linear(in_features, out_features, W_std=W_std, b_std=b_std, parameterization=parameterization)
    omega = torch.randn(out_features, in_features, generator=generator, dtype=dtype)
    beta = torch.randn(out_features, generator=generator, dtype=dtype) if b_std is not None else None
    if parameterization == "standard":
        omega = omega * (W_std / math.sqrt(in_features))
        beta = None if beta is None or b_std is None else beta * b_std
    layer.weight = nn.Parameter(omega)
    layer.bias = None if beta is None else nn.Parameter(beta)
    return layer


def config_mlp(cfg: Any, x: torch.Tensor, out_features: int, seed: int, *, width: int | None = None) -> nn.Sequential:
    """The network of an experiment config: ``cfg.depth`` hidden layers of ``width`` (default ``cfg.width``), σ_w =
    ``cfg.W_std``, σ_b = ``cfg.b_std``, for inputs like ``x`` (N, d): its width d, dtype and device."""
    return mlp(
        x.shape[1], [width or cfg.width] * cfg.depth, out_features, W_std=cfg.W_std, b_std=cfg.b_std,
        seed=seed, dtype=x.dtype, device=x.device,
    )  # fmt: skip


def mlp(
    in_features: int,
    widths: Sequence[int],
    out_features: int,
    *,
    W_std: float = math.sqrt(2.0),
    b_std: float | None = math.sqrt(0.1),
    activation: str = "relu",
    parameterization: str = "ntk",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> nn.Sequential:
    """A fully connected network ``dense → φ → … → dense`` with hidden ``widths`` (L = len(widths) hidden layers).

    Defaults: ReLU, σ_w² = 2, σ_b² = 0.1 (the paper's Fig. 3 / S5 choice). Parameters are drawn on the CPU from a
    generator seeded with ``seed`` (so the network does not depend on the device), then moved to ``device``.
    Input (N, in_features) → output (N, out_features).
    """
    if activation not in ACTIVATIONS:
        raise InvalidArgumentError(f"activation={activation!r} is not one of {', '.join(ACTIVATIONS)}.")
    if not widths or any(int(w) < 1 for w in widths):
        raise InvalidArgumentError(f"widths must be a non-empty list of positive integers, got {list(widths)}.")
    gen = torch.Generator().manual_seed(seed)
    sizes = [in_features, *map(int, widths), out_features]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(
            dense(n_in, n_out, W_std=W_std, b_std=b_std, parameterization=parameterization, generator=gen, dtype=dtype)
        )
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers).to(device)


def dense_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer with a 2-d ``weight`` (dense layers), in forward order for a Sequential."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim == 2
    ]


def readout_parameters(model: nn.Module) -> list[str]:
    """Names of the last dense layer's parameters: ``params=`` for the readout-only tangent kernel, which is the
    empirical NNGP K̂ = x̄ x̄ᵀ of the last hidden layer (theory.md §3.3)."""
    name, module = dense_layers(model)[-1]
    return [f"{name}.{p}" for p, _ in module.named_parameters()]


def standard_from_ntk(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every NTK-parameterization ``ntkit.nn.Linear`` layer turned into the standard
    parameterization with the same effective weights, W = (σ_w / √n_in) · ω and b = σ_b · β (SM eq. S36): the same
    function, whose parameters are W and b instead of ω and β, so gradient descent moves it differently. The
    model itself is not modified."""
    out = copy.deepcopy(model)
    for layer in out.modules():
        if isinstance(layer, Linear) and layer.parameterization == "ntk":
            with torch.no_grad():
                layer.weight.mul_(layer.W_std / math.sqrt(layer.in_features))
                if layer.bias is not None and layer.b_std is not None:  # a bias exists exactly when b_std does
                    layer.bias.mul_(layer.b_std)
            layer.parameterization = "standard"
    return out
