"""A model and a parameter selection, turned into a pure function ``f(params, x) -> (N, O)``.

Every finite-width computation (empirical kernels, linearization, Taylor expansion, weight changes)
starts here, so that the ``params`` argument means the same thing everywhere:

- ``None``: every parameter of the module with ``requires_grad``;
- a list or tuple of names, or of ``fnmatch`` patterns (``["head.*", "*.bias"]``);
- a predicate ``name -> bool``;
- a dict of tensors: these names (of the module's parameters) with these values.

Parameters that are not selected, and the module's buffers, are held fixed at their current values.
A plain callable ``f(params, x)`` is accepted too, with ``params`` a dict of tensors.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from .errors import BatchCouplingError, InvalidArgumentError, ParameterSelectionError, ShapeError, UnsupportedError

__all__ = [
    "FunctionalModel",
    "ModelArg",
    "ParamsArg",
    "check_examples_independent",
    "check_input_dtype",
    "flatten_output",
    "functionalize",
    "model_errors",
    "translate_transform_errors",
]

#: What the finite-width functions accept as a model: a module, or a plain function ``f(params, x)``.
ModelArg = nn.Module | Callable[..., torch.Tensor]
#: The ``params`` selection (see the module docstring).
ParamsArg = None | Mapping[str, torch.Tensor] | list[str] | tuple[str, ...] | Callable[[str], bool]

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


@dataclass(frozen=True)
class FunctionalModel:
    """``fn(params, x)`` evaluates the model on a batch ``x`` of shape ``(N, ...)`` with the selected
    parameters replaced by ``params`` and returns the outputs flattened to ``(N, O)``.

    ``params`` holds the selected parameters' current values (detached), in the module's order.
    ``module`` is the wrapped module; ``source`` the plain callable (``None`` for a module).
    """

    fn: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
    params: dict[str, torch.Tensor]
    module: nn.Module | None = None
    source: Callable[..., torch.Tensor] | None = None

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype


def _select_names(names: list[str], params: ParamsArg) -> list[str]:
    if params is None:
        return names
    if callable(params) and not isinstance(params, Mapping):
        chosen = [n for n in names if params(n)]
        if not chosen:
            raise ParameterSelectionError("the params predicate selects none of the model's parameters.")
        return chosen
    if isinstance(params, str):
        params = [params]
    if isinstance(params, list | tuple):
        chosen_set: set[str] = set()
        for pattern in params:
            if not isinstance(pattern, str):
                raise ParameterSelectionError(f"params entries must be names or patterns, got {pattern!r}.")
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                raise ParameterSelectionError(
                    f"params entry {pattern!r} matches no trainable parameter of the model; its parameters "
                    f"are: {shown}."
                )
            chosen_set.update(hits)
        return [n for n in names if n in chosen_set]
    raise ParameterSelectionError(
        "params must be None, a list of names or patterns, a predicate on names, or a dict of tensors; "
        f"got {type(params).__name__}."
    )


def _check_batch_independent(module: nn.Module) -> None:
    for name, sub in module.named_modules():
        where = f"module {name!r}" if name else "the model"
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and not sub.training and sub.running_mean is None:
            raise BatchCouplingError(
                f"{where} ({type(sub).__name__}) has track_running_stats=False, so it normalises with batch "
                "statistics even in eval mode and one example's output depends on the rest of the batch. Use "
                "running statistics (track_running_stats=True), or replace it with GroupNorm/LayerNorm."
            )
        if not sub.training:
            continue
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            raise BatchCouplingError(
                f"{where} ({type(sub).__name__}) is in train mode, where it normalises with batch statistics, "
                "so one example's output depends on the rest of the batch and a kernel between examples is "
                "not defined. Call model.eval() (uses the running statistics), or replace it with GroupNorm/"
                "LayerNorm."
            )
        dropout_p = sub.p if isinstance(sub, _DROPOUT_TYPES) else getattr(sub, "dropout", 0.0)
        if isinstance(sub, (*_DROPOUT_TYPES, nn.MultiheadAttention)) and dropout_p > 0:
            raise BatchCouplingError(
                f"{where} ({type(sub).__name__}, p={dropout_p}) is in train mode, where it draws random masks, "
                "so the model is not a fixed function of its parameters. Call model.eval(); for the "
                "infinite-width kernel of dropout use ntkit.nn.Dropout."
            )


def flatten_output(out: object) -> torch.Tensor:
    """A model's output as (N, O): one row per example (a 1-D output is one output per example); raises
    for anything that is not a floating-point tensor with a batch axis."""
    if not isinstance(out, torch.Tensor):
        raise UnsupportedError(
            f"the model returned {type(out).__name__}; ntkit needs a single tensor of shape (N, ...). "
            "Wrap the model so that it returns one tensor (e.g. the logits)."
        )
    if out.ndim == 0:
        raise ShapeError(
            "the model returned a scalar (a 0-d tensor); ntkit needs one output row per example, shape (N, ...). "
            "Do not reduce over the batch inside the model (a .sum() or .mean() over all outputs)."
        )
    if not out.is_floating_point():
        raise UnsupportedError(
            f"the model returned {out.dtype} outputs; kernels need floating-point outputs that depend "
            "differentiably on the parameters. Return the values before rounding or argmax (e.g. the logits)."
        )
    if out.ndim == 2:  # already (N, O): no reshape, which costs a dispatch under every torch.func transform
        return out
    return out.reshape(out.shape[0], -1) if out.ndim != 1 else out.unsqueeze(1)


def functionalize(model: ModelArg, params: ParamsArg = None) -> FunctionalModel:
    """Resolve ``model`` and a ``params`` selection into a :class:`FunctionalModel` (see module docs)."""
    if isinstance(model, nn.Module):
        _check_batch_independent(model)
        all_params = dict(model.named_parameters())
        trainable = {n: p for n, p in all_params.items() if p.requires_grad}
        if isinstance(params, Mapping):
            unknown = [k for k in params if k not in all_params]
            if unknown:
                raise ParameterSelectionError(
                    f"params names {unknown} are not parameters of the model; known: {list(all_params)[:8]}."
                )
            selected = {k: _as_param_tensor(k, v) for k, v in params.items()}
            wrong = {k: (tuple(v.shape), tuple(all_params[k].shape)) for k, v in selected.items()}
            wrong = {k: shapes for k, shapes in wrong.items() if shapes[0] != shapes[1]}
            if wrong:
                name, (given, own) = next(iter(wrong.items()))
                raise ParameterSelectionError(
                    f"params[{name!r}] has shape {given} but the model's parameter {name!r} has shape {own}; "
                    "params values replace the model's parameters, so they need the same shapes."
                )
        else:
            names = _select_names(list(trainable), params)
            selected = {n: trainable[n].detach() for n in names}
        if not selected:
            raise ParameterSelectionError(
                "the model has no parameters to differentiate (none with requires_grad, or an empty selection)."
            )
        complex_names = [k for k, v in selected.items() if v.is_complex()]
        if complex_names:
            raise UnsupportedError(
                f"parameters {complex_names[:4]} are complex; ntkit works with real parameters. Split real and "
                "imaginary parts into separate real parameters."
            )
        fixed = {n: p.detach() for n, p in all_params.items() if n not in selected}
        fixed.update(dict(model.named_buffers()))

        def fn(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return flatten_output(functional_call(model, (fixed, p), (x,), strict=False))

        return FunctionalModel(fn=fn, params=selected, module=model)

    if callable(model):
        if not isinstance(params, Mapping) or not params:
            raise ParameterSelectionError(
                "for a plain function f(params, x), pass its parameters as params={name: tensor, ...}."
            )
        values = {k: _as_param_tensor(k, v) for k, v in params.items()}

        def fn_callable(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return flatten_output(model(p, x))

        return FunctionalModel(fn=fn_callable, params=values, source=model)
    raise InvalidArgumentError(
        f"model must be a torch.nn.Module or a callable f(params, x), got {type(model).__name__}."
    )


def check_examples_independent(fm: FunctionalModel, x: torch.Tensor) -> None:
    """Raise :class:`BatchCouplingError` if one example's output depends on the others in its batch.

    Kernels are defined per pair of examples, so ``f(batch)[n]`` must equal ``f(example n)``. Checked on two
    examples (x[0] and x[1], or x[0] and a scaled copy when x holds one example): their outputs in one batch
    against their outputs one at a time, to sqrt(eps) of the outputs' scale (batched and single products
    differ by round-off only). Catches what the module check cannot see: centring or normalising by the
    batch, softmax over the batch, outputs flattened across the batch. Costs three forward passes of at most
    two examples.
    """
    if x.shape[0] >= 2:
        pair = x[:2]
    else:
        other = x[:1] // 2 if not x.is_floating_point() else x[:1] * 0.5
        pair = torch.cat([x[:1], other])
    with torch.no_grad():
        together = fm.fn(fm.params, pair)
        alone = [fm.fn(fm.params, pair[i : i + 1]) for i in range(2)]
    if together.shape[0] != 2 or any(a.shape != together[i : i + 1].shape for i, a in enumerate(alone)):
        raise BatchCouplingError(
            f"the model's output rows do not follow its examples: a batch of 2 gave outputs of shape "
            f"{tuple(together.shape)} and one example {tuple(alone[0].shape)} (after flattening each row). The "
            "first output axis must index the examples; do not flatten or reshape across the batch."
        )
    alone_t = torch.cat(alone)
    scale = float(torch.maximum(alone_t.abs().max(), together.abs().max()))
    tol = math.sqrt(torch.finfo(together.dtype).eps) * max(scale, torch.finfo(together.dtype).tiny)
    error = float((together - alone_t).abs().max())
    if not error <= tol and math.isfinite(scale):
        raise BatchCouplingError(
            f"one example's output depends on the other examples of its batch: two examples gave outputs "
            f"{error:.3g} apart (scale {scale:.3g}) in one batch and one at a time. Kernels are defined per pair "
            "of examples, so the model must treat examples independently; remove operations across the batch "
            "axis (centring or normalising by batch statistics, softmax over the batch, mixing rows)."
        )


def _as_param_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ParameterSelectionError(f"params[{name!r}] must be a tensor, got {type(value).__name__}.")
    if not value.is_floating_point():
        raise UnsupportedError(f"params[{name!r}] has dtype {value.dtype}; parameters must be real floating point.")
    return value.detach()


def check_input_dtype(fm: FunctionalModel, x: torch.Tensor) -> None:
    """A floating input whose dtype differs from the parameters' fails deep inside torch: say so first."""
    if x.is_floating_point() and x.dtype != fm.dtype:
        raise UnsupportedError(
            f"the model's parameters are {fm.dtype} but the input is {x.dtype}; convert one of them "
            f"(model.to({x.dtype}) or x.to({fm.dtype}))."
        )


