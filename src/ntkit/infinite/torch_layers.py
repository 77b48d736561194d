"""The kernel maps of PyTorch's own layers, in one table (``nk.kernel`` on plain ``torch.nn`` models).

Weight layers use the standard parameterization with the module's own initialisation variances
(:func:`~ntkit.infinite.registry.declared_init`: PyTorch's default or what :func:`declare_init` declared).
Activations map to the ``ntkit.nn`` activation with the same function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .._validation import as_tuple, check_number
from ..errors import UnsupportedError
from ..gaussian.activations import GELU, Activation, Elementwise, LeakyReLU, ReLU
from . import transforms
from .kernel_type import Kernel
from .registry import apply_layers, declared_init, register_kernel

__all__ = ["ACTIVATIONS"]


def _gelu(m: nn.GELU) -> Activation:
    if m.approximate != "none":
        raise _unsupported(m, "the tanh approximation of GELU")
    return GELU()


#: PyTorch activation module type -> the ntkit activation with the same elementwise function (closed forms where
#: ntkit.nn has them, Gaussian quadrature through ``Elementwise`` otherwise).
ACTIVATIONS: dict[type, Callable[[nn.Module], Activation]] = {
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


def _conv(m: nn.Conv1d | nn.Conv2d, k: Kernel) -> Kernel:
    if m.groups != 1 or any(d != 1 for d in m.dilation):
        raise _unsupported(m, "a grouped or dilated convolution")
    if m.padding_mode not in ("zeros", "circular"):
        raise _unsupported(m, f"padding_mode={m.padding_mode!r}")
    if isinstance(m.padding, str):
        padding = m.padding
    elif len(set(m.padding)) == 1:
        padding = m.padding[0]
    else:
        raise _unsupported(m, "different paddings per axis")
    geometry = transforms.conv_geometry(k, m.kernel_size, m.stride, padding, circular=m.padding_mode == "circular")
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


def _avg_pool(m: nn.AvgPool1d | nn.AvgPool2d, k: Kernel) -> Kernel:
    if m.ceil_mode or not m.count_include_pad or getattr(m, "divisor_override", None) is not None:
        raise _unsupported(m, "average pooling with ceil_mode, count_include_pad=False or divisor_override")
    n = k.n_spatial
    return transforms.avg_pool(
        k,
        as_tuple(m.kernel_size, n, "kernel_size"),
        as_tuple(m.stride, n, "stride"),
        as_tuple(m.padding, n, "padding", 0),
    )


def _adaptive_avg_pool(m: nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d, k: Kernel) -> Kernel:
    if any(size != 1 for size in (m.output_size if isinstance(m.output_size, tuple) else (m.output_size,))):
        raise _unsupported(m, "adaptive pooling to an output size other than 1")
    return transforms.avg_pool(k, k.spatial_shape, k.spatial_shape, (0,) * k.n_spatial)


def _flatten(m: nn.Flatten, k: Kernel) -> Kernel:
    if m.start_dim != 1 or m.end_dim != -1:
        raise _unsupported(m, "flattening other than all non-batch axes (start_dim=1, end_dim=-1)")
    return transforms.flatten(k)


def _layer_norm(m: nn.LayerNorm, k: Kernel) -> Kernel:
    check_number(m.eps, f"{m!r}: eps", minimum=0.0)
    if k.n_spatial or tuple(m.normalized_shape) != (k.channels,):
        raise _unsupported(
            m,
            f"layer normalisation over {tuple(m.normalized_shape)} of inputs with {k.channels} channels and "
            f"spatial axes {k.spatial_shape} (only normalisation over the features of (N, C) inputs)",
        )
    return transforms.layer_norm(k, eps=m.eps, affine=m.elementwise_affine)


def _dropout(m: nn.Dropout, k: Kernel) -> Kernel:
    return transforms.dropout(k, m.p) if m.training and m.p > 0 else k


def _activation(m: nn.Module, k: Kernel) -> Kernel:
    return transforms.activation(k, ACTIVATIONS[type(m)](m))


register_kernel(nn.Linear, _linear)
register_kernel(nn.Conv1d, _conv)
register_kernel(nn.Conv2d, _conv)
register_kernel(nn.AvgPool1d, _avg_pool, mixes_positions=True)
register_kernel(nn.AvgPool2d, _avg_pool, mixes_positions=True)
register_kernel(nn.AdaptiveAvgPool1d, _adaptive_avg_pool, mixes_positions=True)
register_kernel(nn.AdaptiveAvgPool2d, _adaptive_avg_pool, mixes_positions=True)
register_kernel(nn.Flatten, _flatten)
register_kernel(nn.Identity, lambda m, k: k)
register_kernel(nn.Dropout, _dropout)
register_kernel(nn.LayerNorm, _layer_norm)
register_kernel(nn.Sequential, apply_layers)
for _type in ACTIVATIONS:
    register_kernel(_type, _activation)
