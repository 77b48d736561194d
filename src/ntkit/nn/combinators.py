"""Layers composed in series or in parallel branches, and networks with several inputs or outputs.

``Sequential``, ``Residual`` and ``Parallel`` compose layers. Several tensors flow through a network as a tuple
(neural-tangents' lists): a network may take a tuple of inputs (``net((x_a, x_b))``, ``nk.kernel(net, (x_a,
x_b))``), ``FanOut(n)`` copies one tensor into n, ``Parallel(*layers, fan_in=None)`` applies one layer per tensor
(neural-tangents' ``parallel``), and ``FanInSum``, ``FanInProduct``, ``FanInConcat`` join a tuple into one tensor.
A network that ends with several tensors returns them as a tuple, and ``nk.kernel`` one ``Kernel`` per output.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

import torch
from torch import nn

from ..errors import InvalidArgumentError, ShapeError
from ..infinite import transforms
from ..infinite.kernel_type import Kernel, Kernels
from ..infinite.registry import apply_layer, apply_layers, one_kernel
from .layer import KernelLayer

__all__ = ["FanInConcat", "FanInProduct", "FanInSum", "FanOut", "Parallel", "Residual", "Sequential"]

#: What flows between layers of the finite network: one tensor, or a tuple of them (several inputs or branches).
Tensors = torch.Tensor | tuple[torch.Tensor, ...]


def _check_modules(layers: tuple[object, ...], where: str) -> tuple[nn.Module, ...]:
    """``layers`` as modules; anything else is an :class:`InvalidArgumentError` naming ``where``."""
    modules = []
    for layer in layers:
        if not isinstance(layer, nn.Module):
            raise InvalidArgumentError(f"{where} takes torch modules (layers), got {type(layer).__name__}: {layer!r}.")
        modules.append(layer)
    return tuple(modules)


#: One tensor or kernel (the finite network's or the kernel map's).
T = TypeVar("T", torch.Tensor, Kernel)


def _count_mismatch(layer: nn.Module, expected: int, got: int) -> ShapeError:
    return ShapeError(
        f"{type(layer).__name__} has {expected} branches but receives {got} tensors; pass one input per branch "
        f"(a tuple of {expected}), or one tensor for all of them."
    )


class _Branching(KernelLayer):
    """A layer that may take or give several tensors: its map is ``kernels_transform`` (one kernel, or a tuple of
    them), and ``kernel_transform`` is that map for one kernel in and one out (several out: ``ShapeError``)."""

    def kernels_transform(self, k: Kernels) -> Kernels:
        raise NotImplementedError

    def kernel_transform(self, k: Kernel) -> Kernel:
        return one_kernel(self.kernels_transform(k), self)


class Sequential(nn.Sequential, _Branching):
    """Layers in series (a ``torch.nn.Sequential``); the kernel passes through each layer's map in turn.

    Layers may be ``ntkit.nn`` layers or PyTorch layers known to :func:`ntkit.register_kernel`'s registry.
    Tuples of tensors (several inputs or branches) pass through as well.
    """

    mask_rule = "container"

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            super().__init__(args[0])
        else:
            super().__init__(*_check_modules(args, "Sequential"))

    def kernels_transform(self, k: Kernels) -> Kernels:
        return apply_layers(self, k)


_FAN_IN = ("sum", "product", "concat")


def _fan_in_kernel(kernels: list[Kernel], fan_in: str, dim: int) -> Kernel:
    """The kernel of branch outputs combined by ``fan_in`` (concatenated along ``dim``)."""
    if fan_in == "concat":
        if dim > 1:
            return transforms.fan_in_concat_spatial(kernels, axis=dim - 2)
        return transforms.fan_in_concat(kernels)
    combine = transforms.fan_in_sum if fan_in == "sum" else transforms.fan_in_product
    return combine(kernels)


def _fan_in_tensor(outs: list[torch.Tensor], fan_in: str, dim: int) -> torch.Tensor:
    """The finite network's outputs combined by ``fan_in``."""
    if fan_in == "concat":
        return torch.cat(outs, dim=dim)
    total = outs[0]
    for out in outs[1:]:
        total = total + out if fan_in == "sum" else total * out
    return total


def _check_fan_in(fan_in: object, dim: object, allow_none: bool) -> None:
    allowed = (*_FAN_IN, None) if allow_none else _FAN_IN
    if fan_in not in allowed:
        raise InvalidArgumentError(f"fan_in must be one of {allowed}, got {fan_in!r}.")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1 or (dim != 1 and fan_in != "concat"):
        raise InvalidArgumentError(f"dim is the concatenation axis (1: channels, 2, ...: spatial), got {dim!r}.")


