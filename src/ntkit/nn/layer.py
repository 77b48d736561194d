"""Base classes of the ``ntkit.nn`` layers: torch modules that also map infinite-width kernels."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import Std, check_std
from ..errors import InvalidArgumentError
from ..infinite import transforms
from ..infinite.kernel_type import Kernel

__all__ = ["KernelLayer", "WeightLayer"]

PARAMETERIZATIONS = ("ntk", "standard")


class KernelLayer(nn.Module):
    """A layer that is a finite torch module and defines the kernel map of its infinite-width limit."""

    #: True if outputs at one position depend on inputs at other positions (pooling): kernels then need the
    #: covariances between all pairs of positions.
    mixes_positions: bool = False

    #: How the layer treats masked positions (``nk.kernel(..., mask_constant=)``): a rule of
    #: ``ntkit.infinite.masking.mask_rule``, or None if masks are not supported.
    mask_rule: str | None = None

    def kernel_transform(self, k: Kernel) -> Kernel:
        """The :class:`~ntkit.Kernel` of this layer's outputs given the kernel ``k`` of its inputs."""
        raise NotImplementedError


class WeightLayer(KernelLayer):
    """Weights W (out, in, *filter) and an optional bias b, in either parameterization (theory.md §1.1-1.2):

    - "ntk" (default): W, b ~ N(0, 1) are the trainable variables and y = (W_std/√fan_in)·(x ⋆ W) + b_std·b;
    - "standard": W ~ N(0, W_std²/fan_in), b ~ N(0, b_std²) and y = x ⋆ W / √s_in + b.

    Both give the same function distribution at initialisation (the same NNGP) but different gradients (NTK).
    ``s = (s_in, s_out)`` (standard parameterization only; neural-tangents' width multiplier, theory.md §4.4):
    the layer reads s_in·in and writes s_out·out channels (weight (s_out·out, s_in·in, ...)) but its NTK is
    normalised by the base widths in, out: a network widened by s has the same kernels.
    ``b_std=None`` means no bias. ``W_std``, ``b_std`` may be tensors (kernels are differentiable in them); they
    are kept as given, not as parameters of the finite network.
    """

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        *,
        W_std: Std,
        b_std: Std | None,
        parameterization: str,
        bias_shape: tuple[int, ...] | None = None,
        fan_in: int | None = None,
        s: tuple[int, int] = (1, 1),
    ) -> None:
        """``weight_shape`` (out, in, ...) and ``bias_shape`` (default (out,): one bias per output channel,
        broadcast over positions) at the base widths, which ``s`` multiplies; ``fan_in``: default the product of
        weight_shape[1:] (inputs per output unit, at the base width)."""
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise InvalidArgumentError(f"parameterization must be 'ntk' or 'standard', got {parameterization!r}.")
        check_std(W_std, "W_std")
        check_std(b_std, "b_std", allow_none=True)
        self.s = _width_multiplier(s, parameterization)
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization
        s_in, s_out = self.s
        bias_shape = bias_shape or weight_shape[:1]
        self.weight = nn.Parameter(torch.empty((s_out * weight_shape[0], s_in * weight_shape[1], *weight_shape[2:])))
        self.bias = nn.Parameter(torch.empty((s_out * bias_shape[0], *bias_shape[1:]))) if b_std is not None else None
        self._fan_in = fan_in or math.prod(weight_shape[1:])
        self.reset_parameters()

    @property
    def fan_in(self) -> int:
        return self._fan_in

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.parameterization == "ntk":
                self.weight.normal_()
                if self.bias is not None:
                    self.bias.normal_()
            else:
                self.weight.normal_(0.0, float(self.W_std) / math.sqrt(self.fan_in))
                if self.bias is not None and self.b_std is not None:  # a bias exists exactly when b_std is given
                    self.bias.normal_(0.0, float(self.b_std))

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        """Scale x ⋆ W (computed without bias) and add the bias, per the parameterization; channels on dim 1."""
        shape = (1, -1) + (1,) * (y.ndim - 2) if self.bias is None or self.bias.ndim == 1 else (1, *self.bias.shape)
        if self.parameterization == "ntk":
            y = y * (self.W_std / math.sqrt(self.fan_in))
            return y if self.bias is None or self.b_std is None else y + (self.b_std * self.bias).reshape(shape)
        if self.s[0] != 1:
            y = y / math.sqrt(self.s[0])
        return y if self.bias is None else y + self.bias.reshape(shape)

    def _weight_kernel(
        self, k: Kernel, in_channels: int, out_channels: int, geometry: transforms.ConvGeometry | None = None
    ) -> Kernel:
        """``transforms.weight_layer`` with this layer's variances and parameterization (channel counts at the base
        widths, multiplied by ``s`` here)."""
        s_in, s_out = self.s
        return transforms.weight_layer(
            k,
            W_var=self.W_std**2,
            b_var=None if self.b_std is None else self.b_std**2,
            parameterization=self.parameterization,
            in_channels=s_in * in_channels,
            out_channels=s_out * out_channels,
            geometry=geometry,
            layer=repr(self),
            s_in=s_in,
        )

    def extra_repr(self) -> str:
        multiplier = f", s={self.s}" if self.s != (1, 1) else ""
        return f"W_std={self.W_std}, b_std={self.b_std}, parameterization={self.parameterization!r}" + multiplier


def _width_multiplier(s: object, parameterization: str) -> tuple[int, int]:
    """``s`` checked: two positive ints, (1, 1) unless the parameterization is standard."""
    if not (
        isinstance(s, tuple | list)
        and len(s) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in s)
    ):
        raise InvalidArgumentError(f"s must be a pair of positive ints (s_in, s_out), got {s!r}.")
    if tuple(s) != (1, 1) and parameterization != "standard":
        raise InvalidArgumentError(
            f"the width multiplier s={tuple(s)} applies to the standard parameterization only (the NTK "
            "parameterization's kernels do not depend on widths); use parameterization='standard' or s=(1, 1)."
        )
    return (s[0], s[1])
