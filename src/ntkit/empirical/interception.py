"""Recording the parametrised layer calls of a forward pass, for the structured NTK.

:class:`LayerInterceptor` is a ``TorchFunctionMode``: while it is active it sees every torch function call.
A call to one of the functions with a per-layer rule (``F.linear``, ``torch.conv1d``/``conv2d``,
``torch.embedding``, ``torch.layer_norm``, ``torch.group_norm``, ``torch.batch_norm``) whose weight or bias
argument is one of the *watched* parameter tensors (matched by identity) is a :class:`LayerCall`: the
interceptor records it, keeps its input, and adds a zero *probe* tensor to its output, so that the gradient
of the model output with respect to the probe is the cotangent of that layer's output.

Python-level torch functions that receive a watched parameter (``F.multi_head_attention_forward``,
``F.layer_norm``, ``F.embedding``) are entered, so that the calls inside them are seen. Any other use of a
watched parameter that produces a tensor (a matmul, a transpose, a custom op) *flags* the parameter: the
structured method then computes that parameter's contribution by Jacobian contraction, which is always
exact. Matching by identity works because ``torch.func.functional_call`` hands the module the very tensors it
is given, and ``vmap``/``jacrev`` pass tensors they do not transform through unchanged.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..errors import BatchCouplingError

__all__ = ["LAYER_FUNCTIONS", "VALUE_READS", "LayerCall", "LayerInterceptor", "PassThroughMode"]

_P = inspect.Parameter


def _signature(*required: str, **optional: object) -> inspect.Signature:
    return inspect.Signature(
        [_P(n, _P.POSITIONAL_OR_KEYWORD) for n in required]
        + [_P(n, _P.POSITIONAL_OR_KEYWORD, default=d) for n, d in optional.items()]
    )


@dataclass(frozen=True)
class _LayerFunction:
    kind: str
    signature: inspect.Signature
    input: str  # the argument holding the layer's input
    slots: tuple[str, ...]  # the arguments holding parameters with a rule
    static: tuple[str, ...]  # arguments the rule needs


_CONV = _signature("input", "weight", bias=None, stride=1, padding=0, dilation=1, groups=1)
_CONV_STATIC = ("stride", "padding", "dilation", "groups")

#: The torch functions with a per-layer rule (see :mod:`.rules`), by the function object torch dispatches.
LAYER_FUNCTIONS: dict[Callable[..., Any], _LayerFunction] = {
    torch._C._nn.linear: _LayerFunction(
        "linear", _signature("input", "weight", bias=None), "input", ("weight", "bias"), ()
    ),
    torch.conv1d: _LayerFunction("conv", _CONV, "input", ("weight", "bias"), _CONV_STATIC),
    torch.conv2d: _LayerFunction("conv", _CONV, "input", ("weight", "bias"), _CONV_STATIC),
    torch.embedding: _LayerFunction(
        "embedding",
        _signature("weight", "indices", padding_idx=-1, scale_grad_by_freq=False, sparse=False),
        "indices",
        ("weight",),
        ("padding_idx", "scale_grad_by_freq"),
    ),
    torch.layer_norm: _LayerFunction(
        "layer_norm",
        _signature("input", "normalized_shape", weight=None, bias=None, eps=1e-5, cudnn_enable=True),
        "input",
        ("weight", "bias"),
        ("normalized_shape", "eps"),
    ),
    torch.group_norm: _LayerFunction(
        "group_norm",
        _signature("input", "num_groups", weight=None, bias=None, eps=1e-5, cudnn_enabled=True),
        "input",
        ("weight", "bias"),
        ("num_groups", "eps"),
    ),
    torch.batch_norm: _LayerFunction(
        "batch_norm",
        _signature(
            "input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps", "cudnn_enabled"
        ),
        "input",
        ("weight", "bias"),
        ("running_mean", "running_var", "training", "eps"),
    ),
}


@dataclass
class LayerCall:
    """One call of a rule function with watched parameters, as seen inside the forward of one example.

    ``params`` maps the slot ('weight'/'bias') to the watched parameter's name (unwatched slots are absent);
    ``in_shape``/``out_shape`` are the shapes the function saw (a leading batch axis of one included);
    ``weight_shape`` is the shape of its weight argument.
    """

    kind: str
    params: dict[str, str]
    static: dict[str, Any]  # the call's values of the arguments the rule needs, as torch received them
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]

    def signature(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.kind, tuple(sorted(self.params.items()))


def _tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []


def _contraction_length(func: Callable[..., Any], args: tuple[Any, ...]) -> int:
    """For a matmul-like call, the length of the contracted axis (FLOPs = 2 · output entries · length); else 0."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if func in (torch._C._nn.linear, torch.conv1d, torch.conv2d):
        return math.prod(tensors[1].shape[1:]) if len(tensors) > 1 else 0
    if func in _MATMULS and len(tensors) >= 2:
        return tensors[-2].shape[-1] if tensors[-2].ndim else 0
    if func is torch._C._nn.scaled_dot_product_attention and len(tensors) >= 3:
        q, k, v = tensors[:3]  # (..., L, E), (..., S, E), (..., S, Ev): output (..., L, Ev)
        return k.shape[-2] * (q.shape[-1] + v.shape[-1]) // max(1, v.shape[-1])
    return 0


