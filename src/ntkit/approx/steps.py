"""A network as a list of feature steps: how each supported layer maps the features ψ_K (NNGP) and ψ_Θ (NTK) of
its inputs (docs/approx.md, theory.md §6.2 and §6.6).

Features are (B, *S, D) tensors: D features at each of the positions S (S = () for dense layers), with
K(x, y)(s, s') = ψ_K(x)(s)·ψ_K(y)(s') and the same for Θ. Every step below except the activation is an exact
linear map of the features, so it adds no randomness and no error:

- :class:`WeightStep` (``Linear``, ``Conv1d``, ``Conv2d``; Linear is a convolution with an empty filter): the
  patch ψ(s; ·) = concat over filter offsets d of ψ(s·stride + dilation·d) (zero outside the padded input,
  wrapped for circular padding), then ψ_K' = [W_std ψ_K(s; ·)/√|k|, b_std] and, NTK parameterization,
  ψ_Θ' = [ψ_K', W_std ψ_Θ(s; ·)/√|k|]; standard parameterization ψ_Θ' = [√C_in ψ_K(s; ·), 1, W_std ψ_Θ(s; ·)/√|k|].
  Inner products of patches are the sums over offsets of the shifted kernels, so these are K' = W_std² mean_d K
  + b_std² and Θ' exactly as ``transforms.weight_layer``;
- :class:`PoolStep` (average/sum pooling, windowed or global): the layer's own forward applied to the features
  (ψ'(p) = Σ_{a ∈ window(p)} ψ(a)/c(p), so ψ'(p)·ψ'(p') = Σ K(a, a')/(c(p)c(p')), the pooled kernel);
- :class:`FlattenStep`: ψ' = concat_s ψ(s)/√|S| (ψ'·ψ' = mean_s K(s, s), ``transforms.flatten``);
- :class:`ActivationStep`: random features or sketches of the activation (``activation_features``) at every
  position with the same draw (so that covariances between positions are estimated too), and ψ_Θ' the
  TensorSketch of ψ_Θ ⊗ f' at every position (Θ' = Θ ⊙ Ṫ).

:func:`parse` turns an ``ntkit.nn`` network into these steps, rejecting what they do not cover.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ShapeError, UnsupportedError
from ..gaussian.activations import Activation, compose
from ..infinite import spatial
from ..nn.conv import Conv1d, Conv2d
from ..nn.linear import Linear
from ..nn.pooling import AvgPool1d, AvgPool2d, GlobalAvgPool, GlobalSumPool, SumPool1d, SumPool2d
from ..nn.reshape import Flatten, Identity
from .activation_features import ActivationFeatures
from .sketches import TensorSketch

__all__ = ["ActivationStep", "Dims", "FlattenStep", "PoolStep", "Step", "WeightStep", "parse"]

EXACT_HINT = (
    "Compute its kernel exactly with nk.kernel (up to ~10^4-10^5 examples, fewer for pooled CNNs), or approximate "
    "it with nk.approx.nystrom(net, landmarks) (Nystrom features of the exact kernel; any architecture nk.kernel "
    "supports)."
)
SUPPORTED = (
    "ntkit.nn.Linear, Conv1d, Conv2d, ntkit.nn activations, AvgPool1d/2d, SumPool1d/2d, GlobalAvgPool, "
    "GlobalSumPool, Flatten and Identity"
)
_POOLS = (AvgPool1d, AvgPool2d, SumPool1d, SumPool2d, GlobalAvgPool, GlobalSumPool)


@dataclass(frozen=True)
class Dims:
    """The number of features per position of ψ_K (``k``) and ψ_Θ (``t``; 0 before the first weight layer)."""

    k: int
    t: int


@dataclass(frozen=True)
class WeightStep:
    """A ``Linear`` (``kernel_size == ()``) or ``Conv1d``/``Conv2d`` layer (module doc)."""

    W_std: float
    b_std: float | None
    parameterization: str
    in_channels: int
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    padding: str | int = "valid"
    circular: bool = False
    name: str = "Linear"

    @property
    def receptive(self) -> int:
        """|k|, the number of filter offsets (1 for Linear)."""
        return math.prod(self.kernel_size)

    def dims(self, d: Dims) -> Dims:
        k = d.k * self.receptive + (self.b_std is not None)
        return Dims(k, k + d.t * self.receptive)  # both parameterizations: |k| dim ψ_K + bias + |k| dim ψ_Θ

    def patches(self, psi: torch.Tensor) -> torch.Tensor:
        """(B, *S, D) -> (B, *S', D·|k|): at every output position the concatenated inputs of its filter."""
        if not self.kernel_size:
            return psi
        n = len(self.kernel_size)
        x = psi.movedim(-1, 1)  # (B, D, *S)
        pads = spatial.conv_paddings(tuple(x.shape[2:]), self.kernel_size, self.stride, self.padding, self.dilation)
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad lists the last axis first
        if any(flat):
            x = F.pad(x, flat, mode="circular" if self.circular else "constant")
        out = [
            (size - dil * (k - 1) - 1) // s + 1
            for size, k, s, dil in zip(x.shape[2:], self.kernel_size, self.stride, self.dilation, strict=True)
        ]
        if min(out) < 1:
            raise ShapeError(
                f"the {self.name} layer's filter {self.kernel_size} does not fit its inputs of spatial shape "
                f"{tuple(psi.shape[1:-1])}; the network could not run on these inputs."
            )
        lift = (1,) * (2 - n)  # a 1-d convolution is a 2-d one over a height of 1
        cols = F.unfold(
            x.reshape(*x.shape[:2], *lift, *x.shape[2:]),
            lift + self.kernel_size,
            dilation=lift + self.dilation,
            stride=lift + self.stride,
        )  # (B, D·|k|, |S'|)
        return cols.transpose(1, 2).reshape(x.shape[0], *out, cols.shape[1])

    def __call__(
        self, psi_k: torch.Tensor, psi_t: torch.Tensor | None, need_ntk: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        patch_k = self.patches(psi_k)
        scale = self.W_std / math.sqrt(self.receptive)
        bias = [] if self.b_std is None else [patch_k.new_full((*patch_k.shape[:-1], 1), self.b_std)]
        new_k = torch.cat([scale * patch_k, *bias], dim=-1)
        if not need_ntk:
            return new_k, None
        scaled = [] if psi_t is None else [scale * self.patches(psi_t)]
        if self.parameterization == "standard":
            ones = [torch.ones_like(b) for b in bias]
            return new_k, torch.cat([math.sqrt(self.in_channels) * patch_k, *ones, *scaled], dim=-1)
        return new_k, torch.cat([new_k, *scaled], dim=-1)


@dataclass(frozen=True)
class PoolStep:
    """Average or sum pooling, windowed or global: the layer's forward on (B, D, *S) features."""

    layer: nn.Module

    def dims(self, d: Dims) -> Dims:
        return d

    def __call__(
        self, psi_k: torch.Tensor, psi_t: torch.Tensor | None, need_ntk: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._pool(psi_k), None if psi_t is None else self._pool(psi_t)

    def _pool(self, psi: torch.Tensor) -> torch.Tensor:
        if psi.ndim == 2:
            raise ShapeError(f"{type(self.layer).__name__} got inputs without spatial axes; inputs are (N, C, *S).")
        pooled: torch.Tensor = self.layer(psi.movedim(-1, 1))
        return pooled.movedim(1, -1)


@dataclass(frozen=True)
class FlattenStep:
    """(B, *S, D) -> (B, |S|·D)/√|S|; ``positions`` = |S| (read from the Linear layer that follows)."""

    positions: int

    def dims(self, d: Dims) -> Dims:
        return Dims(d.k * self.positions, d.t * self.positions)

    def __call__(
        self, psi_k: torch.Tensor, psi_t: torch.Tensor | None, need_ntk: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._flatten(psi_k), None if psi_t is None else self._flatten(psi_t)

    def _flatten(self, psi: torch.Tensor) -> torch.Tensor:
        positions = math.prod(psi.shape[1:-1])
        if positions != self.positions:
            raise ShapeError(
                f"Flatten got {positions} positions {tuple(psi.shape[1:-1])}, but the Linear layer after it takes "
                f"{self.positions} positions' worth of features; the network could not run on these inputs."
            )
        return psi.reshape(psi.shape[0], -1) / math.sqrt(positions)


@dataclass
class ActivationStep:
    """An activation (consecutive ones composed), with its features and the NTK's product sketch once drawn."""

    act: Activation
    features: ActivationFeatures | None = None
    product: TensorSketch | None = None  # ψ_Θ ⊗ f' -> ψ_Θ'

    def __call__(
        self, psi_k: torch.Tensor, psi_t: torch.Tensor | None, need_ntk: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert self.features is not None
        positions = psi_k.shape[:-1]
        f, derivative = self.features(psi_k.reshape(-1, psi_k.shape[-1]), need_ntk)
        if not need_ntk:
            return f.reshape(*positions, -1), None
        assert self.product is not None and psi_t is not None and derivative is not None
        new_t = self.product(psi_t.reshape(-1, psi_t.shape[-1]), derivative)
        return f.reshape(*positions, -1), new_t.reshape(*positions, -1)


Step = WeightStep | PoolStep | FlattenStep | ActivationStep


def parse(net: nn.Module) -> tuple[list[Step], bool]:
    """The network as steps, and whether it starts with a Flatten of its inputs (then inputs of any shape are
    flattened first). Consecutive activations are composed; Identity is dropped."""
    layers = [layer for layer in _layers(net) if not isinstance(layer, Identity)]
    leading_flatten = False
    while layers and isinstance(layers[0], Flatten):
        layers.pop(0)
        leading_flatten = True
    steps: list[Step] = []
    n_spatial: int | None = None  # spatial axes of the current tensor; None before the first weight layer
    channels = 0  # the network's channels (features) at this point
    for i, layer in enumerate(layers):
        if isinstance(layer, Linear | Conv1d | Conv2d):
            axes = 0 if isinstance(layer, Linear) else layer.n_dims
            if n_spatial is not None and n_spatial != axes:
                raise UnsupportedError(_axes_message(layer, n_spatial))
            steps.append(_weight_step(layer))
            n_spatial = axes
            channels = layer.out_features if isinstance(layer, Linear) else layer.out_channels
        elif isinstance(layer, Activation):
            if n_spatial is None:
                raise UnsupportedError(
                    f"{type(layer).__name__} is applied to the network input, which is not random: apply it to "
                    "the data first, or start the network with a Linear or Conv layer."
                )
            if isinstance(steps[-1], ActivationStep):
                steps[-1] = ActivationStep(compose(steps[-1].act, layer))
            else:
                steps.append(ActivationStep(layer))
        elif isinstance(layer, _POOLS) and n_spatial:
            if not isinstance(layer, GlobalAvgPool | GlobalSumPool) and layer.n_dims != n_spatial:
                raise UnsupportedError(_axes_message(layer, n_spatial))
            steps.append(PoolStep(layer))
            n_spatial = 0 if isinstance(layer, GlobalAvgPool | GlobalSumPool) else n_spatial
        elif isinstance(layer, Flatten) and n_spatial is not None:
            if n_spatial:
                steps.append(FlattenStep(_flattened_positions(layers[i + 1 :], channels)))
                channels, n_spatial = 0, 0
        else:
            raise UnsupportedError(_unsupported_message(layer, n_spatial))
    _check_whole(steps, n_spatial)
    return steps, leading_flatten


def _weight_step(layer: Linear | Conv1d | Conv2d) -> WeightStep:
    # W_std/b_std given as tensors are read as numbers: features are not differentiable in them
    b_std = None if layer.b_std is None else float(layer.b_std)
    if isinstance(layer, Linear):
        return WeightStep(float(layer.W_std), b_std, layer.parameterization, layer.in_features)
    if not isinstance(layer.padding, str | int):
        raise UnsupportedError(f"{layer!r}: padding must be 'same', 'valid' or an int.")
    return WeightStep(
        float(layer.W_std),
        b_std,
        layer.parameterization,
        layer.in_channels,
        layer.kernel_size,
        layer.stride,
        layer.dilation,
        layer.padding,
        layer.padding_mode == "circular",
        type(layer).__name__,
    )


def _flattened_positions(rest: list[nn.Module], channels: int) -> int:
    """|S| at a Flatten of spatial features: the next layer must be a Linear taking channels·|S| features."""
    after = rest[0] if rest else None
    if isinstance(after, Activation):
        raise UnsupportedError(
            f"{type(after).__name__} follows Flatten: the flattened units have different variances, so (as for "
            "nk.kernel) a nonlinearity cannot follow directly; put a Linear layer between them."
        )
    if not isinstance(after, Linear):
        raise UnsupportedError(
            "nk.approx.features needs a Linear layer right after a Flatten of spatial features (its in_features "
            f"gives the number of positions); got {type(after).__name__ if after is not None else 'the end'}."
        )
    positions, rest_ = divmod(after.in_features, channels)
    if rest_ or positions < 1:
        raise ShapeError(
            f"the Linear layer after Flatten takes {after.in_features} features, not a multiple of the "
            f"{channels} channels before Flatten; the network could not run."
        )
    return positions


def _check_whole(steps: list[Step], n_spatial: int | None) -> None:
    weights = [s for s in steps if isinstance(s, WeightStep)]
    if not weights:
        raise UnsupportedError("nk.approx.features needs a network with a Linear or Conv layer.")
    if not any(isinstance(s, ActivationStep) for s in steps):
        raise UnsupportedError(
            "this network has no activation: its kernels are linear in x·y, so use nk.kernel (exact and cheap)."
        )
    if len({w.parameterization for w in weights}) > 1:
        raise UnsupportedError(
            "this network mixes the 'ntk' and 'standard' parameterizations; nk.approx.features needs one for every "
            "layer (nk.kernel computes mixed networks exactly)."
        )
    if n_spatial:
        raise UnsupportedError(
            "nk.approx.features needs a network whose output is (N, outputs): end it with GlobalAvgPool() or "
            "Flatten() and a Linear layer (the kernel per output position is not implemented). " + EXACT_HINT
        )


def _axes_message(layer: nn.Module, n_spatial: int) -> str:
    return (
        f"{type(layer).__name__} got inputs with {n_spatial} spatial axes; the network could not run. Inputs are "
        "(N, C, *spatial), channels first; add Flatten() or GlobalAvgPool() before a Linear layer."
    )


def _unsupported_message(layer: nn.Module, n_spatial: int | None) -> str:
    name = type(layer).__name__
    if n_spatial is None and isinstance(layer, (*_POOLS, Flatten)):
        return (
            f"nk.approx.features does not support {name} on the network input (it is not random): pool the data "
            "first, or start the network with a Linear or Conv layer."
        )
    if isinstance(layer, _POOLS) and not n_spatial:
        return f"{name} got inputs without spatial axes (after a Linear layer or global pooling); remove it."
    plain = type(layer).__module__.startswith("torch.nn")
    hint = "Build the network from ntkit.nn layers (parameterization='standard' for PyTorch's). " if plain else ""
    return (
        hint + f"nk.approx.features does not support {name} layers: it supports {SUPPORTED} (dense and "
        "convolutional networks with pooling). " + EXACT_HINT
    )


def _layers(net: nn.Module) -> Iterator[nn.Module]:
    if isinstance(net, nn.Sequential):
        for layer in net:
            yield from _layers(layer)
    else:
        yield net
