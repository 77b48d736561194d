"""Linearized and Taylor-expanded models: f_lin(x) = f0(x) + J0(x)(θ − θ0), as trainable ``nn.Module`` s.

``linearize(model)`` is the paper's central object (theory.md §2.1, eq. 5 of Lee et al. 2019): the
network replaced by its first-order Taylor expansion in the parameters around θ0. ``taylor_expand``
generalises it to any degree k:

    f_k(x; θ) = Σ_{j=0}^{k} D^j_θ f(x; θ0)[δ, …, δ] / j!,        δ = θ − θ0.

Layout of the returned module (see ``docs/linearize.md``):

- ``theta``: the trainable parameters θ (``nn.Parameter``), initialised at θ0, in a tree of plain
  modules that mirrors the wrapped model, so ``dict(lin.theta.named_parameters())`` has the model's
  own parameter names (``"0.weight"``) and ``lin.named_parameters()`` gives ``"theta.0.weight"``.
- ``model0``: a deep copy of the wrapped model in which every parameter has become a buffer: θ0 for
  the selected ones, the frozen values for the others, next to the model's own buffers. Calling
  ``lin.model0(x)`` gives f0(x). Its train/eval mode is fixed at construction.

Everything is a parameter or a buffer, so ``state_dict``, ``torch.save``/``torch.load``, ``.to()``,
``.double()`` and ``DistributedDataParallel`` work as for any module. The wrapped model itself is
never modified: it can be trained on its own next to its linearization.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ._functional import (
    FunctionalModel,
    ModelArg,
    ParamsArg,
    check_examples_independent,
    flatten_output,
    functionalize,
    model_errors,
    translate_transform_errors,
)
from ._taylor_series import TAYLOR_METHODS
from ._validation import check_tensor
from .errors import InvalidArgumentError, ParameterSelectionError, UnsupportedError

__all__ = ["LinearizedModel", "TaylorExpandedModel", "linearize", "taylor_expand"]


class TaylorExpandedModel(nn.Module):
    """The degree-k Taylor expansion of a model in its parameters around θ0 (module docstring).

    Build it with :func:`taylor_expand` (or :func:`linearize` for k = 1). ``forward(x, *args, **kwargs)``
    takes what the wrapped model takes (``x`` a batch ``(N, ...)``, floating or integer token ids) and
    returns a tensor of the wrapped model's output shape and dtype. The value is
    ``Σ_{j≤k} D^j f(θ0)[δ^j] / j!`` with δ = θ − θ0, computed without any Jacobian: by ``k`` nested
    forward-mode products (``method="jvp"``), or by reverse-mode products only (``method="double_vjp"``,
    for operations without a forward-mode derivative). Gradients with respect to θ are exact; for k = 1
    they are J0(x)ᵀ times the output gradient, whatever θ is.

    Attributes:
        degree: k.
        method: ``"jvp"`` or ``"double_vjp"``.
        param_names: the names, in the wrapped model, of the parameters that θ replaces.
        theta: module tree holding θ as ``nn.Parameter`` s under the wrapped model's names.
        model0: the wrapped model at θ0, with all its parameters turned into buffers (f0 = model0(x)).
    """

    def __init__(self, model: ModelArg, degree: int, *, params: ParamsArg = None, method: str = "jvp"):
        super().__init__()
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
            raise InvalidArgumentError(f"degree must be an integer >= 0, got {degree!r}.")
        if method not in TAYLOR_METHODS:
            raise InvalidArgumentError(f"method must be one of {sorted(TAYLOR_METHODS)}, got {method!r}.")
        fm = functionalize(model, params)
        self.degree = degree
        self.method = method
        self.param_names: tuple[str, ...] = tuple(fm.params)
        if fm.module is not None:
            self.model0 = _frozen_copy(fm.module, fm.params)
        else:
            self.model0 = _CallableModel(model, fm.params)
        self._examples_checked = False  # check_examples_independent runs on the first forward
        self.theta = nn.Module()
        for name, value in fm.params.items():
            _register(self.theta, name, nn.Parameter(value.detach().clone()))

    def theta0(self) -> dict[str, torch.Tensor]:
        """θ0 by name (the buffers of ``model0``; do not modify them in place)."""
        return {name: _lookup(self.model0, name) for name in self.param_names}

    def delta(self) -> dict[str, torch.Tensor]:
        """The weight change θ − θ0 by name (differentiable with respect to θ)."""
        return self._delta(self.theta0())

    def _delta(self, theta0: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: _lookup(self.theta, name) - theta0[name] for name in self.param_names}

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        """f_k(x; θ), shape and dtype of ``model0(x, *args, **kwargs)``."""
        check_tensor(x, "x", min_ndim=1, allow_integer=True, finite=False)
        theta0 = self.theta0()
        dtype = theta0[self.param_names[0]].dtype
        if x.is_floating_point() and x.dtype != dtype:
            raise UnsupportedError(
                f"the linearized model's parameters are {dtype} but the input is {x.dtype}; convert one of them "
                f"(lin.to({x.dtype}) or x.to({dtype}))."
            )

        def apply(p: dict[str, torch.Tensor], xs: torch.Tensor = x) -> torch.Tensor:
            out = functional_call(self.model0, p, (xs, *args), kwargs)
            if not isinstance(out, torch.Tensor):
                raise UnsupportedError(
                    f"the model returned {type(out).__name__}; a Taylor-expanded model needs a model that returns "
                    "one tensor. Wrap it so that it returns one tensor (e.g. the logits)."
                )
            return out

        if not self._examples_checked and not args and not kwargs:  # once; extra arguments may be per-example
            with model_errors(x):
                check_examples_independent(FunctionalModel(lambda p, xs: flatten_output(apply(p, xs)), theta0), x)
            self._examples_checked = True
        with model_errors(x), translate_transform_errors():
            return TAYLOR_METHODS[self.method](apply, theta0, self._delta(theta0), self.degree)

    def train(self, mode: bool = True) -> TaylorExpandedModel:
        """Set ``self.training``; ``model0`` keeps the mode it was built in, because the expansion is of
        that fixed function (a train-mode BatchNorm or dropout would make it depend on the batch)."""
        if not isinstance(mode, bool):
            raise InvalidArgumentError(f"training mode is expected to be boolean, got {mode!r}.")
        self.training = mode
        self.theta.train(mode)
        return self

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.theta.parameters())
        return f"degree={self.degree}, method={self.method!r}, params={len(self.param_names)} tensors ({n} numbers)"


class LinearizedModel(TaylorExpandedModel):
    """f0(x) + J0(x)(θ − θ0): the degree-1 :class:`TaylorExpandedModel` (built by :func:`linearize`).

    With ``method="jvp"`` each call is one ``torch.func.jvp`` of the model at θ0 along θ − θ0, which
    returns f0(x) and J0(x)(θ − θ0) together.
    """

    def __init__(self, model: ModelArg, *, params: ParamsArg = None, method: str = "jvp"):
        super().__init__(model, 1, params=params, method=method)


def linearize(model: ModelArg, params: ParamsArg = None, *, method: str = "jvp") -> LinearizedModel:
    """The model's first-order Taylor expansion in its parameters, f0(x) + J0(x)(θ − θ0), as a module.

    Args:
        model: an ``nn.Module`` (deep-copied; the original is never modified), or a function
            ``f(params, x)`` with ``params`` given as a dict of tensors.
        params: which parameters θ are (the rest stay frozen at their current values); the semantics
            of ``ntkit.empirical_ntk``: ``None`` (all with ``requires_grad``), names or ``fnmatch``
            patterns, a predicate on names, or a dict ``{name: θ0 value}``.
        method: ``"jvp"`` (forward mode, default) or ``"double_vjp"`` (reverse mode only, for models
            with operations that have no forward-mode derivative; slower).

    Returns:
        a :class:`LinearizedModel` whose trainable parameters θ start at θ0; train it with any
        ``torch.optim`` optimizer and any loss. Its empirical NTK is Θ̂0 at every θ.

    Raises:
        BatchCouplingError: BatchNorm or dropout in train mode (call ``model.eval()`` first).
        ParameterSelectionError: a ``params`` selection that matches nothing.
        UnsupportedError: an unknown method; at call time, an operation without the derivative the
            method needs (the message says which workaround applies).
    """
    return LinearizedModel(model, params=params, method=method)


def taylor_expand(
    model: ModelArg, degree: int, params: ParamsArg = None, *, method: str = "jvp"
) -> TaylorExpandedModel:
    """The model's degree-k Taylor expansion in its parameters around θ0, as a module.

    ``f_k(x; θ) = Σ_{j=0}^{k} D^j f(x; θ0)[δ, …, δ] / j!`` with δ = θ − θ0; degree 0 is f0 (constant in θ),
    degree 1 is :func:`linearize`. Arguments as for :func:`linearize`; the ``"jvp"`` method costs about
    2^k forward passes per call.
    """
    if degree == 1 and not isinstance(degree, bool):
        return LinearizedModel(model, params=params, method=method)
    return TaylorExpandedModel(model, degree, params=params, method=method)


def _register(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Register ``tensor`` under the dotted ``name`` below ``root`` (an ``nn.Parameter`` as a parameter, any other
    tensor as a buffer), creating plain modules on the path."""
    *path, leaf = name.split(".")
    owner = root
    try:
        for part in path:
            if part not in owner._modules:
                owner.add_module(part, nn.Module())
            owner = owner.get_submodule(part)
        if isinstance(tensor, nn.Parameter):
            owner.register_parameter(leaf, tensor)
        else:
            owner.register_buffer(leaf, tensor)
    except (KeyError, TypeError, AttributeError) as err:
        raise ParameterSelectionError(
            f"parameter name {name!r} cannot be stored as a module attribute path ({err}); use names made of "
            "identifiers separated by dots."
        ) from err


