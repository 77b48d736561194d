"""What the hand-evaluated captures (:mod:`.dense_chain`, :mod:`.conv_chain`) recognise in an ``nn.Sequential``.

Those captures replace autograd for models whose every step they know exactly: elementwise activations, whose
derivative they keep from the forward pass, and layers whose parameters they read from the functional model.
A module with hooks, or of a subclass (which may change ``forward``), is never recognised; the caller then
keeps the generic capture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._functional import FunctionalModel
from .tracing import ModelTrace

__all__ = ["Activation", "activation", "call_layers", "layer_parameters", "no_hooks"]

#: An activation applied in place: ``act(z, d)`` overwrites the pre-activation z with φ(z) and writes φ'(z) into ``d``
#: (a tensor of z's shape), so that a capture can keep both in reused buffers. The derivatives at the kinks are
#: autograd's (0 for ReLU at 0, the slope for LeakyReLU at 0).
Activation = Callable[[torch.Tensor, torch.Tensor], None]


def _relu(z: torch.Tensor, d: torch.Tensor) -> None:
    torch.sign(z.relu_(), out=d)


def _tanh(z: torch.Tensor, d: torch.Tensor) -> None:
    torch.mul(z.tanh_(), z, out=d).neg_().add_(1)  # 1 - h²


def _sigmoid(z: torch.Tensor, d: torch.Tensor) -> None:
    torch.neg(z.sigmoid_(), out=d).add_(1).mul_(z)  # (1 - h) h


def _leaky_relu(slope: float) -> Activation:
    def leaky(z: torch.Tensor, d: torch.Tensor) -> None:
        d.fill_(slope).masked_fill_(z > 0, 1.0)
        F.leaky_relu_(z, slope)

    return leaky


def activation(module: nn.Module) -> Activation | None:
    """φ and φ' of ``module`` if it is one of ``nn.ReLU``, ``nn.Tanh``, ``nn.Sigmoid``, ``nn.LeakyReLU``; else None."""
    if type(module) is nn.ReLU:
        return _relu
    if type(module) is nn.Tanh:
        return _tanh
    if type(module) is nn.Sigmoid:
        return _sigmoid
    if type(module) is nn.LeakyReLU:
        return _leaky_relu(float(module.negative_slope))
    return None


def no_hooks(module: nn.Module) -> bool:
    """True if neither ``module`` nor the global registry has forward or backward hooks that could act on it."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def layer_parameters(
    fm: FunctionalModel, name: str, layer: nn.Linear | nn.Conv2d
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias (None if the layer has none) that the functional call of ``fm`` hands the layer
    ``name``: the selected value, else the module's own (fixed) tensor."""
    weight = fm.params.get(f"{name}.weight", layer.weight.detach())
    bias = layer.bias
    return weight, None if bias is None else fm.params.get(f"{name}.bias", bias.detach())


def call_layers(trace: ModelTrace, names: Sequence[str], kinds: dict[str, int]) -> tuple[int, ...] | None:
    """For each traced layer call, the index in ``names`` of the layer that owns its parameters, if every call
    is a call of one of these layers, of the kind ``kinds`` gives with an input of that many axes (batch axis
    included), each layer called at most once and in order; else None."""
    layers = []
    for call in trace.calls:
        owners = {p.rsplit(".", 1)[0] for p in call.params.values()}
        if len(owners) != 1 or (owner := owners.pop()) not in names:
            return None
        if kinds.get(call.kind) != len(call.in_shape):
            return None
        layers.append(names.index(owner))
    if not layers or layers != sorted(set(layers)):
        return None
    return tuple(layers)
