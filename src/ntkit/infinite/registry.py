"""Which kernel map each module type has: ``ntkit.nn`` layers carry their own, other modules are looked up here.

``register_kernel(ModuleType, fn)`` adds a type; ``fn(module, kernel) -> kernel`` gets the module instance (its
sizes and settings) and the input :class:`Kernel`. The entries for PyTorch's own layers live in
:mod:`.torch_layers`, all in one table. Layers that take or give several tensors (networks with several inputs
or outputs: ``ntkit.nn.combinators``) map a tuple of kernels with their ``kernels_transform``
(:func:`apply_kernels`); ``torch.nn.Sequential`` passes tuples through its layers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
from scipy import special
from torch import nn

from .._validation import Std, check_std
from ..errors import InitializationWarning, InvalidArgumentError, ShapeError, UnsupportedError
from .kernel_type import Kernel, Kernels
from .masking import apply_masked

__all__ = [
    "apply_kernels",
    "apply_layer",
    "apply_layers",
    "check_declared_init",
    "declare_init",
    "declared_init",
    "mixes_positions",
    "register_kernel",
]

KernelFn = Callable[[nn.Module, Kernel], Kernel]
M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class _Entry:
    fn: KernelFn
    mixes_positions: bool


_TABLE: dict[type, _Entry] = {}


def register_kernel(module_type: type[M], fn: Callable[[M, Kernel], Kernel], *, mixes_positions: bool = False) -> None:
    """Teach ``nk.kernel`` the infinite-width kernel map of a module type.

    Args:
        module_type: a ``torch.nn.Module`` subclass; its subclasses use the entry too unless registered.
        fn: ``fn(module, k) -> Kernel`` maps the kernel of the module's inputs to that of its outputs. Build it
            from :mod:`ntkit.infinite.transforms` (or ``k.replace(...)``); it must use only tensor operations
            (it also runs on the ``meta`` device, to plan memory before computing).
        mixes_positions: True if outputs at one position depend on inputs at other positions (pooling), so
            kernels need the covariances between all pairs of positions.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise InvalidArgumentError(f"register_kernel expects a torch.nn.Module subclass, got {module_type!r}.")
    if not callable(fn):
        raise InvalidArgumentError(f"register_kernel expects a function fn(module, kernel), got {fn!r}.")
    # the table is looked up with a module's own type (or a base class), so fn only ever gets an M
    _TABLE[module_type] = _Entry(cast(KernelFn, fn), mixes_positions)


def _entry(module: nn.Module) -> _Entry | None:
    for cls in type(module).__mro__:
        if cls in _TABLE:
            return _TABLE[cls]
    return None


def apply_layer(module: nn.Module, k: Kernel) -> Kernel:
    """The kernel of ``module``'s outputs given the kernel ``k`` of its inputs (with masked positions: through
    :func:`.masking.apply_masked`, which also carries the mask), for a layer with one output."""
    return one_kernel(apply_kernels(module, k), module)


def apply_kernels(module: nn.Module, k: Kernels) -> Kernels:
    """The kernels of ``module``'s outputs given those of its inputs: one :class:`Kernel` per tensor, a tuple where
    several tensors flow (networks with several inputs or outputs). Layers that take or give several tensors
    (``ntkit.nn``'s ``FanOut``, ``FanIn*``, ``Parallel``, ``Sequential``, and ``torch.nn.Sequential``) define
    ``kernels_transform``; every other layer takes one kernel and gives one."""
    if isinstance(k, tuple):
        if any(part.mask is not None for part in k):
            raise UnsupportedError(
                f"masked inputs (mask_constant) in a network with several inputs or branch outputs ({module!r}) are "
                "not supported yet; compute without mask_constant."
            )
        return _several(module, k)
    if k.mask is not None:
        return apply_masked(module, k, lambda unmasked: one_kernel(_apply_unmasked(module, unmasked), module))
    return _apply_unmasked(module, k)


def one_kernel(k: Kernels, module: nn.Module) -> Kernel:
    """``k`` if it is one kernel; several (the outputs of branches) raise :class:`ShapeError` naming ``module``."""
    if isinstance(k, tuple):
        raise ShapeError(
            f"{type(module).__name__} ({module!r}) gives {len(k)} outputs where one is expected; combine them "
            "with FanInSum(), FanInProduct() or FanInConcat() (or Parallel(..., fan_in='sum'|'product'|'concat'))."
        )
    return k


