"""One traced forward pass on a single example: the model's layer calls, output count and costs (and the check
that examples are independent, :func:`~ntkit._functional.check_examples_independent`).

Every kernel computation starts with :func:`trace_model`. It runs the model on ``x[:1]`` under a
:class:`~.interception.LayerInterceptor`, which records the layer calls with a rule and counts the forward
pass's FLOPs (matrix products and convolutions) and activation entries, and then **checks the rules on that
example**: for a random
output cotangent r it compares each rule parameter's gradient rᵀ J rebuilt from the recorded inputs and
output cotangents with the gradient autograd computes. A parameter that the model also uses in a way the
interceptor cannot see (a custom autograd function, say) fails the check and is moved to Jacobian
contraction, so the structured method stays exact.

:func:`cached_trace` reuses a trace between calls (tracing, its rule check and the independence check cost
several forward and backward passes of one example, a third of a small kernel's time): a trace is kept per
model (weakly, it goes with the model) under a key of everything it depends on: each submodule's identity,
class, train/eval flag and hooks, each parameter and buffer (identity, memory, in-place version counter, shape,
dtype, device), the global module hooks, the parameter selection, and the inputs' per-example shape, dtype and
device. Changing any of them (an optimizer step, ``model.double()``, ``.to(device)``, ``model.train()``, a
replaced layer, an added hook or parametrization, another input shape) traces again. A model whose layer calls
depend on other Python state (a flag read in ``forward``) must call :func:`clear_trace_cache` after changing it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from .._functional import FunctionalModel, check_examples_independent, model_errors
from ..errors import ShapeError
from .autodiff import autodiff_context
from .interception import LayerCall, LayerInterceptor
from .rules import parameter_jacobian

__all__ = ["ModelTrace", "cached_trace", "clear_trace_cache", "measure_forward", "trace_model"]


T = TypeVar("T")
#: Entries of :meth:`ModelTrace.memo` per trace (one per problem size asked for).
_MEMO_SIZE = 8


@dataclass(frozen=True)
class ModelTrace:
    """What one example's forward pass looks like.

    ``calls``: the layer calls with a rule, in order. ``uses``: for each parameter computed by rules, its
    (call index, slot) pairs. ``fallback``: the other selected parameters (Jacobian contraction).
    ``forward_flops``: matmul/conv FLOPs plus one per activation entry, per example.
    ``activation_words``: entries of all tensors the forward creates, per example.
    """

    calls: list[LayerCall]
    uses: dict[str, list[tuple[int, str]]]
    fallback: list[str]
    n_outputs: int
    n_params: int
    forward_flops: float
    activation_words: int
    _memo: dict[Hashable, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    _scratch: dict[Hashable, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, kept with the trace under ``key`` for later calls with the same trace (plans that depend
        only on the traced structure and the problem's sizes; never parameter values, which the trace key pins
        but a kept object could outlive). At most ``_MEMO_SIZE`` entries: the oldest go first."""
        if key in self._memo:
            kept: T = self._memo[key]
            return kept
        value = compute()
        with _CACHE_LOCK:
            while len(self._memo) >= _MEMO_SIZE:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = value
        return value

    def scratch(self, key: Hashable, make: Callable[[], T]) -> T:
        """``make()``, kept for later calls under ``key`` and shared by every kept trace of the same model
        (:func:`cached_trace` hands a model's new trace the scratch of its previous one): reusable buffers, whose
        memory is then held once per model, not once per kept trace (a training loop traces again at every
        step). Released with the model's traces (:func:`clear_trace_cache`, or when the model goes)."""
        if key not in self._scratch:
            with _CACHE_LOCK:
                self._scratch.setdefault(key, make())
        kept: T = self._scratch[key]
        return kept


def trace_model(fm: FunctionalModel, x: torch.Tensor) -> ModelTrace:
    """Trace ``fm`` on the first example of ``x`` (see module docs)."""
    params = {k: v.detach().requires_grad_() for k, v in fm.params.items()}
    icpt = LayerInterceptor({id(v): k for k, v in params.items()}, make_probes=True, count_costs=True)
    first = x[:1]
    with model_errors(x), autodiff_context(), icpt:
        out = fm.fn(params, first)
    with model_errors(x), autodiff_context():
        check_examples_independent(fm, x)
    if out.shape[1] == 0:
        raise ShapeError("the model returns no outputs (shape (N, 0)); there is no kernel to compute.")
    uses: dict[str, list[tuple[int, str]]] = {}
    for i, call in enumerate(icpt.calls):
        for slot, name in call.params.items():
            uses.setdefault(name, []).append((i, slot))
    uses = {k: v for k, v in uses.items() if k not in icpt.flagged}
    uses = _verified(uses, icpt, params, out)
    calls, uses = _without_fallback(icpt.calls, uses)
    return ModelTrace(
        calls=calls,
        uses=uses,
        fallback=[k for k in fm.params if k not in uses],
        n_outputs=out.shape[1],
        n_params=fm.n_params,
        forward_flops=float(icpt.matmul_flops + icpt.activation_words),
        activation_words=icpt.activation_words,
    )


