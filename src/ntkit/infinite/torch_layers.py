"""The kernel maps of PyTorch's own layers, in one table (``nk.kernel`` on plain ``torch.nn`` models).

Weight layers use the standard parameterization with the module's own initialisation variances
(:func:`~ntkit.infinite.registry.declared_init`: PyTorch's default or what :func:`declare_init` declared).
Activations map to the ``ntkit.nn`` activation with the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from .._validation import check_number
from ..errors import UnsupportedError
from ..gaussian.activations import GELU, Activation, Elementwise, LeakyReLU, ReLU
from . import spatial, transforms
from .kernel_type import Kernel
from .registry import declared_init, register_kernel

__all__ = ["ACTIVATIONS"]

T = TypeVar("T")


def _gelu(m: nn.GELU) -> Activation:
    """The exact GELU in closed form; its tanh approximation (no closed form) by quadrature."""
    return GELU() if m.approximate == "none" else Elementwise(partial(F.gelu, approximate=m.approximate))


#: PyTorch activation module type -> the ntkit activation with the same elementwise function (closed forms where
#: ntkit.nn has them, Gaussian quadrature through ``Elementwise`` otherwise). Each function takes a module of its
#: key's type (so the table's value type cannot name it: Any).
ACTIVATIONS: dict[type[nn.Module], Callable[[Any], Activation]] = {
    nn.ReLU: lambda m: ReLU(),
    nn.LeakyReLU: lambda m: LeakyReLU(m.negative_slope),
    nn.GELU: _gelu,
    nn.Tanh: lambda m: Elementwise(torch.tanh),
    nn.Sigmoid: lambda m: Elementwise(torch.sigmoid),
    nn.SiLU: lambda m: Elementwise(F.silu),
}


def _unsupported(module: nn.Module, what: str) -> UnsupportedError:
    return UnsupportedError(
        f"{module!r}: {what} has no infinite-width kernel in ntkit. Use nk.monte_carlo_kernel to estimate the "
        "kernel of the finite network."
    )


def _linear(m: nn.Linear, k: Kernel) -> Kernel:
    W_var, b_var = declared_init(m)
    return transforms.weight_layer(
        k,
        W_var=W_var,
        b_var=b_var,
        parameterization="standard",
        in_channels=m.in_features,
        out_channels=m.out_features,
        layer=repr(m),
    )


def _conv(m: nn.Conv1d | nn.Conv2d | nn.Conv3d, k: Kernel) -> Kernel:
    if m.groups != 1:
        raise _unsupported(m, "a grouped convolution")
    if m.padding_mode not in ("zeros", "circular"):
        raise _unsupported(m, f"padding_mode={m.padding_mode!r}")
    geometry = transforms.conv_geometry(
        k, m.kernel_size, m.stride, m.padding, circular=m.padding_mode == "circular", dilation=m.dilation
    )
    W_var, b_var = declared_init(m)
    return transforms.weight_layer(
        k,
        W_var=W_var,
        b_var=b_var,
        parameterization="standard",
        in_channels=m.in_channels,
        out_channels=m.out_channels,
        geometry=geometry,
        layer=repr(m),
    )


def _tuple(value: T | tuple[T, ...] | list[T], n: int) -> tuple[T, ...]:
    """A module's per-axis setting (one value for every axis, or one per axis) as a tuple of ``n``."""
    return tuple(value) if isinstance(value, tuple | list) else (value,) * n


def _avg_pool(m: nn.AvgPool1d | nn.AvgPool2d | nn.AvgPool3d, k: Kernel) -> Kernel:
    if m.ceil_mode:
        raise _unsupported(m, "average pooling with ceil_mode=True")
    n = k.n_spatial
    override = getattr(m, "divisor_override", None)
    divisor = float(override) if override else "window" if m.count_include_pad else "valid"
    geometry = transforms.conv_geometry(
        k, _tuple(m.kernel_size, n), _tuple(m.stride, n), _tuple(m.padding, n), circular=False, layer="pooling"
    )
    return transforms.pool(k, geometry, divisor)


