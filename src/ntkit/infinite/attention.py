"""The kernel map of global self-attention at infinite width (theory.md §4.10; Hron et al. 2020, "Infinite
attention: NNGP and NTK for deep attention networks"), with optional positional embeddings.

Positions are flattened: a full-layout kernel (…, S_1, S_1', …, S_k, S_k') is handled as a matrix over
positions (…, P, P') with P = |S| (row-major order of the positions), and mapped back at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import ShapeError, UnsupportedError
from .kernel_type import Kernel

__all__ = [
    "MECHANISMS",
    "POSITIONAL_EMBEDDINGS",
    "AttentionConfig",
    "apply_mechanism",
    "positional_covariance",
    "self_attention",
]

#: Attention weights from the logits: softmax over the keys, or an elementwise function.
MECHANISMS = ("softmax", "identity", "abs", "relu")
POSITIONAL_EMBEDDINGS = ("none", "sum", "concat")

_MONTE_CARLO_HINT = "Estimate the kernel of such a network with nk.monte_carlo_kernel instead."

Std = float | torch.Tensor


@dataclass(frozen=True)
class AttentionConfig:
    """What the kernel of a self-attention layer depends on (see :class:`ntkit.nn.SelfAttention`)."""

    in_channels: int
    out_channels: int
    key_channels: int
    value_channels: int
    n_heads: int
    mechanism: str
    linear_scaling: bool
    W_query_std: Std
    W_key_std: Std
    W_value_std: Std
    W_out_std: Std
    b_std: Std | None
    pos_emb: str
    pos_emb_channels: int
    W_pos_emb_std: Std
    pos_emb_decay_fn: Callable[[torch.Tensor], torch.Tensor] | None
    pos_emb_p_norm: float
    val_pos_emb: bool
    input_size: tuple[int, ...] | None
    parameterization: str

    @property
    def key_in_channels(self) -> int:
        """Channels the keys and queries read: the inputs, and the positional embeddings if concatenated."""
        return self.in_channels + (self.pos_emb_channels if self.pos_emb == "concat" else 0)

    @property
    def value_in_channels(self) -> int:
        """Channels the values read (positional embeddings only with ``val_pos_emb``)."""
        return self.key_in_channels if self.val_pos_emb else self.in_channels

    def mixing_weights(self) -> tuple[float, float]:
        """(w_x, w_e): the per-channel covariance of the embedded inputs is w_x K + w_e R (before W_pos_emb_std²):
        1 and 1 for a sum, the channel shares for a concatenation."""
        if self.pos_emb == "concat":
            total = self.in_channels + self.pos_emb_channels
            return self.in_channels / total, self.pos_emb_channels / total
        return 1.0, 1.0


def positional_covariance(
    spatial_shape: tuple[int, ...],
    decay_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    p_norm: float,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(P, P) the covariance R(s, s') of the positional embeddings over the flattened positions (row-major):
    decay_fn(Σ_i |s_i − s'_i|^p) (p = ``p_norm``), or with ``decay_fn=None`` the identity (independent
    embeddings per position), as neural-tangents' ``pos_emb_decay_fn``."""
    size = math.prod(spatial_shape)
    if decay_fn is None:
        return torch.eye(size, dtype=dtype, device=device)
    grids = torch.meshgrid(*(torch.arange(n, dtype=dtype, device=device) for n in spatial_shape), indexing="ij")
    coords = torch.stack([g.reshape(-1) for g in grids], dim=-1)  # (P, k)
    distance = (coords[:, None, :] - coords[None, :, :]).abs().pow(p_norm).sum(-1)
    return decay_fn(distance).to(dtype)


