"""The structured method's capture for the commonest model, a chain of dense layers and elementwise activations.

An ``nn.Sequential`` of ``nn.Linear`` layers with ``nn.ReLU``, ``nn.LeakyReLU``, ``nn.Tanh``, ``nn.Sigmoid`` or
``nn.Identity`` between them (exactly these classes, no hooks), ending with a linear layer and applied to vectors
(N, d_in), is evaluated here by hand instead of by autograd: the forward pass keeps each layer's input A_l and the
derivative φ'(z_l) of the activation after it, and the output cotangents of every layer for all O outputs follow
from the chain rule (theory.md §1.3)

    G_L = I_O,    G_l = (G_{l+1} W_{l+1}) ⊙ φ'(z_l)    (G_l of shape (N, O, d_l), one matrix product per layer),

where the first step needs no product (G_{L-1}[n, o] = W_L[o] ⊙ φ'(z_{L-1}(x_n))) and the recursion stops at the
first layer with a selected parameter. Compared with autograd on the batch this skips the graph, the zero probes
and the reverse-mode bookkeeping, and the cotangents come out laid out (N, O, d), so that their Gram products in
:mod:`.terms` need no copy. The tensors are those of the generic capture, in its layout, so the kernel is the same
to round-off (the tests compare both with the dense float64 Jacobian).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._functional import FunctionalModel
from .chain_layers import Activation, activation, call_layers, layer_parameters, no_hooks
from .terms import Workspace
from .tracing import ModelTrace

__all__ = ["DenseChain", "dense_chain"]


@dataclass(frozen=True)
class DenseChain:
    """The linear layers (weight, bias or None), the activation after each (None: none; the last has none), and
    for each traced layer call the index of its layer."""

    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor | None, ...]
    activations: tuple[Activation | None, ...]
    call_layers: tuple[int, ...]

    def capture(
        self, x: torch.Tensor, workspace: Workspace
    ) -> tuple[dict[int, torch.Tensor], list[torch.Tensor], dict[int, tuple[torch.Tensor | None, torch.Tensor]]]:
        """Per traced call its input (N, 1, d_in) and output cotangents (N, O, 1, d_out), the structured
        method's layout (see module docs); and the factors (D, w) of the cotangents G[n, o] = D[n] ⊙ w[o]
        (:class:`~.terms.GramTerm`'s ``outer``) of the output layer's call (D None: 1, w = I_O) and of the last
        hidden layer's, if it has an activation (D = φ'(z), w = W_L).

        Every tensor is computed in place in ``workspace`` (one per side of the kernel, kept between calls): they stay
        valid until its next capture (a fresh tensor costs page faults on first touch, as much as the elementwise
        step that fills it)."""
        with torch.no_grad():
            n, o, last = x.shape[0], self.weights[-1].shape[0], len(self.weights) - 1
            inputs, derivatives = [x.detach()], []
            for layer in range(last):  # the output layer's own product is not needed
                W, b, act = self.weights[layer], self.biases[layer], self.activations[layer]
                z = workspace.take(("z", layer), (n, W.shape[0]), x)
                torch.mm(inputs[-1], W.T, out=z) if b is None else torch.addmm(b, inputs[-1], W.T, out=z)
                d = None
                if act is not None:
                    d = workspace.take(("d", layer), z.shape, x)
                    act(z, d)
                inputs.append(z)
                derivatives.append(d)
            cotangents = {last: torch.eye(o, dtype=x.dtype, device=x.device).expand(n, o, o)}
            for layer in range(last - 1, min(self.call_layers) - 1, -1):
                G, d = workspace.take(("G", layer), (n, o, self.weights[layer].shape[0]), x), derivatives[layer]
                if layer < last - 1:
                    torch.mm(cotangents[layer + 1].view(n * o, -1), self.weights[layer + 1], out=G.view(n * o, -1))
                    G = G if d is None else G.mul_(d.unsqueeze(1))
                elif d is None:
                    G.copy_(self.weights[last].expand_as(G))
                else:  # W_L[o] ⊙ φ'(z_n), in one pass
                    torch.mul(self.weights[last], d.unsqueeze(1), out=G)
                cotangents[layer] = G
            outer: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}
            if last in self.call_layers:
                outer[self.call_layers.index(last)] = (None, cotangents[last][0])
            d = derivatives[last - 1] if last else None
            if d is not None and last - 1 in self.call_layers:
                outer[self.call_layers.index(last - 1)] = (d, self.weights[last])
            return (
                {i: inputs[layer].unsqueeze(1) for i, layer in enumerate(self.call_layers)},
                [cotangents[layer].unsqueeze(2) for layer in self.call_layers],
                outer,
            )


def dense_chain(fm: FunctionalModel, trace: ModelTrace) -> DenseChain | None:
    """The chain if ``fm`` is one (module docs), with every traced call a linear layer's on vectors (so the
    whole chain is applied to vectors, (N, d_in)); else None."""
    model = fm.module
    if type(model) is not nn.Sequential or trace.fallback or not no_hooks(model):
        return None
    names: list[str] = []
    weights: list[torch.Tensor] = []
    biases: list[torch.Tensor | None] = []
    activations: list[Activation | None] = []
    for name, child in model.named_children():
        if not no_hooks(child):
            return None
        if type(child) is nn.Linear:
            names.append(name)
            weight, bias = layer_parameters(fm, name, child)
            weights.append(weight)
            biases.append(bias)
            activations.append(None)
        elif type(child) is nn.Identity:
            continue
        elif (act := activation(child)) is not None and activations and activations[-1] is None:
            activations[-1] = act
        else:
            return None
    if not names or activations[-1] is not None:
        return None
    layers = call_layers(trace, names, {"linear": 2})
    if layers is None:
        return None
    return DenseChain(tuple(weights), tuple(biases), tuple(activations), layers)