def _adaptive_avg_pool(m: nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d, k: Kernel) -> Kernel:
    if any(size != 1 for size in _tuple(m.output_size, k.n_spatial)):
        raise _unsupported(m, "adaptive pooling to an output size other than 1")
    shape = k.spatial_shape
    geometry = transforms.conv_geometry(k, shape, shape, 0, circular=False, layer="pooling")
    return transforms.pool(k, geometry, "window")  # one window covering everything: output shape (1, ..., 1)


#: nn.Upsample modes -> the separable interpolations of ``spatial.interpolation_matrices``.
_UPSAMPLE_MODES = {"nearest": "nearest", "nearest-exact": "nearest-exact"} | dict.fromkeys(
    ("linear", "bilinear", "trilinear"), "linear"
)


def _upsample(m: nn.Upsample, k: Kernel) -> Kernel:
    if m.mode not in _UPSAMPLE_MODES:
        raise _unsupported(m, f"mode={m.mode!r} (nearest, nearest-exact and (bi/tri)linear are supported)")
    n = k.n_spatial
    size = None if m.size is None else _tuple(m.size, n)
    scale = None if m.scale_factor is None else _tuple(m.scale_factor, n)
    matrices = spatial.interpolation_matrices(k.spatial_shape, size, scale, _UPSAMPLE_MODES[m.mode], m.align_corners)
    return transforms.separable_linear(k, matrices)


def _flatten(m: nn.Flatten, k: Kernel) -> Kernel:
    if m.start_dim != 1 or m.end_dim != -1:
        raise _unsupported(m, "flattening other than all non-batch axes (start_dim=1, end_dim=-1)")
    return transforms.flatten(k)


def _layer_norm(m: nn.LayerNorm, k: Kernel) -> Kernel:
    """torch's LayerNorm normalises the last len(normalized_shape) axes: the features of (N, C) inputs, or the
    channels and spatial axes of (N, C, *S) inputs when normalized_shape is (C, *S) (γ, β per position)."""
    check_number(m.eps, f"{m!r}: eps", minimum=0.0)
    if tuple(m.normalized_shape) != (k.channels, *k.spatial_shape):
        raise _unsupported(
            m,
            f"layer normalisation over {tuple(m.normalized_shape)} of inputs with {k.channels} channels and "
            f"spatial axes {k.spatial_shape} (only over all non-batch axes: normalized_shape = (C, *spatial))",
        )
    affine = "position" if k.n_spatial else "channel"
    return transforms.layer_norm(k, eps=m.eps, affine=affine if m.elementwise_affine else None, n_axes=k.n_spatial)


def _group_norm(m: nn.GroupNorm, k: Kernel) -> Kernel:
    if m.num_groups != 1:
        raise _unsupported(m, f"group normalisation with {m.num_groups} groups (one group is LayerNorm)")
    if m.num_channels != k.channels:
        raise _unsupported(m, f"group normalisation of {m.num_channels} channels after a layer with {k.channels}")
    return transforms.layer_norm(k, eps=m.eps, affine="channel" if m.affine else None, n_axes=k.n_spatial)


def _dropout(m: nn.Dropout, k: Kernel) -> Kernel:
    return transforms.dropout(k, m.p) if m.training and m.p > 0 else k


def _activation(m: nn.Module, k: Kernel) -> Kernel:
    return transforms.activation(k, ACTIVATIONS[type(m)](m))


register_kernel(nn.Linear, _linear)
_conv_type: type[nn.Conv1d | nn.Conv2d | nn.Conv3d]
for _conv_type in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_kernel(_conv_type, _conv)
_pool_type: type[nn.AvgPool1d | nn.AvgPool2d | nn.AvgPool3d]
for _pool_type in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d):
    register_kernel(_pool_type, _avg_pool, mixes_positions=True)
_adaptive_type: type[nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool3d]
for _adaptive_type in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d):
    register_kernel(_adaptive_type, _adaptive_avg_pool, mixes_positions=True)
register_kernel(nn.Flatten, _flatten)
register_kernel(nn.Upsample, _upsample, mixes_positions=True)
register_kernel(nn.Identity, lambda m, k: k)
register_kernel(nn.Dropout, _dropout)
register_kernel(nn.LayerNorm, _layer_norm)
register_kernel(nn.GroupNorm, _group_norm)
for _activation_type in ACTIVATIONS:
    register_kernel(_activation_type, _activation)