def _to_matrix(t: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """(*B, S_1, S_1', …, S_k, S_k') -> (*B, P, P')."""
    n_batch = t.ndim - 2 * n_spatial
    first = [n_batch + 2 * i for i in range(n_spatial)]
    order = list(range(n_batch)) + first + [a + 1 for a in first]
    t = t.permute(order)
    size = math.prod(t.shape[n_batch : n_batch + n_spatial])
    return t.reshape(*t.shape[:n_batch], size, -1)


def _from_matrix(t: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    """(*B, P, P') -> (*B, S_1, S_1', …, S_k, S_k')."""
    n, n_batch = len(spatial_shape), t.ndim - 2
    t = t.reshape(*t.shape[:n_batch], *spatial_shape, *spatial_shape)
    order = list(range(n_batch)) + [n_batch + j * n + i for i in range(n) for j in range(2)]
    return t.permute(order)


def _sandwich(a1: torch.Tensor, t: torch.Tensor, a2: torch.Tensor, pair: bool) -> torch.Tensor:
    """Σ_{a, a'} A1(s, a) t(a, a') A2(s', a'): (N1, P, P), (N1, N2, P, P), (N2, P, P) -> (N1, N2, P, P) (``pair``),
    or per example (N, P, P) each -> (N, P, P)."""
    if pair:
        return a1.unsqueeze(1) @ t @ a2.unsqueeze(0).transpose(-1, -2)
    return a1 @ t @ a2.transpose(-1, -2)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_{a, a'} a(a, a') b(a, a') over the two position axes, kept as (…, 1, 1)."""
    return (a * b).sum(dim=(-2, -1), keepdim=True)


def self_attention(k: Kernel, config: AttentionConfig, layer: str = "SelfAttention") -> Kernel:
    """The kernels of a self-attention layer's outputs (theory.md §4.10).

    With the embedded inputs' per-channel kernel K̃ = w_x K + w_e σ_e² R (R: :func:`positional_covariance`;
    K itself without positional embeddings) and K_v the values' inputs' (K̃ with ``val_pos_emb``, else K):

    - ``linear_scaling=True`` (logits Q Kᵀ / d_k with tied key and query weights): the logits converge to
      σ_Q σ_K K̃(x, x)(s, a), so each example's attention weights A = mechanism(σ_Q σ_K K̃(x, x)) are
      deterministic and K' = σ_O² σ_V² A1 K_v A2ᵀ + σ_b², Θ' = σ_O² σ_V² A1 Θ_v A2ᵀ + (W_V, W_O terms) + bias;
    - ``linear_scaling=False`` with the identity mechanism (logits Q Kᵀ / √d_k): the logits are Gaussian and
      K'(s, s') = (σ_Q σ_K σ_O σ_V)² K̃(s, s') Σ_{a,a'} K̃(a, a') K_v(a, a') + σ_b², Θ' by the product rule.

    Θ_v (Θ̃) is Θ plus the positional embeddings' own gradient term w_e σ_e² R (w_e R in the standard
    parameterization). In the standard parameterization each weight matrix M of fan-in n_M contributes
    n_M Π_{M' ≠ M} σ_{M'}² (·) unnormalised, as :func:`.transforms.weight_layer` (theory.md §4.4).
    """
    if not k.n_spatial:
        raise UnsupportedError(
            f"{layer} attends over positions, so its inputs need spatial axes (N, C, *spatial), e.g. (N, C, L) "
            f"for sequences; it got inputs without spatial axes."
        )
    if not k.full:
        raise UnsupportedError(
            f"{layer} mixes positions, so it needs the covariances between all pairs of positions; this kernel "
            "keeps only the diagonal. nk.kernel chooses the layout itself; when calling transforms directly, start "
            "from Kernel.from_inputs(..., diagonal_spatial=False)."
        )
    if k.channels != config.in_channels:
        raise ShapeError(
            f"{layer} expects {config.in_channels} input channels, but its inputs have {k.channels}; the network "
            "could not run on these inputs. Make the sizes agree."
        )
    if config.input_size is not None and tuple(k.spatial_shape) != config.input_size:
        raise ShapeError(
            f"{layer} was built for inputs of spatial shape {config.input_size} (its positional embeddings), but "
            f"its inputs have spatial shape {tuple(k.spatial_shape)}."
        )
    if not config.linear_scaling and config.mechanism != "identity":
        raise UnsupportedError(
            f"{layer}: mechanism={config.mechanism!r} with linear_scaling=False has no closed-form kernel (the "
            "logits stay random, and E[mechanism(G) ⊗ mechanism(G)] has no known closed form); use "
            "linear_scaling=True or mechanism='identity'. " + _MONTE_CARLO_HINT
        )
    ntk_param = config.parameterization == "ntk"
    if k.ntk is not None and k.parameterization not in (None, config.parameterization):
        raise UnsupportedError(
            f"this network mixes {k.parameterization!r} and {config.parameterization!r} parameterizations; their "
            "NTKs scale differently with the width, so use one parameterization for every layer (or get='nngp')."
        )

    n = k.n_spatial
    nngp, cov = _to_matrix(k.nngp, n), _to_matrix(k.cov, n)
    ntk = None
    if k.ntk is not None:
        ntk = _to_matrix(k.ntk, n) if k.ntk.ndim else torch.zeros_like(nngp)

    # Inputs of the keys/queries (K̃, Θ̃) and of the values (K_v, Θ_v).
    keys_nngp, keys_cov, keys_ntk = nngp, cov, ntk
    masked = None if k.mask is None else k.mask.flatten(1)  # (N, P): the embeddings are zero there too
    if config.pos_emb != "none":
        w_x, w_e = config.mixing_weights()
        r = positional_covariance(
            k.spatial_shape, config.pos_emb_decay_fn, config.pos_emb_p_norm, dtype=cov.dtype, device=cov.device
        )
        r_pair, r_own = r, r
        if masked is not None:
            keep = (~masked).to(r.dtype)
            keep1, keep2 = k.split(keep)
            r_pair = r * keep1[:, None, :, None] * keep2[None, :, None, :]
            r_own = r * keep[:, :, None] * keep[:, None, :]
        emb_var = config.W_pos_emb_std**2
        keys_nngp, keys_cov = w_x * nngp + w_e * emb_var * r_pair, w_x * cov + w_e * emb_var * r_own
        if ntk is not None:
            keys_ntk = w_x * ntk + w_e * (emb_var if ntk_param else 1.0) * r_pair
    if config.val_pos_emb:
        val_nngp, val_cov, val_ntk = keys_nngp, keys_cov, keys_ntk
    else:
        val_nngp, val_cov, val_ntk = nngp, cov, ntk

    stds = {"value": config.W_value_std, "out": config.W_out_std}
    fans = {"value": config.value_in_channels, "out": config.n_heads * config.value_channels}
    if config.linear_scaling:
        weights = _attention_weights(config, keys_cov, masked)
        a1, a2 = k.split(weights)
        base_nngp = _sandwich(a1, val_nngp, a2, pair=True)
        base_cov = _sandwich(weights, val_cov, weights, pair=False)
        upstream = None if val_ntk is None else _sandwich(a1, val_ntk, a2, pair=True)  # None exactly when ntk is
    else:  # identity mechanism, logits scaled by 1/√d_k
        stds |= {"query": config.W_query_std, "key": config.W_key_std}
        fans |= {"query": config.key_in_channels, "key": config.key_in_channels}
        dot = _dot(keys_nngp, val_nngp)
        base_nngp, base_cov = keys_nngp * dot, keys_cov * _dot(keys_cov, val_cov)
        upstream = None
        if keys_ntk is not None and val_ntk is not None:  # exactly when ntk is not None
            upstream = keys_ntk * dot + keys_nngp * (_dot(keys_ntk, val_nngp) + _dot(keys_nngp, val_ntk))

    path_var = math.prod(s**2 for s in stds.values())
    b_var = 0.0 if config.b_std is None else config.b_std**2
    out_nngp = path_var * base_nngp + b_var
    out_cov = path_var * base_cov + b_var
    out_ntk = None
    sp_width = k.sp_width
    if upstream is not None:  # exactly when ntk is not None
        # Each weight matrix's own gradient: Π of the other matrices' variances times its variance ("ntk") or
        # its fan-in ("standard"), times the path's kernel without variances.
        own = sum(
            math.prod(s**2 for other, s in stds.items() if other != name) * (stds[name] ** 2 if ntk_param else fan)
            for name, fan in fans.items()
        )
        bias = 0.0 if config.b_std is None else (b_var if ntk_param else 1.0)
        out_ntk = path_var * upstream + own * base_nngp + bias
        if not ntk_param:
            hidden, input_fed = sp_width
            reads_input = max(fan for name, fan in fans.items() if name != "out")
            hidden = max(hidden, fans["out"], 0 if k.is_input else reads_input)
            sp_width = (hidden, max(input_fed, reads_input) if k.is_input else input_fed)
    if k.x1_is_x2:  # an example's own entry is its variance exactly (the pair and per-example forms round apart)
        out_nngp = torch.diagonal_scatter(out_nngp, out_cov.movedim(0, -1), dim1=0, dim2=1)

    shape = tuple(k.spatial_shape)
    return k.weight_output(
        nngp=_from_matrix(out_nngp, shape),
        ntk=None if out_ntk is None else _from_matrix(out_ntk, shape),
        cov=_from_matrix(out_cov, shape),
        channels=config.out_channels,
        parameterization=config.parameterization if k.ntk is not None else k.parameterization,
        sp_width=sp_width,
    )


def _attention_weights(config: AttentionConfig, keys_cov: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
    """(N, P, P) A(s, a) = mechanism(σ_Q σ_K K̃(x, x)(s, a)) per example (softmax over the keys a); masked keys
    (``masked``: (N, P)) get no weight."""
    logits = (config.W_query_std * config.W_key_std) * keys_cov
    return apply_mechanism(config.mechanism, logits, None if masked is None else masked[:, None, :])


def apply_mechanism(mechanism: str, logits: torch.Tensor, masked_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Attention weights from logits (…, P, P'): softmax over the keys (last axis), or elementwise; keys where
    ``masked_keys`` (broadcastable, True = masked) is True get weight 0 (all of them masked: uniform softmax)."""
    if masked_keys is not None:
        fill = torch.finfo(logits.dtype).min if mechanism == "softmax" else 0.0
        logits = logits.masked_fill(masked_keys, fill)
    if mechanism == "softmax":
        return torch.softmax(logits, dim=-1)
    if mechanism == "abs":
        return logits.abs()
    if mechanism == "relu":
        return torch.relu(logits)
    return logits