def _lookup(root: nn.Module, name: str) -> torch.Tensor:
    """The tensor at the dotted ``name`` below ``root`` (also while ``functional_call`` has swapped it)."""
    prefix, _, leaf = name.rpartition(".")
    tensor: torch.Tensor = getattr(root.get_submodule(prefix) if prefix else root, leaf)
    return tensor


def _frozen_copy(model: nn.Module, theta0: Mapping[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` with every parameter turned into a buffer (tied ones stay tied), holding
    θ0 for the names in ``theta0`` and the current values for the rest."""
    try:
        copied = copy.deepcopy(model)
    except Exception as err:
        raise UnsupportedError(
            f"could not deep-copy the model to hold θ0 ({type(err).__name__}: {err}); make it deep-copyable "
            "(no open files, locks or generators as attributes)."
        ) from err
    as_buffer: dict[int, torch.Tensor] = {}  # one buffer per parameter object, so tied weights stay tied
    for module in copied.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            del module._parameters[name]
            module.register_buffer(name, as_buffer.setdefault(id(param), param.detach()))
    with torch.no_grad():
        for name, value in theta0.items():
            target = _lookup(copied, name)
            target.copy_(value)
    return copied


class _CallableModel(nn.Module):
    """A function ``f(params, x)`` and its parameters, as a module whose buffers are the parameters."""

    def __init__(self, fn: Callable[..., Any], params: Mapping[str, torch.Tensor]):
        super().__init__()
        self.fn = fn
        self.names = tuple(params)
        for name, value in params.items():
            _register(self, name, value.detach().clone())

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> object:
        return self.fn({name: _lookup(self, name) for name in self.names}, x, *args, **kwargs)
