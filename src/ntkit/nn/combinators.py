"""``Sequential``, ``Residual`` and ``Parallel``: layers composed in series or in parallel branches."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..infinite import transforms
from ..infinite.kernel_type import Kernel
from ..infinite.registry import apply_layer, apply_layers
from .layer import KernelLayer

__all__ = ["Parallel", "Residual", "Sequential"]


def _check_modules(layers: tuple[object, ...], where: str) -> tuple[nn.Module, ...]:
    """``layers`` as modules; anything else is an :class:`InvalidArgumentError` naming ``where``."""
    modules = []
    for layer in layers:
        if not isinstance(layer, nn.Module):
            raise InvalidArgumentError(f"{where} takes torch modules (layers), got {type(layer).__name__}: {layer!r}.")
        modules.append(layer)
    return tuple(modules)


class Sequential(nn.Sequential, KernelLayer):
    """Layers in series (a ``torch.nn.Sequential``); the kernel passes through each layer's map in turn.

    Layers may be ``ntkit.nn`` layers or PyTorch layers known to :func:`ntkit.register_kernel`'s registry.
    """

    mask_rule = "container"

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            super().__init__(args[0])
        else:
            super().__init__(*_check_modules(args, "Sequential"))

    def kernel_transform(self, k: Kernel) -> Kernel:
        return apply_layers(self, k)


_FAN_IN = ("sum", "product", "concat")


class Parallel(KernelLayer):
    """Branches applied to the same input, their outputs combined by ``fan_in``:

    - "sum": Σ_i branch_i(x);
    - "product": Π_i branch_i(x) elementwise;
    - "concat": the outputs concatenated along ``dim``: channels (1, the default) or a spatial axis (2, ...;
      branches must then be independent, each ending in its own Linear/convolution: block-diagonal kernel).

    Kernels: branches that end in their own Linear/convolution are independent of the others (zero
    cross-covariance); branches that are elementwise functions (identity, activations) of the same Gaussian
    layer are combined exactly (cross terms E[ψ_i(u) ψ_j(v)] by quadrature); concatenation needs no cross terms.
    Other correlated branches raise :class:`~ntkit.errors.UnsupportedError` (use Monte Carlo).
    """

    def __init__(self, *branches: nn.Module, fan_in: str = "sum", dim: int = 1) -> None:
        super().__init__()
        if fan_in not in _FAN_IN:
            raise InvalidArgumentError(f"fan_in must be one of {_FAN_IN}, got {fan_in!r}.")
        if not branches:
            raise InvalidArgumentError("Parallel needs at least one branch.")
        _check_modules(branches, "Parallel")
        if not isinstance(dim, int) or dim < 1 or (dim != 1 and fan_in != "concat"):
            raise InvalidArgumentError(f"dim is the concatenation axis (1: channels, 2, ...: spatial), got {dim!r}.")
        self.branches = nn.ModuleList(branches)
        self.fan_in, self.dim = fan_in, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = [branch(x) for branch in self.branches]
        if self.fan_in == "concat":
            return torch.cat(outs, dim=self.dim)
        total = outs[0]
        for out in outs[1:]:
            total = total + out if self.fan_in == "sum" else total * out
        return total

    mask_rule = "branches"  # concatenated along a spatial axis, the branches' masks are concatenated too

    def kernel_transform(self, k: Kernel) -> Kernel:
        outs = [apply_layer(branch, k) for branch in self.branches]
        if self.fan_in == "concat":
            if self.dim > 1:
                return transforms.fan_in_concat_spatial(outs, axis=self.dim - 2)
            return transforms.fan_in_concat(outs)
        combine = transforms.fan_in_sum if self.fan_in == "sum" else transforms.fan_in_product
        return combine(outs)

    def extra_repr(self) -> str:
        return f"fan_in={self.fan_in!r}" + (f", dim={self.dim}" if self.dim != 1 else "")


class Residual(KernelLayer):
    """x + block(x), with ``block`` = ``Sequential(*block)`` (a :class:`Parallel` of Identity and the block)."""

    mask_rule = "branches"

    def __init__(self, *block: nn.Module) -> None:
        super().__init__()
        _check_modules(block, "Residual")
        self.block = Sequential(*block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block(x)
        return x + out

    def kernel_transform(self, k: Kernel) -> Kernel:
        return transforms.fan_in_sum([k, self.block.kernel_transform(k)])