_MATMULS = (
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.addmm,
    torch.baddbmm,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.Tensor.mm,
    torch.Tensor.bmm,
)


#: Methods that turn tensor values into Python numbers, which autograd then treats as constants.
VALUE_READS = frozenset(
    {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.numpy}
)


def _never(*args: object, **kwargs: object) -> bool:
    return False


@functools.cache
def _without_dispatch(func: types.FunctionType) -> types.FunctionType:
    """A copy of a Python torch function whose ``has_torch_function*`` checks answer False, so that calling
    it inside the mode runs its body (where the nested calls are seen) instead of dispatching to the mode."""
    namespace = dict(func.__globals__)
    for name in ("has_torch_function", "has_torch_function_unary", "has_torch_function_variadic"):
        if name in namespace:
            namespace[name] = _never
    clone = types.FunctionType(func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__)
    clone.__kwdefaults__ = func.__kwdefaults__
    return clone


class PassThroughMode(TorchFunctionMode):
    """A torch function mode that changes nothing. While any mode is active, ``nn.MultiheadAttention`` and
    ``nn.TransformerEncoderLayer`` skip their fused inference kernels, which have no forward-mode derivative."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        _types: Collection[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return func(*args, **(kwargs or {}))


@dataclass(eq=False)
class LayerInterceptor(TorchFunctionMode):
    """Records the layer calls of the watched parameters (``watched``: id of tensor -> name).

    ``probes``: tensors added to the outputs of the recorded calls, in order (capture); with
    ``make_probes`` zero probes that require grad are created instead (tracing). ``count_costs`` sums the
    sizes of all tensors the forward pass creates (``activation_words``, a proxy for its memory and
    elementwise cost) and the FLOPs of its matrix products and convolutions (``matmul_flops``). A capture after
    tracing passes ``flag_uses=False``: the trace has already flagged the parameters used outside a rule, so
    other torch functions are called without looking at their arguments.
    """

    watched: Mapping[int, str]
    probes: Sequence[torch.Tensor] | None = None
    make_probes: bool = False
    count_costs: bool = False
    calls: list[LayerCall] = field(default_factory=list)
    inputs: list[torch.Tensor | None] = field(default_factory=list)
    made_probes: list[torch.Tensor] = field(default_factory=list)
    flagged: set[str] = field(default_factory=set)
    activation_words: int = 0
    matmul_flops: int = 0
    read_values: bool = False  # a tensor's values were taken out of the graph (.item(), .tolist(), float(t), ...)
    flag_uses: bool = True  # False (a capture after tracing): other uses of watched tensors are not looked for
    _entered: list[Callable[..., Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        _types: Collection[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        self.read_values |= func in VALUE_READS
        if not (self.flag_uses or self.count_costs or func in LAYER_FUNCTIONS or isinstance(func, types.FunctionType)):
            return func(*args, **kwargs)
        names = {self.watched[id(t)] for t in _tensors((args, kwargs)) if id(t) in self.watched}
        if not names:
            return self._count(func, args, func(*args, **kwargs))
        spec = LAYER_FUNCTIONS.get(func)
        if spec is not None:
            out = self._layer_call(spec, func, args, kwargs, names)
            if out is not None:
                return out
        if isinstance(func, types.FunctionType) and func not in self._entered:
            self._entered.append(func)
            try:
                with self:
                    return _without_dispatch(func)(*args, **kwargs)
            finally:
                self._entered.pop()
        out = self._count(func, args, func(*args, **kwargs))
        if _tensors(out):
            self.flagged |= names
        return out

    def _count(self, func: Callable[..., Any], args: tuple[Any, ...], out: object) -> object:
        if self.count_costs:
            words = sum(t.numel() for t in _tensors(out))
            self.activation_words += words
            self.matmul_flops += 2 * words * _contraction_length(func, args)
        return out

    def _layer_call(
        self,
        spec: _LayerFunction,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        names: set[str],
    ) -> Any:
        bound = spec.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arg = bound.arguments
        slots = {s: self.watched[id(arg[s])] for s in spec.slots if id(arg[s]) in self.watched}
        if not slots or (spec.kind == "embedding" and arg["scale_grad_by_freq"]):
            return None  # no rule applies: the generic path flags the parameters
        if spec.kind == "batch_norm" and arg["training"]:
            raise BatchCouplingError(
                "a batch norm normalises with the statistics of the batch (train mode, or "
                "track_running_stats=False), so one example's output depends on the others and a kernel "
                "between examples is not defined. Call model.eval() with running statistics, or use "
                "GroupNorm/LayerNorm."
            )
        self.flagged |= names - set(slots.values())  # watched tensors in other arguments
        out = func(*args, **kwargs)
        x = arg[spec.input]
        self.calls.append(
            LayerCall(
                kind=spec.kind,
                params=slots,
                static={name: arg[name] for name in spec.static},
                in_shape=tuple(x.shape),
                out_shape=tuple(out.shape),
                weight_shape=tuple(arg["weight"].shape) if arg["weight"] is not None else (),
            )
        )
        self.inputs.append(x if "weight" in slots else None)
        if self.probes is not None:
            out = out + self.probes[len(self.calls) - 1]
        elif self.make_probes:
            probe = torch.zeros_like(out, requires_grad=True)
            self.made_probes.append(probe)
            out = out + probe
        return self._count(func, args, out)
