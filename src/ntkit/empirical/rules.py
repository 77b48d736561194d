"""Per-layer structure: what a recorded layer call contributes to the NTK, from its input and output cotangent.

A layer call (see :mod:`.interception`) is recorded with its per-example input X, shape (N, *in_shape), and
the cotangents of its output for every model output, G = ∂f_o/∂y, shape (N, O, *out_shape). The shapes are
those the layer saw inside the forward pass of one example (a leading batch axis of size one included);
every axis other than the feature axes is a *position*, and a weight's Jacobian sums over positions.

Rules (the parameter's Jacobian for one example and output, y = layer output):

- linear ``y_l = W a_l + b``: J_W = Σ_l g_l a_lᵀ, J_b = Σ_l g_l;
- convolution: the same, with a_l the unfolded input patch at output position l, one block per group;
- embedding ``y_l = E[i_l]``: J_E = Σ_l e_{i_l} g_lᵀ (rows of the table that are read);
- layer/group/batch norm (eval) ``y = x̂ ⊙ w + b``: J_w = Σ_l x̂_l ⊙ g_l, J_b = Σ_l g_l, where x̂ is the
  normalised input (batch norm in eval mode uses its running statistics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._validation import as_tuple
from .interception import LayerCall
from .terms import GramTerm, IndexTerm, JacobianTerm

__all__ = [
    "LINEAR_FAMILY",
    "NORMS",
    "embedding_term",
    "linear_family_dims",
    "linear_family_term",
    "parameter_jacobian",
    "same_padding",
]

LINEAR_FAMILY = ("linear", "conv")
NORMS = ("layer_norm", "group_norm", "batch_norm")


def linear_family_dims(call: LayerCall) -> tuple[int, int, int, int]:
    """(K, L, d_in, d_out): blocks (groups), positions, input and output features of one example."""
    if call.kind == "linear":
        d_out, d_in = call.weight_shape
        return 1, math.prod(call.out_shape[:-1]), d_in, d_out
    groups = call.static["groups"]
    c_out, c_in_group, *kernel = call.weight_shape
    return groups, math.prod(call.out_shape) // c_out, c_in_group * math.prod(kernel), c_out // groups


def same_padding(kernel: Sequence[int], dilation: Sequence[int]) -> list[tuple[int, int]]:
    """torch's ``padding="same"`` per spatial axis: (before, after), the kernel's reach d·(k − 1) split in two,
    the odd one after."""
    return [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation, strict=True)]


def _conv_patches(call: LayerCall, X: torch.Tensor) -> torch.Tensor:
    """Unfolded input patches of a conv1d/conv2d call: (N, K, L, C_in/K · prod(kernel))."""
    n = X.shape[0]
    _, c_in_group, *kernel = call.weight_shape
    nd = len(kernel)
    groups = call.static["groups"]
    stride = as_tuple(call.static["stride"], nd, "stride")
    dilation = as_tuple(call.static["dilation"], nd, "dilation")
    x = X.reshape(-1, *X.shape[-(nd + 1) :])  # (N·B, C, *S)
    padding = call.static["padding"]
    if isinstance(padding, str):
        if padding == "same":  # F.pad takes (before, after) from the last axis backwards
            x = F.pad(x, [p for side in reversed(same_padding(kernel, dilation)) for p in side])
        padding = (0,) * nd
    padding = as_tuple(padding, nd, "padding", minimum=0)
    if nd == 1:
        x, kernel, stride, dilation, padding = (
            x.unsqueeze(2),
            [1, *kernel],
            (1, *stride),
            (1, *dilation),
            (0, *padding),
        )
    cols = F.unfold(x, tuple(kernel), dilation=dilation, padding=padding, stride=stride)  # (N·B, C·k, L)
    per_group = c_in_group * math.prod(kernel)
    cols = cols.reshape(n, -1, groups, per_group, cols.shape[-1])  # (N, B, K, d_in, L)
    return cols.permute(0, 2, 1, 4, 3).reshape(n, groups, -1, per_group)


def _linear_family_cotangents(call: LayerCall, G: torch.Tensor) -> torch.Tensor:
    """Output cotangents (N, O, K, L, d_out)."""
    n, o = G.shape[:2]
    K, _, _, d_out = linear_family_dims(call)
    if call.kind == "linear":
        return G.reshape(n, o, 1, -1, d_out)
    spatial = math.prod(G.shape[-(len(call.weight_shape) - 2) :])
    return G.reshape(n, o, -1, K, d_out, spatial).permute(0, 1, 3, 2, 5, 4).reshape(n, o, K, -1, d_out)


def linear_family_term(call: LayerCall, X: torch.Tensor, G: torch.Tensor) -> GramTerm:
    """Inputs A (N, K, L, d_in) and output cotangents (N, O, K, L, d_out) of a linear or conv call."""
    d_in = linear_family_dims(call)[2]
    A = X.reshape(X.shape[0], 1, -1, d_in) if call.kind == "linear" else _conv_patches(call, X)
    return GramTerm(A, _linear_family_cotangents(call, G))


def embedding_term(call: LayerCall, indices: torch.Tensor, G: torch.Tensor) -> IndexTerm:
    """Indices (N, L), −1 where the padding index is read, and cotangents (N, O, L, D)."""
    n, o = G.shape[:2]
    num_embeddings, dim = call.weight_shape
    idx = indices.reshape(n, -1).long()
    padding_idx = call.static["padding_idx"]
    if padding_idx is not None and padding_idx >= 0:
        idx = torch.where(idx == padding_idx, -1, idx)
    return IndexTerm(idx, G.reshape(n, o, -1, dim), num_embeddings)


def _normalised_input(call: LayerCall, X: torch.Tensor) -> torch.Tensor:
    """x̂ with the channel (feature) axis last: (N, L, C)."""
    n, eps = X.shape[0], call.static["eps"]
    if call.kind == "layer_norm":
        c = math.prod(call.static["normalized_shape"])
        x = X.reshape(n, -1, c)
        var, mean = torch.var_mean(x, dim=-1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + eps)
    c = call.in_shape[1]  # group/batch norm inputs are (B, C, *S)
    x = X.reshape(-1, c, math.prod(call.in_shape[2:]))  # (N·B, C, S)
    if call.kind == "group_norm":
        g = call.static["num_groups"]
        xg = x.reshape(x.shape[0], g, -1)
        var, mean = torch.var_mean(xg, dim=-1, keepdim=True, unbiased=False)
        x = ((xg - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    else:
        mean, var = call.static["running_mean"], call.static["running_var"]
        x = (x - mean[:, None]) / torch.sqrt(var[:, None] + eps)
    return x.transpose(1, 2).reshape(n, -1, c)


def _channels_last(call: LayerCall, G: torch.Tensor) -> torch.Tensor:
    """Output cotangents of a norm layer with the channel axis last: (N, O, L, C)."""
    n, o = G.shape[:2]
    if call.kind == "layer_norm":
        return G.reshape(n, o, -1, math.prod(call.static["normalized_shape"]))
    c = call.in_shape[1]
    return G.reshape(n, o, -1, c, math.prod(call.in_shape[2:])).transpose(3, 4).reshape(n, o, -1, c)


def parameter_jacobian(call: LayerCall, slot: str, X: torch.Tensor | None, G: torch.Tensor) -> JacobianTerm:
    """The Jacobian (N, O, P) of the parameter in ``slot`` ('weight' or 'bias') of one call, laid out as
    the parameter (so that uses of one parameter by several calls add up)."""
    n, o = G.shape[:2]
    if call.kind in LINEAR_FAMILY:
        if slot == "weight":
            assert X is not None, "the tracing pass records the input of every call with a weight"
            return linear_family_term(call, X, G).jacobian()
        return JacobianTerm(_linear_family_cotangents(call, G).sum(3).reshape(n, o, -1))
    if call.kind == "embedding":
        assert X is not None, "the tracing pass records the indices of every embedding call"
        return embedding_term(call, X, G).jacobian()
    Gc = _channels_last(call, G)
    if slot == "bias":
        return JacobianTerm(Gc.sum(2))
    assert X is not None, "the tracing pass records the input of every call with a weight"
    return JacobianTerm(torch.einsum("nlc,nolc->noc", _normalised_input(call, X), Gc))
