"""The networks of the experiments: fully connected networks in the NTK or the standard parameterization.

A dense layer (theory.md 1.1, paper eq. 1) computes, for inputs x of width n_in,

- ``"ntk"``:      h = (σ_w / √n_in) · x ωᵀ + σ_b · β,  with ω, β ~ N(0, 1) the trained parameters;
- ``"standard"``: h = x Wᵀ + b,  with W = (σ_w / √n_in) · ω and b = σ_b · β trained directly (SM eq. S36).

Both draw the same ω, β from the same generator, so for one seed the two networks compute the same function at
initialization; only their gradients (and so their training) differ. ``b_std=None`` means no bias.

Every network is built through :func:`dense`, the one place that chooses the layer class. It is :class:`NTKDense`
rather than ``ntkit.nn.Linear`` (same arguments: ``W_std``, ``b_std``, ``parameterization``) because it takes a
``generator``, so that both parameterizations draw the same ω, β for one seed and every experiment's networks are
reproducible from the run's seed alone.

:class:`NTKDense` has the kernel map of ``ntkit.nn.Linear`` (``kernel_transform``, theory.md 4.1), so
``nk.kernel(mlp(...), x)`` gives the infinite-width NNGP and NTK of the very network an experiment trains.
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
from ..infinite.kernel_type import Kernel
from ..infinite.transforms import weight_layer

__all__ = [
    "ACTIVATIONS",
    "NTKDense",
    "config_mlp",
    "dense",
    "dense_layers",
    "mlp",
    "readout_parameters",
    "standard_from_ntk",
]

PARAMETERIZATIONS = ("ntk", "standard")


class NTKDense(nn.Module):
    """A dense layer in the NTK or standard parameterization (module docstring); input (N, n_in) → (N, n_out)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        W_std: float = 1.0,
        b_std: float | None = 0.0,
        parameterization: str = "ntk",
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise InvalidArgumentError(f"parameterization={parameterization!r} is not one of {PARAMETERIZATIONS}.")
        self.in_features, self.out_features = in_features, out_features
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization
        omega = torch.randn(out_features, in_features, generator=generator, dtype=dtype)
        beta = torch.randn(out_features, generator=generator, dtype=dtype) if b_std is not None else None
        w_scale, b_scale = W_std / math.sqrt(in_features), (b_std or 0.0)
        if parameterization == "ntk":
            self.w_scale, self.b_scale = w_scale, b_scale
        else:
            omega, beta = omega * w_scale, (beta * b_scale if beta is not None else None)
            self.w_scale, self.b_scale = 1.0, 1.0
        self.weight = nn.Parameter(omega)
        self.bias = nn.Parameter(beta) if beta is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.linear(x, self.weight)
        if self.w_scale != 1.0:
            h = h * self.w_scale
        if self.bias is not None:
            h = h + self.b_scale * self.bias
        return h

    def kernel_transform(self, k: Kernel) -> Kernel:
        """The layer's infinite-width kernel map (theory.md 4.1; the one of ``ntkit.nn.Linear``), so that
        ``nk.kernel`` computes the analytic NNGP and NTK of the experiment networks themselves."""
        return weight_layer(
            k,
            W_var=self.W_std**2,
            b_var=None if self.b_std is None else self.b_std**2,
            parameterization=self.parameterization,
            in_channels=self.in_features,
            out_channels=self.out_features,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, W_std={self.W_std:g}, b_std={self.b_std}, "
            f"parameterization={self.parameterization!r}"
        )


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
) -> nn.Module:
    """One dense layer of an experiment network (the single place that chooses its implementation)."""
    return NTKDense(
        in_features,
        out_features,
        W_std=W_std,
        b_std=b_std,
        parameterization=parameterization,
        generator=generator,
        dtype=dtype,
    )


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
    empirical NNGP K̂ = x̄ x̄ᵀ of the last hidden layer (theory.md 3.3)."""
    name, module = dense_layers(model)[-1]
    return [f"{name}.{p}" for p, _ in module.named_parameters()]


def standard_from_ntk(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every NTK-parameterization :class:`NTKDense` layer turned into the standard
    parameterization with the same effective weights, W = (σ_w / √n_in) · ω and b = σ_b · β (SM eq. S36): the same
    function, whose parameters are W and b instead of ω and β, so gradient descent moves it differently. The
    model itself is not modified."""
    out = copy.deepcopy(model)
    for layer in out.modules():
        if isinstance(layer, NTKDense) and layer.parameterization == "ntk":
            with torch.no_grad():
                layer.weight.mul_(layer.w_scale)
                if layer.bias is not None:
                    layer.bias.mul_(layer.b_scale)
            layer.w_scale, layer.b_scale, layer.parameterization = 1.0, 1.0, "standard"
    return out
