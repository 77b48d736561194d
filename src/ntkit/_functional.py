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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from .errors import BatchCouplingError, ParameterSelectionError, UnsupportedError

__all__ = [
    "FunctionalModel",
    "ModelArg",
    "ParamsArg",
    "check_input_dtype",
    "functionalize",
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
    ``module`` is the wrapped module (``None`` for a plain callable).
    """

    fn: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
    params: dict[str, torch.Tensor]
    module: nn.Module | None = None

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


def _flatten_output(out: object) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise UnsupportedError(
            f"the model returned {type(out).__name__}; ntkit needs a single tensor of shape (N, ...). "
            "Wrap the model so that it returns one tensor (e.g. the logits)."
        )
    return out.reshape(out.shape[0], -1) if out.ndim != 1 else out.unsqueeze(1)


def functionalize(model: ModelArg, params: ParamsArg = None) -> FunctionalModel:
    """Resolve ``model`` and a ``params`` selection into a :class:`FunctionalModel` (see module docs)."""
    if isinstance(model, nn.Module):
        _check_batch_independent(model)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        all_params = dict(model.named_parameters())
        if isinstance(params, Mapping):
            unknown = [k for k in params if k not in all_params]
            if unknown:
                raise ParameterSelectionError(
                    f"params names {unknown} are not parameters of the model; known: {list(all_params)[:8]}."
                )
            selected = {k: _as_param_tensor(k, v) for k, v in params.items()}
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
            return _flatten_output(functional_call(model, (fixed, p), (x,), strict=False))

        return FunctionalModel(fn=fn, params=selected, module=model)

    if callable(model):
        if not isinstance(params, Mapping) or not params:
            raise ParameterSelectionError(
                "for a plain function f(params, x), pass its parameters as params={name: tensor, ...}."
            )
        values = {k: _as_param_tensor(k, v) for k, v in params.items()}

        def fn_callable(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return _flatten_output(model(p, x))

        return FunctionalModel(fn=fn_callable, params=values, module=None)
    raise UnsupportedError(f"model must be a torch.nn.Module or a callable f(params, x), got {type(model).__name__}.")


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
