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

For the full kernel (and convolutions with groups) :meth:`ConvChain.capture` hands the structured method the tensors
of the generic capture, in its shapes, so the kernel is the same to round-off. For the traced kernel
:meth:`ConvChain.jacobians` goes further: a few examples at a time, it computes the cotangents and at once each
convolution parameter's Jacobians for all outputs, J[n] = Σ_l a_l g_lᵀ (one matrix product per example over the
unfolded input patches), into buffers kept across calls; only Σ_o J[n, o]·J[m, o] is needed, so the O Jacobians
of an example are read as one vector. The cotangents and patches of a chunk stay in cache and are never allocated
for the whole batch. The tests compare both routes with the dense float64 Jacobian.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._functional import FunctionalModel
from .._validation import as_tuple
from .chain_layers import Activation, activation, call_layers, layer_parameters, no_hooks
from .rules import same_padding
from .tracing import ModelTrace

__all__ = ["ConvChain", "conv_chain"]


@dataclass(frozen=True)
class _Conv:
    """One ``nn.Conv2d`` with its parameters, numeric padding, and the activation after it (None: none)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    activation: Activation | None

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer's output φ(z) and φ'(z) (None without an activation), z = conv(h)."""
        z = F.conv2d(h, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is None:
            return z, None
        d = torch.empty_like(z)
        self.activation(z, d)
        return z, d

    def adjoint(self, G: torch.Tensor, in_size: tuple[int, ...]) -> torch.Tensor:
        """convᵀ of O cotangents per example: G (N, H', W', O, C_out) -> (N, H, W, O, C_in), (H, W) = ``in_size``."""
        n, h, w, o, c = G.shape
        images = G.view(n, h, w, o * c).permute(0, 3, 1, 2)  # (N, O·C_out, H', W'), channels last
        return self._transposed(images, self.weight.repeat(o, 1, 1, 1), self.groups * o, in_size, o)

    def patches(self, h: torch.Tensor) -> torch.Tensor:
        """The unfolded input patches (N, C_in·kh·kw, L) of a convolution with one group."""
        return F.unfold(h, tuple(self.weight.shape[2:]), self.dilation, self.padding, self.stride)

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


def _numeric_padding(conv: nn.Conv2d) -> tuple[int, ...] | None:
    """The padding as two numbers ('valid': 0; 'same': half the kernel's reach if that is even), else None."""
    if not isinstance(conv.padding, str):
        return as_tuple(conv.padding, 2, "padding", minimum=0)
    if conv.padding == "valid":
        return 0, 0
    sides = same_padding(conv.kernel_size, conv.dilation)
    if any(before != after for before, after in sides):
        return None  # padded more on one side than on the other
    return tuple(before for before, _ in sides)


@dataclass(frozen=True)
class ConvChain:
    """The convolutions, the head's weight (O, d), whether global average pooling precedes it,
    whether to collapse the last convolution's cotangents (module docs; traced kernel only), and for each traced
    layer call the index of its layer (``len(convs)``: the head) and its parameters."""

    convs: tuple[_Conv, ...]
    head_weight: torch.Tensor
    pooled: bool
    collapse: bool
    call_layers: tuple[int, ...]
    call_params: tuple[dict[str, str], ...]  # per traced call: slot ('weight'/'bias') -> parameter name

    def capture(
        self, x: torch.Tensor
    ) -> tuple[dict[int, torch.Tensor], list[torch.Tensor], dict[int, tuple[torch.Tensor, torch.Tensor]]]:
        """Per traced call its input (N, *in_shape) and output cotangents (N, O', *out_shape), the structured
        method's layout; O' = 1 for the last convolution if ``collapse`` (its cotangent is then g̃, module docs),
        else O. The third item (no output factors) keeps the signature of :meth:`.DenseChain.capture`."""
        with torch.no_grad():
            n, o = x.shape[0], self.head_weight.shape[0]
            inputs, derivatives = self._forward(x)
            last = len(self.convs)
            cotangents = {last: torch.eye(o, dtype=x.dtype, device=x.device).expand(n, o, o)}
            if self.collapse and last - 1 in self.call_layers:
                cotangents[last - 1] = self._collapsed(derivatives[-1], inputs[-1]).unsqueeze(1)
            for layer, G in self._backward(inputs, derivatives, skip_last=last - 1 in cotangents):
                cotangents[layer] = G.permute(0, 3, 4, 1, 2)  # (N, O, C, H, W)
            inputs[last] = self._head_input(inputs[last])
            return (
                {i: inputs[layer].unsqueeze(1) for i, layer in enumerate(self.call_layers)},
                [cotangents[layer].unsqueeze(2) for layer in self.call_layers],
                {},
            )

    def jacobians(
        self, x: torch.Tensor, take: Callable[[int, tuple[int, ...]], torch.Tensor], chunk_words: int = 2**21
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """For the traced kernel: the head's input (N, d), and for each selected convolution parameter a tensor
        (N, 1, P') whose Gram matrix is the parameter's kernel summed over outputs, Σ_o J[n, o]·J[m, o]: the
        weight's J[n] = Σ_l a_l g_lᵀ laid out (d_in, O'·d_out) (one example's Jacobians for all outputs, read as one
        vector), the bias's Σ_l g_l (O'·d_out), O' = 1 for a collapsed last convolution. Formed chunk by chunk
        over examples (about ``chunk_words`` entries of cotangents per chunk), so that the cotangents and unfolded
        inputs of a chunk stay in cache and small allocations are reused, into tensors from ``take(slot, shape)``
        (buffers kept across calls: a fresh large tensor costs page faults). Convolutions with one group only."""
        with torch.no_grad():
            inputs, derivatives = self._forward(x)
            n, last = x.shape[0], len(self.convs)
            widest = max(h[0].numel() for h in inputs[1:])  # entries of one example's largest convolution output
            step = max(1, chunk_words // (widest * self.head_weight.shape[0]))
            out: dict[str, torch.Tensor] = {}
            for start in range(0, n, step):
                rows = slice(start, start + step)
                part_inputs = [h[rows] for h in inputs]
                part_derivatives = [None if d is None else d[rows] for d in derivatives]
                cotangents = []
                if self.collapse and last - 1 in self.call_layers:
                    g = self._collapsed(part_derivatives[-1], part_inputs[-1])  # (n, C, H, W)
                    cotangents.append((last - 1, g.permute(0, 2, 3, 1).unsqueeze(3)))
                skip = bool(cotangents)
                cotangents += self._backward(part_inputs, part_derivatives, skip_last=skip)
                for layer, G in cotangents:
                    if layer in self.call_layers:
                        self._layer_jacobians(layer, part_inputs[layer], G, rows, n, take, out)
            return self._head_input(inputs[-1]), {name: J.view(n, 1, -1) for name, J in out.items()}

    def _layer_jacobians(
        self,
        layer: int,
        h: torch.Tensor,
        G: torch.Tensor,
        rows: slice,
        n: int,
        take: Callable[[int, tuple[int, ...]], torch.Tensor],
        out: dict[str, torch.Tensor],
    ) -> None:
        """Writes rows ``rows`` of the weight's and bias's Jacobians (see :meth:`jacobians`) of convolution
        ``layer`` from its input h (n, C_in, H, W) and cotangents G (n, H', W', O', C_out)."""
        m, hh, ww, o, c = G.shape
        g = G.view(m, hh * ww, o * c)
        for slot, name in self.call_params[self.call_layers.index(layer)].items():
            if slot == "weight":
                patches = self.convs[layer].patches(h)  # (n, d_in, L)
                if name not in out:
                    out[name] = take(2 * layer, (n, patches.shape[1], o * c))
                torch.bmm(patches, g, out=out[name][rows])
            else:
                if name not in out:
                    out[name] = take(2 * layer + 1, (n, o * c))
                torch.sum(g, 1, out=out[name][rows])

    def _forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """The inputs of the convolutions (channels last), then the last one's output (after its activation); the
        activations' derivatives φ'(z_l) after each convolution (None: no activation)."""
        inputs, derivatives = [], []
        h = x.contiguous(memory_format=torch.channels_last)
        for conv in self.convs:
            inputs.append(h)
            h, d = conv.forward(h)
            derivatives.append(d)
        inputs.append(h)
        return inputs, derivatives

    def _head_input(self, h: torch.Tensor) -> torch.Tensor:
        """The head's input (N, d) from the last convolution's output (after its activation)."""
        return h.mean((2, 3)) if self.pooled else h.flatten(1)

    def _backward(
        self, inputs: list[torch.Tensor], derivatives: list[torch.Tensor | None], skip_last: bool
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """The cotangents G (N, H, W, O, C) of the convolutions (module docs), from the last down to the lowest with
        a call, as (layer, G); ``inputs``: the convolutions' inputs and the last one's output. ``skip_last``: the
        last convolution's own cotangents are not needed (collapsed), so G_last is not formed where a pooled head
        makes it a factor per channel (:meth:`_Conv.scaled_adjoint`)."""
        last, lowest = len(self.convs), min(self.call_layers)
        skip_last = skip_last or last - 1 not in self.call_layers
        if lowest == last or (lowest == last - 1 and skip_last):
            return
        h = inputs[last]
        G: torch.Tensor
        if skip_last and self.pooled and self.convs[-1].groups == 1:
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
            if layer < last - 1 or not skip_last:
                yield layer, G
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

    def _collapsed(self, d: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        """g̃ = √s ⊙ φ' (module docs) from φ' (N, C, H, W) of the last convolution (None: 1), h its output."""
        n, c, hh, ww = h.shape
        scale = (self.head_weight.square().sum(0).sqrt() / (hh * ww)).view(1, c, 1, 1)  # √s_c
        return scale.expand(n, c, hh, ww).contiguous(memory_format=torch.channels_last) if d is None else d * scale


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
            stride, dilation = as_tuple(child.stride, 2, "stride"), as_tuple(child.dilation, 2, "dilation")
            convs.append(_Conv(weight, bias, stride, padding, dilation, child.groups, None))
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
    chain = tuple(dataclasses.replace(c, activation=a) for c, a in zip(convs, acts, strict=True))
    params = tuple(dict(call.params) for call in trace.calls)
    return ConvChain(chain, head_weight, pooled, traced and pooled, layers, params)
