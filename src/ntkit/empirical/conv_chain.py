"""The structured method's capture for a chain of 2-d convolutions and elementwise activations with a linear head.

An ``nn.Sequential`` of ``nn.Conv2d`` layers (zero padding) with activations after them (those of
:mod:`.chain_layers`; ``nn.Identity`` anywhere), then ``nn.AdaptiveAvgPool2d(1)`` (global average pooling),
``nn.Flatten()`` and ``nn.Linear``, or ``nn.Flatten()`` and ``nn.Linear``, applied to images (N, C, H, W), is
evaluated here by hand instead of by autograd. The forward pass keeps each convolution's input h_l and the
derivative φ'(z_l) of the activation after it; the output cotangents of the convolutions for all O outputs
follow from the chain rule (theory.md §1.3):

    G_last[n, o] = W_head[o] ⊙ φ'(z_last(x_n))     (with pooling, W_head[o, c] / L at each of the L positions),
    G_{l-1}[n, o] = convᵀ_l(G_l[n, o]) ⊙ φ'(z_{l-1}(x_n)),

where convᵀ_l, the adjoint of layer l (a transposed convolution), is applied to all N·O cotangents at once as one
grouped transposed convolution of N images with O·C channels (O·groups groups, the weight repeated O times), in
channels-last layout, where oneDNN runs it at the speed of a forward convolution (autograd's backward batched over
outputs runs about 3x slower). The cotangents are kept laid out (N, H, W, O, C) throughout, which is also the
layout from which :mod:`.terms` forms the weights' Jacobians J = Σ_l g_l a_lᵀ without a copy.

Pooled head, traced kernel (``collapse``): the last convolution's cotangents G_last[n, o, l, c] = W_head[o, c] / L ·
φ'_{n,l,c} differ between outputs only by a factor per channel, so for every pair of examples

    Σ_o G_last[n, o, l, c] G_last[m, o, l', c'] summed with any c = c' weight = Σ_c s_c φ'_{n,l,c} φ'_{m,l',c},
    s_c = Σ_o W_head[o, c]² / L²,

and the traced kernel of that layer's weight and bias (Σ_o over J[n, o]·J[m, o], whose entries are sums over
positions of one cotangent channel times inputs) equals the kernel of the single cotangent g̃ = √s ⊙ φ': that
layer's terms are computed for one output instead of O. The layers below still receive all O cotangents.

The tensors handed to the structured method are those of the generic capture, in its shapes, so the kernel is the
same to round-off (the tests compare both with the dense float64 Jacobian).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._functional import FunctionalModel
from .chain_layers import Activation, activation, call_layers, layer_parameters, no_hooks
from .tracing import ModelTrace

__all__ = ["ConvChain", "conv_chain"]


@dataclass(frozen=True)
class _Conv:
    """One ``nn.Conv2d`` with its parameters, numeric padding, and the activation after it (None: none)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    activation: Activation | None

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer's output φ(z) and φ'(z) (None without an activation), z = conv(h)."""
        z = F.conv2d(h, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return (z, None) if self.activation is None else self.activation(z)

    def adjoint(self, G: torch.Tensor, in_size: tuple[int, ...]) -> torch.Tensor:
        """convᵀ of O cotangents per example: G (N, H', W', O, C_out) -> (N, H, W, O, C_in), (H, W) = ``in_size``."""
        n, h, w, o, c = G.shape
        images = G.view(n, h, w, o * c).permute(0, 3, 1, 2)  # (N, O·C_out, H', W'), channels last
        return self._transposed(images, self.weight.repeat(o, 1, 1, 1), self.groups * o, in_size, o)

    def scaled_adjoint(self, d: torch.Tensor, scale: torch.Tensor, in_size: tuple[int, ...]) -> torch.Tensor:
        """convᵀ of the cotangents G[n, o] = scale[o] ⊙ d[n] (a factor per output and channel): d (N, C_out, H', W'),
        scale (O, C_out) -> (N, H, W, O, C_in). One transposed convolution of d with the weight V[c, (o, i)] =
        scale[o, c] · W[c, i] (one group) computes all O at once without forming G."""
        o, (c_out, c_in, *kernel) = scale.shape[0], self.weight.shape
        weight = (scale.T.reshape(c_out, o, 1, 1, 1) * self.weight.unsqueeze(1)).reshape(c_out, o * c_in, *kernel)
        return self._transposed(d, weight, 1, in_size, o)

    def _transposed(
        self, images: torch.Tensor, weight: torch.Tensor, groups: int, in_size: tuple[int, ...], o: int
    ) -> torch.Tensor:
        """The transposed convolution of ``images`` (N, C, H', W') to (N, O·C_in, H, W), laid out (N, H, W, O, C_in)."""
        extra = []  # per axis, the input rows/columns after the last one the kernel reaches (output_padding)
        for i in range(2):
            reach = (images.shape[2 + i] - 1) * self.stride[i] + self.dilation[i] * (weight.shape[2 + i] - 1) + 1
            extra.append(in_size[i] + 2 * self.padding[i] - reach)
        out = F.conv_transpose2d(images, weight, None, self.stride, self.padding, tuple(extra), groups, self.dilation)
        return out.permute(0, 2, 3, 1).contiguous().view(images.shape[0], *in_size, o, -1)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _numeric_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """The padding as two numbers ('valid': 0; 'same': half the kernel's reach if that is even), else None."""
    if not isinstance(conv.padding, str):
        return _pair(conv.padding)
    if conv.padding == "valid":
        return 0, 0
    reach = [d * (k - 1) for d, k in zip(_pair(conv.dilation), _pair(conv.kernel_size), strict=True)]
    if any(r % 2 for r in reach):
        return None  # padded more on one side than on the other
    return reach[0] // 2, reach[1] // 2


@dataclass(frozen=True)
class ConvChain:
    """The convolutions, the head's weight (O, d), whether global average pooling precedes it,
    whether to collapse the last convolution's cotangents (module docs; traced kernel only), and for each traced
    layer call the index of its layer (``len(convs)``: the head)."""

    convs: tuple[_Conv, ...]
    head_weight: torch.Tensor
    pooled: bool
    collapse: bool
    call_layers: tuple[int, ...]

    def capture(
        self, x: torch.Tensor
    ) -> tuple[dict[int, torch.Tensor], list[torch.Tensor], dict[int, tuple[torch.Tensor, torch.Tensor]]]:
        """Per traced call its input (N, *in_shape) and output cotangents (N, O', *out_shape), the structured
        method's layout; O' = 1 for the last convolution if ``collapse`` (its cotangent is then g̃, module docs),
        else O. The third item (no output factors) keeps the signature of :meth:`.DenseChain.capture`."""
        with torch.no_grad():
            n, o = x.shape[0], self.head_weight.shape[0]
            inputs, derivatives = [], []
            h = x.contiguous(memory_format=torch.channels_last)
            for conv in self.convs:
                inputs.append(h)
                h, d = conv.forward(h)
                derivatives.append(d)
            last = len(self.convs)
            inputs.append(h.mean((2, 3)) if self.pooled else h.flatten(1))  # the head's input
            cotangents = {last: torch.eye(o, dtype=x.dtype, device=x.device).expand(n, o, o)}
            if self.collapse and last - 1 in self.call_layers:
                cotangents[last - 1] = self._collapsed(derivatives[-1], h.shape)
            self._backward(inputs, derivatives, h, cotangents)
            return (
                {i: inputs[layer].unsqueeze(1) for i, layer in enumerate(self.call_layers)},
                [cotangents[layer].unsqueeze(2) for layer in self.call_layers],
                {},
            )

    def _backward(
        self,
        inputs: list[torch.Tensor],
        derivatives: list[torch.Tensor | None],
        h: torch.Tensor,
        cotangents: dict[int, torch.Tensor],
    ) -> None:
        """Adds the cotangents (N, O, C, H, W) of the convolutions from the last down to the lowest one with a call
        (module docs), keeping those already there (collapsed); ``h``: the last convolution's output. G_last is
        not formed where only the layers below need it and a pooled head makes it a factor per channel
        (:meth:`_Conv.scaled_adjoint`)."""
        last, lowest = len(self.convs), min(self.call_layers)
        if lowest == last or (lowest == last - 1 and last - 1 in cotangents):
            return
        scaled = self.pooled and self.convs[-1].groups == 1 and lowest < last - 1
        G: torch.Tensor
        if scaled and (last - 1 in cotangents or last - 1 not in self.call_layers):
            d = derivatives[-1]
            d = torch.ones_like(h) if d is None else d
            scale = self.head_weight / h.shape[2:].numel()
            layer, G = last - 2, self.convs[-1].scaled_adjoint(d, scale, tuple(inputs[last - 1].shape[2:]))
        else:
            layer, G = last - 1, self._last_cotangents(derivatives[-1], h.shape)
        while True:
            d = derivatives[layer]
            if layer < last - 1 and d is not None:
                G.mul_(d.permute(0, 2, 3, 1).unsqueeze(3))
            cotangents.setdefault(layer, G.permute(0, 3, 4, 1, 2))
            if layer == lowest:
                return
            G = self.convs[layer].adjoint(G, tuple(inputs[layer].shape[2:]))
            layer -= 1

    def _last_cotangents(self, d: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
        """G_last (N, H, W, O, C) (module docs) from φ' (N, C, H, W) of the last convolution (None: 1)."""
        n, c, h, w = shape
        o = self.head_weight.shape[0]
        if self.pooled:
            head = (self.head_weight / (h * w)).expand(h, w, o, c)
        else:
            head = self.head_weight.view(o, c, h, w).permute(2, 3, 0, 1)
        if d is None:
            return head.expand(n, h, w, o, c).contiguous()
        return (d.permute(0, 2, 3, 1).unsqueeze(3) * head).contiguous()  # the product may follow head's strides

    def _collapsed(self, d: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
        """g̃ = √s ⊙ φ' (module docs), laid out as one output's cotangents: (N, 1, C, H, W)."""
        n, c, h, w = shape
        scale = (self.head_weight.square().sum(0).sqrt() / (h * w)).view(1, c, 1, 1)  # √s_c
        g = scale.expand(n, c, h, w) if d is None else d * scale
        return g.unsqueeze(1)


def conv_chain(fm: FunctionalModel, trace: ModelTrace, traced: bool) -> ConvChain | None:
    """The chain if ``fm`` is one (module docs) and every traced call is a call of its layers on images; else
    None. ``traced``: the kernel is summed over outputs, so a pooled head's last convolution may be collapsed."""
    model = fm.module
    if type(model) is not nn.Sequential or trace.fallback or not no_hooks(model):
        return None
    convs: list[_Conv] = []
    names: list[str] = []
    acts: list[Activation | None] = []
    tail: list[type[nn.Module]] = []
    head: nn.Linear | None = None
    for name, child in model.named_children():
        if not no_hooks(child) or head is not None:
            return None
        if type(child) is nn.Identity:
            continue
        act = activation(child)
        if type(child) is nn.Conv2d and not tail and child.padding_mode == "zeros":
            padding = _numeric_padding(child)
            if padding is None:
                return None
            weight, bias = layer_parameters(fm, name, child)
            layer = (_pair(child.stride), padding, _pair(child.dilation), child.groups)
            convs.append(_Conv(weight, bias, *layer, None))
            names.append(name)
            acts.append(None)
        elif act is not None and acts and acts[-1] is None and not tail:
            acts[-1] = act
        elif type(child) is nn.AdaptiveAvgPool2d and not tail and child.output_size in (1, (1, 1)):
            tail.append(nn.AdaptiveAvgPool2d)
        elif type(child) is nn.Flatten and child.start_dim == 1 and child.end_dim == -1 and nn.Flatten not in tail:
            tail.append(nn.Flatten)
        elif type(child) is nn.Linear and tail and tail[-1] is nn.Flatten:
            head = child
            names.append(name)
        else:
            return None
    if not convs or head is None:
        return None
    layers = call_layers(trace, names, {"conv": 4, "linear": 2})
    if layers is None:
        return None
    head_weight, _ = layer_parameters(fm, names[-1], head)
    pooled = tail[0] is nn.AdaptiveAvgPool2d
    chain = tuple(
        _Conv(c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups, a) for c, a in zip(convs, acts, strict=True)
    )
    return ConvChain(chain, head_weight, pooled, traced and pooled, layers)
