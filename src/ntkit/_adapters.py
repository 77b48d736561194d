"""What the scikit-learn and GPyTorch adapters (:mod:`ntkit.sklearn`, :mod:`ntkit.gpytorch`) share: importing
their optional dependency, and the infinite-width kernel of an architecture whose weight layers all take one
``W_std`` and one ``b_std`` (the two hyperparameters the adapters expose and fit)."""

from __future__ import annotations

import copy
import importlib
from types import ModuleType

import torch
from torch import nn

from .errors import MissingDependencyError, UnsupportedError
from .infinite.compute import kernel
from .infinite.registry import declare_init
from .nn.layer import WeightLayer

__all__ = ["kernel_diagonal", "kernel_matrix", "require", "with_shared_std"]

#: Plain PyTorch weight layers whose variances ``nk.kernel`` reads from :func:`ntkit.declare_init`.
_TORCH_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)

#: Rows of the blocks whose kernels give :func:`kernel_diagonal`: cost N·B instead of N².
_DIAGONAL_BLOCK = 256


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``import module``, or :class:`MissingDependencyError` saying that ``feature`` needs the ``extra`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs {module}, which is not installed ({exc.name or module} is missing): "
            f"pip install 'ntkit[{extra}]'."
        ) from None


def with_shared_std(architecture: nn.Module, W_std: float | torch.Tensor, b_std: float | torch.Tensor) -> nn.Module:
    """A copy of ``architecture`` whose weight layers all have ``W_std`` and ``b_std`` (layers without a bias keep
    none). ``ntkit.nn`` weight layers get them as attributes, plain ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d``
    by :func:`ntkit.declare_init`; tensors are kept as they are, so kernels of the copy are differentiable in them.

    Raises:
        UnsupportedError: the architecture has no weight layer (the hyperparameters would do nothing).
    """
    # The layers' own W_std/b_std may be tensors that are not graph leaves (deepcopy refuses those): they are
    # replaced anyway, so the copy shares them instead of copying.
    memo: dict[int, object] = {}
    for m in architecture.modules():
        for name in ("W_std", "b_std"):
            value = getattr(m, name, None)
            if isinstance(value, torch.Tensor):
                memo[id(value)] = value
    net = copy.deepcopy(architecture, memo)
    found = False
    for m in net.modules():
        if isinstance(m, WeightLayer):
            m.W_std = W_std
            if m.b_std is not None:
                m.b_std = b_std
            found = True
        elif isinstance(m, _TORCH_WEIGHT_LAYERS):
            declare_init(m, W_std=W_std, b_std=b_std)
            found = True
    if not found:
        raise UnsupportedError(
            f"the architecture {type(architecture).__name__} has no weight layer (ntkit.nn.Linear/Conv*, "
            "torch.nn.Linear/Conv1d/Conv2d), so W_std and b_std would change nothing; give it at least one."
        )
    return net


def kernel_matrix(net: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, get: str) -> torch.Tensor:
    """The per-output ``get`` kernel ("nngp" or "ntk") of ``net`` between x1 and x2 (x1 with itself for None,
    exactly symmetric), (N1, N2). Raises UnsupportedError for a network that keeps a spatial output layout."""
    k: torch.Tensor = getattr(kernel(net, x1, x2, get=get), get)
    if k.ndim != 2:
        raise UnsupportedError(
            f"the architecture's output keeps spatial dimensions (kernel shape {tuple(k.shape)}); end it with "
            "Flatten or GlobalAvgPool and a readout layer so that it has one kernel per pair of examples."
        )
    return k


def kernel_diagonal(net: nn.Module, x: torch.Tensor, get: str) -> torch.Tensor:
    """k(x_i, x_i) (N,), from the diagonals of the kernels of blocks of rows of x."""
    blocks = [
        torch.diagonal(kernel_matrix(net, x[i : i + _DIAGONAL_BLOCK], None, get))
        for i in range(0, x.shape[0], _DIAGONAL_BLOCK)
    ]
    return torch.cat(blocks)