#: Traces kept per model (the most recent keys first out); a model's entries go when the model does.
_CACHE_PER_MODEL = 4
_CACHE: weakref.WeakKeyDictionary[object, OrderedDict[Hashable, ModelTrace]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _tensor_key(t: torch.Tensor) -> Hashable:
    """What a trace may depend on in one tensor: the memory it views, its in-place version, layout, placement."""
    return t.data_ptr(), t._version, t.shape, t.stride(), t.dtype, t.device


def _hooks(m: torch.nn.Module) -> Hashable:
    """The handles of a module's forward and backward hooks (a new hook has a new handle)."""
    return (*m._forward_pre_hooks, None, *m._forward_hooks, None, *m._backward_pre_hooks, None, *m._backward_hooks)


def _global_hooks() -> Hashable:
    """The handles of the forward and backward hooks registered for every module."""
    g = torch.nn.modules.module
    return (
        *g._global_forward_pre_hooks,
        None,
        *g._global_forward_hooks,
        None,
        *g._global_backward_pre_hooks,
        None,
        *g._global_backward_hooks,
    )


def _module_key(module: torch.nn.Module) -> Hashable:
    """One walk over the submodules: each one's identity, class (a parametrization swaps it), train/eval flag and
    hooks, and its own parameters and buffers (identity and :func:`_tensor_key`)."""
    return tuple(
        (
            name,
            id(m),
            type(m),
            m.training,
            _hooks(m),
            tuple((k, id(t), _tensor_key(t)) for k, t in m._parameters.items() if t is not None),
            tuple((k, id(t), _tensor_key(t)) for k, t in m._buffers.items() if t is not None),
        )
        for name, m in module.named_modules()
    )


def _trace_key(fm: FunctionalModel, x: torch.Tensor) -> Hashable:
    """Everything :func:`trace_model` depends on, other than the model object itself (see module docs)."""
    owned = None if fm.module is None else _module_key(fm.module)
    selected = tuple((name, _tensor_key(t)) for name, t in fm.params.items())
    return owned, _global_hooks(), selected, x.shape[1:], x.dtype, x.device


def cached_trace(fm: FunctionalModel, x: torch.Tensor) -> ModelTrace:
    """:func:`trace_model`, or the trace of an earlier call with the same model, parameters and input layout
    (see module docs). A model that cannot be referenced weakly (a bound method) is traced every time."""
    owner = fm.module if fm.module is not None else fm.source
    key = _trace_key(fm, x)
    with _CACHE_LOCK:
        try:
            entries = _CACHE.get(owner)
        except TypeError:  # not weakly referenceable: no caching
            return trace_model(fm, x)
        if entries is not None and key in entries:
            entries.move_to_end(key)
            return entries[key]
    trace = trace_model(fm, x)
    with _CACHE_LOCK:
        entries = _CACHE.setdefault(owner, OrderedDict())
        if entries:  # the model's buffers pass to its new trace (ModelTrace.scratch)
            object.__setattr__(trace, "_scratch", next(reversed(entries.values()))._scratch)
        entries[key] = trace
        while len(entries) > _CACHE_PER_MODEL:
            entries.popitem(last=False)
    return trace


def clear_trace_cache() -> None:
    """Forget every kept trace (for a model whose forward reads Python state the cache key cannot see)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _verified(
    uses: dict[str, list[tuple[int, str]]],
    icpt: LayerInterceptor,
    params: dict[str, torch.Tensor],
    out: torch.Tensor,
) -> dict[str, list[tuple[int, str]]]:
    """The entries of ``uses`` whose rule-built gradient rᵀJ matches autograd's on this example."""
    if not uses:
        return uses
    gen = torch.Generator(device="cpu").manual_seed(0)
    r = torch.randn(out.shape[1], generator=gen, dtype=torch.float64).to(out)
    names = list(uses)
    with autodiff_context():
        grads = torch.autograd.grad(
            (out[0] * r).sum(), [params[n] for n in names] + icpt.made_probes, allow_unused=True
        )
    true = {n: _zero_if_none(g, params[n]).reshape(-1) for n, g in zip(names, grads, strict=False)}
    cotangents = [_zero_if_none(g, z) for g, z in zip(grads[len(names) :], icpt.made_probes, strict=True)]
    tol = math.sqrt(torch.finfo(out.dtype).eps)
    kept = {}
    with torch.no_grad():
        for name, where in uses.items():
            parts = []
            for i, slot in where:
                x = icpt.inputs[i]
                term = parameter_jacobian(
                    icpt.calls[i], slot, None if x is None else x.detach()[None], cotangents[i][None, None]
                )
                parts.append(term.J.reshape(-1))
            rebuilt = functools.reduce(torch.add, parts)
            error = float(torch.linalg.norm(rebuilt - true[name]))
            if error <= tol * (float(torch.linalg.norm(true[name])) + tol):
                kept[name] = where
    return kept


def _without_fallback(
    calls: list[LayerCall], uses: dict[str, list[tuple[int, str]]]
) -> tuple[list[LayerCall], dict[str, list[tuple[int, str]]]]:
    """The calls as the capture pass will see them, watching only the parameters kept for rules: slots of
    other parameters are dropped, and calls left without a watched slot are not intercepted at all."""
    kept_calls: list[LayerCall] = []
    new_index: dict[int, int] = {}
    for i, call in enumerate(calls):
        slots = {slot: name for slot, name in call.params.items() if name in uses}
        if slots:
            new_index[i] = len(kept_calls)
            kept_calls.append(dataclasses.replace(call, params=slots))
    return kept_calls, {name: [(new_index[i], slot) for i, slot in where] for name, where in uses.items()}


def _zero_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad.detach()


def measure_forward(fm: FunctionalModel, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The outputs (1, O) of the first example and the entries of all tensors its forward pass creates."""
    icpt = LayerInterceptor({}, count_costs=True)
    first = x[:1]
    with model_errors(x), torch.no_grad(), autodiff_context(), icpt:
        out = fm.fn(fm.params, first)
    with model_errors(x), autodiff_context():
        check_examples_independent(fm, x)
    return out, icpt.activation_words