class Parallel(_Branching):
    """Branches, their outputs combined by ``fan_in``:

    - "sum": Σ_i branch_i(x);
    - "product": Π_i branch_i(x) elementwise;
    - "concat": the outputs concatenated along ``dim``: channels (1, the default) or a spatial axis (2, ...;
      branches must then be independent, each ending in its own Linear/convolution: block-diagonal kernel);
    - None: not combined, a tuple of the branches' outputs (neural-tangents' ``parallel``).

    The input is one tensor, which every branch gets (neural-tangents' FanOut), or a tuple of one tensor per
    branch (several network inputs, or the outputs of an earlier ``FanOut`` / ``Parallel(..., fan_in=None)``).

    Kernels: branches that end in their own Linear/convolution are independent of the others (zero
    cross-covariance); branches that are elementwise functions (identity, activations) of the same Gaussian
    layer are combined exactly (cross terms E[ψ_i(u) ψ_j(v)] by quadrature); concatenation needs no cross terms.
    Other correlated branches raise :class:`~ntkit.errors.UnsupportedError` (use Monte Carlo).
    """

    def __init__(self, *branches: nn.Module, fan_in: str | None = "sum", dim: int = 1) -> None:
        super().__init__()
        _check_fan_in(fan_in, dim, allow_none=True)
        if not branches:
            raise InvalidArgumentError("Parallel needs at least one branch.")
        _check_modules(branches, "Parallel")
        self.branches = nn.ModuleList(branches)
        self.fan_in, self.dim = fan_in, dim

    def _inputs(self, x: T | tuple[T, ...] | list[T]) -> list[T]:
        """The input of each branch: the same for all, or one each from a tuple."""
        if not isinstance(x, tuple | list):
            return [x] * len(self.branches)
        if len(x) != len(self.branches):
            raise _count_mismatch(self, len(self.branches), len(x))
        return list(x)

    def forward(self, x: Tensors) -> Tensors:
        outs: list[torch.Tensor] = [branch(xi) for branch, xi in zip(self.branches, self._inputs(x), strict=True)]
        return tuple(outs) if self.fan_in is None else _fan_in_tensor(outs, self.fan_in, self.dim)

    @property
    def mask_rule(self) -> str | None:  # type: ignore[override]
        """Masked inputs: each branch carries the mask (concatenated along a spatial axis, the branches' masks are
        concatenated too); not supported when giving several outputs (``fan_in=None``)."""
        return "branches" if self.fan_in is not None else None

    def kernels_transform(self, k: Kernels) -> Kernels:
        inputs = self._inputs(k)
        outs = [apply_layer(branch, ki) for branch, ki in zip(self.branches, inputs, strict=True)]
        return tuple(outs) if self.fan_in is None else _fan_in_kernel(outs, self.fan_in, self.dim)

    def extra_repr(self) -> str:
        return f"fan_in={self.fan_in!r}" + (f", dim={self.dim}" if self.dim != 1 else "")


class FanOut(_Branching):
    """n copies of one tensor, as a tuple (neural-tangents' ``FanOut``): y = (x, ..., x). Followed by
    ``Parallel(*n_layers, fan_in=None)`` and a fan-in, or left as n outputs of the network."""

    mask_rule = None

    def __init__(self, n: int) -> None:
        super().__init__()
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InvalidArgumentError(f"FanOut(n) takes the number of copies n >= 1, got {n!r}.")
        self.n = n

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if isinstance(x, tuple | list):
            raise ShapeError(f"FanOut copies one tensor, but receives {len(x)}; combine them first (FanInSum, ...).")
        return (x,) * self.n

    def kernels_transform(self, k: Kernels) -> Kernels:
        return (one_kernel(k, self),) * self.n  # the same kernel: the copies are one Gaussian (correlated branches)

    def extra_repr(self) -> str:
        return str(self.n)


class _FanIn(_Branching):
    """Several tensors (a tuple) joined into one by ``fan_in`` (``FanInSum``, ``FanInProduct``, ``FanInConcat``)."""

    fan_in = "sum"
    dim = 1

    def _tuple(self, x: T | tuple[T, ...] | list[T]) -> list[T]:
        if not isinstance(x, tuple | list):
            raise ShapeError(
                f"{type(self).__name__} joins several tensors (a tuple: several network inputs, or the outputs of "
                "FanOut / Parallel(..., fan_in=None)), but receives one."
            )
        return list(x)

    def forward(self, x: Tensors) -> torch.Tensor:
        return _fan_in_tensor(self._tuple(x), self.fan_in, self.dim)

    def kernels_transform(self, k: Kernels) -> Kernels:
        return _fan_in_kernel(self._tuple(k), self.fan_in, self.dim)


class FanInSum(_FanIn):
    """y = Σ_i x_i of a tuple of tensors (neural-tangents' ``FanInSum``); kernels as ``Parallel(fan_in="sum")``."""


class FanInProduct(_FanIn):
    """y = Π_i x_i elementwise (neural-tangents' ``FanInProd``); kernels as ``Parallel(fan_in="product")``."""

    fan_in = "product"


class FanInConcat(_FanIn):
    """The tensors concatenated along ``dim`` (1: channels, 2, ...: a spatial axis; neural-tangents'
    ``FanInConcat``); kernels as ``Parallel(fan_in="concat", dim=dim)``."""

    fan_in = "concat"

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        _check_fan_in("concat", dim, allow_none=False)
        self.dim = dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


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