def _several(module: nn.Module, k: tuple[Kernel, ...]) -> Kernels:
    """A layer applied to several tensors: only layers that take them (``kernels_transform``) can."""
    transform = _kernels_transform(module)
    if transform is None:
        raise ShapeError(
            f"{type(module).__name__} ({module!r}) takes one input, but the layers before it give {len(k)} "
            "tensors (several network inputs, a FanOut, or Parallel(..., fan_in=None)); combine them first with "
            "FanInSum(), FanInProduct() or FanInConcat(), or apply one layer per tensor with "
            "Parallel(*layers, fan_in=None)."
        )
    return transform(k)


def _kernels_transform(module: nn.Module) -> Callable[[Kernels], Kernels] | None:
    """The map of a layer that takes or gives several kernels, or None (one kernel in, one out)."""
    own: Callable[[Kernels], Kernels] | None = getattr(module, "kernels_transform", None)
    if own is None and isinstance(module, nn.Sequential):  # torch's container carries tuples too
        return lambda k: apply_layers(module, k)
    return own


def _apply_unmasked(module: nn.Module, k: Kernel) -> Kernels:
    several = _kernels_transform(module)
    if several is not None:
        return several(k)
    transform = getattr(module, "kernel_transform", None)
    if transform is not None:
        result: Kernel = transform(k)
        return result
    entry = _entry(module)
    if entry is None:
        raise UnsupportedError(
            f"no infinite-width kernel is known for {type(module).__name__} ({module!r}). Write the network with "
            "ntkit.nn layers, register the layer's kernel with nk.register_kernel, or estimate the kernel of "
            "the finite network by sampling with nk.monte_carlo_kernel."
        )
    out = entry.fn(module, k)
    if not isinstance(out, Kernel):
        raise UnsupportedError(
            f"the kernel function registered for {type(module).__name__} ({entry.fn!r}) returned "
            f"{type(out).__name__}, not a Kernel; it must map the input Kernel to the output Kernel (build it with "
            "ntkit.infinite.transforms or k.replace(...))."
        )
    return out


def apply_layers(layers: Iterable[nn.Module], k: Kernels) -> Kernels:
    """The kernel(s) after ``layers`` in series (a ``Sequential``): each layer's map applied in turn."""
    for layer in layers:
        k = apply_kernels(layer, k)
    return k


def mixes_positions(module: nn.Module) -> bool:
    """Whether the layer's outputs at one position depend on inputs at other positions (pooling)."""
    own = getattr(module, "mixes_positions", None)
    if own is not None:
        return bool(own)
    entry = _entry(module)
    return entry is not None and entry.mixes_positions


# ----- initialisation of plain PyTorch weight layers ------------------------------------------------------------

_DECLARED = "_ntkit_init"


def declare_init(module: nn.Module, *, W_std: Std, b_std: Std | None, reinit: bool = False) -> nn.Module:
    """Declare how a plain PyTorch weight layer (nn.Linear, nn.Conv1d/2d/3d) is initialised, for ``nk.kernel``:
    weights ~ N(0, W_std² / fan_in) and bias ~ N(0, b_std²) (``b_std`` is ignored if the layer has no bias).

    Without a declaration ``nk.kernel`` assumes PyTorch's default initialisation (kaiming_uniform with a = √5):
    Var W = 1 / (3 fan_in), i.e. W_std² = 1/3, and bias ~ U(±1/√fan_in), i.e. b_std² = 1 / (3 fan_in).
    Only the variances matter in the infinite-width limit, so uniform and normal draws are the same here.

    With ``reinit=True`` the weights and bias are redrawn from those normal distributions (under no_grad), so
    the finite module and its kernel cannot disagree. Returns the module. ``W_std``, ``b_std`` may be tensors
    (for gradients of the kernel with respect to them).
    """
    weight, bias = _weight_and_bias(module)
    check_std(W_std, "W_std")
    check_std(b_std, "b_std", allow_none=bias is None)
    setattr(module, _DECLARED, (W_std, b_std))
    if reinit:
        with torch.no_grad():
            weight.normal_(0.0, float(W_std) / math.sqrt(weight[0].numel()))
            if bias is not None and b_std is not None:  # check_std allowed None only without a bias
                bias.normal_(0.0, float(b_std))
    return module