@contextlib.contextmanager
def model_errors(x: torch.Tensor) -> Iterator[None]:
    """Re-raise the errors of a model that cannot take inputs of this shape or dtype as ntkit errors."""
    try:
        yield
    except RuntimeError as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        shape = "(N, " + ", ".join(str(s) for s in x.shape[1:]) + ")"
        if any(w in text for w in ("shape", "size", "dimension", "mat1 and mat2", "Expected", "expected")):
            if "dtype" in text or "scalar type" in text:
                raise UnsupportedError(
                    f"the model cannot take inputs of dtype {x.dtype}: {text}. Pass floating-point inputs in the "
                    "model's dtype (integer inputs only to models that start with an embedding)."
                ) from err
            raise ShapeError(f"the model cannot take inputs of per-example shape {shape}: {text}") from err
        raise


@contextlib.contextmanager
def translate_transform_errors() -> Iterator[None]:
    """Re-raise the torch.func errors a user can fix as ntkit errors that say how."""
    try:
        yield
    except RuntimeError as err:
        text = str(err)
        if "randomness" in text or "random operation" in text:
            raise BatchCouplingError(
                "the model draws random numbers in its forward pass (dropout in train mode?), so it is not a "
                "fixed function of its parameters. Call model.eval(), or make the randomness explicit."
            ) from err
        if "vmap: It looks like you're" in text or "data-dependent control flow" in text:
            raise UnsupportedError(
                "the model calls .item() or branches on the values of a tensor (data-dependent control flow), "
                "which the batched transforms of the kernel methods (torch.func.vmap) cannot trace. Write the "
                "branch with torch.where and keep values as tensors (no .item(), no Python if on a tensor). "
                "Original error: " + text.splitlines()[0]
            ) from err
        if "forward AD" in text or "forward-mode" in text or ("jvp" in text.lower() and "not implemented" in text):
            raise UnsupportedError(
                "an operation of the model has no forward-mode derivative in this torch build (often fused "
                "scaled-dot-product attention). Use a method without forward mode (method='jacobian'), or "
                "force the math attention backend: `with torch.nn.attention.sdpa_kernel("
                "torch.nn.attention.SDPBackend.MATH): ...`. Original error: " + text.splitlines()[0]
            ) from err
        if "inplace" in text.lower() and ("vmap" in text or "batched" in text.lower()):
            raise BatchCouplingError(
                "the model writes into a tensor in place during its forward pass (a train-mode BatchNorm "
                "updating running statistics?), which a per-example kernel cannot allow. Call model.eval(). "
                "Original error: " + text.splitlines()[0]
            ) from err
        raise