def _weight_and_bias(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias (None: the layer has no bias) of a plain PyTorch weight layer."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", False)
    if not isinstance(weight, nn.Parameter) or not (bias is None or isinstance(bias, torch.Tensor)):
        raise InvalidArgumentError(
            f"declare_init expects a layer with weight and bias (nn.Linear, nn.Conv*), got {module!r}."
        )
    return weight, bias


def declared_init(module: nn.Module) -> tuple[Std, Std | None]:
    """(W_var, b_var) of a plain weight layer: declared with :func:`declare_init`, or PyTorch's default.

    ``b_var`` is None when the layer has no bias.
    """
    weight, bias = _weight_and_bias(module)
    default = (math.sqrt(1 / 3), math.sqrt(1 / (3 * weight[0].numel())))
    declared: tuple[Std, Std | None] = getattr(module, _DECLARED, default)
    W_std, b_std = declared
    return W_std**2, (None if bias is None or b_std is None else b_std**2)


#: Two-sided false-alarm probability per tensor of :func:`check_declared_init` for weights drawn as declared.
INIT_FALSE_ALARM = 1e-6
_PLAIN_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def check_declared_init(model: nn.Module) -> None:
    """Warn (:class:`~ntkit.errors.InitializationWarning`) for each plain PyTorch weight layer of ``model`` whose
    weights or bias do not look drawn with the variance ``nk.kernel`` assumes (:func:`declared_init`), e.g. after
    the user re-initialised it without :func:`declare_init`.

    The test: for a tensor of n entries drawn i.i.d. with mean 0 and variance σ², the mean square s² satisfies
    n·s²/σ² ~ χ²_n for normal draws; uniform draws (PyTorch's default) vary less (Var W² = 0.8 σ⁴ against 2σ⁴),
    so the χ² interval is conservative for them. A tensor outside the central 1 − ``INIT_FALSE_ALARM`` interval
    is reported (σ² = 0, a declared ``b_std=0``: any non-zero entry). Layers of ``ntkit.nn`` draw their own
    weights and are not checked.
    """
    for name, module in model.named_modules():
        if not isinstance(module, _PLAIN_WEIGHT_LAYERS) or getattr(module, "kernel_transform", None) is not None:
            continue
        W_var, b_var = declared_init(module)
        weight: torch.Tensor = module.weight
        bias: torch.Tensor | None = module.bias
        where = f"layer {name!r} ({type(module).__name__})" if name else f"the model ({type(module).__name__})"
        source = "declared with nk.declare_init" if hasattr(module, _DECLARED) else "PyTorch's default initialisation"
        weight_var = _as_float(W_var) / weight[0].numel()
        for what, values, variance in (
            ("weight", weight, weight_var),
            ("bias", bias, None if b_var is None else _as_float(b_var)),
        ):
            if values is None or variance is None:
                continue
            mean_square = _mean_square_if_unlikely(values.detach(), variance)
            if mean_square is not None:
                warnings.warn(
                    f"{where}: its {what} entries have mean square {mean_square:.3g}, but nk.kernel assumes they "
                    f"are drawn with variance {variance:.3g} ({source}); the kernel describes networks "
                    "initialised that way, not these weights. If you re-initialised the layer, declare its "
                    "distribution with nk.declare_init(layer, W_std=..., b_std=...) (reinit=True redraws to match).",
                    InitializationWarning,
                    stacklevel=3,
                )


def _as_float(value: Std) -> float:
    """A declared variance (a number or a one-element tensor, kept as declared for gradients) as a float."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _mean_square_if_unlikely(values: torch.Tensor, variance: float) -> float | None:
    """The mean square of ``values`` if it lies outside the χ² interval of :func:`check_declared_init`."""
    n = values.numel()
    mean_square = float(values.double().square().mean())
    if variance == 0.0:
        return mean_square if mean_square > 0.0 else None
    q = n * mean_square / variance
    low = 2 * float(special.gammaincinv(n / 2, INIT_FALSE_ALARM / 2))  # χ²_n quantiles: 2·P⁻¹(n/2, p)
    high = 2 * float(special.gammaincinv(n / 2, 1 - INIT_FALSE_ALARM / 2))
    return mean_square if not low <= q <= high else None
