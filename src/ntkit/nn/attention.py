"""``SelfAttention``: global multi-head dot-product self-attention over the positions of (N, C, *S) inputs,
with optional positional embeddings, in either parameterization, and its infinite-width kernel map."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._validation import as_tuple, check_number, check_positive_int, check_std
from ..errors import InvalidArgumentError, ShapeError
from ..infinite import attention
from ..infinite.kernel_type import Kernel
from .layer import PARAMETERIZATIONS, KernelLayer

__all__ = ["SelfAttention"]


class SelfAttention(KernelLayer):
    """Global self-attention, neural-tangents' ``GlobalSelfAttention`` (channels first): (N, C, *S) -> (N, out, *S).

    With inputs x at positions s (flattened, P = |S|), per head h:

        keys K_h = x̃ W_K,h,   queries Q_h = x̃ W_Q,h (= K_h, tied, when ``linear_scaling``),   values V_h = x_v W_V,h,
        G_h = Q_h K_hᵀ · σ_Q σ_K / (C̃ · d_k)   (``linear_scaling``; else / (C̃ · √d_k)),
        A_h = mechanism(G_h)   (softmax over the keys; or identity, abs, relu elementwise),
        y = concat_h(A_h V_h) W_O · σ_O σ_V / √(n_heads d_v C_v) + σ_b b,

    where x̃ is x with the positional embeddings E (``pos_emb="sum"``: x + σ_e E; ``"concat"``: [x, σ_e E] along
    channels, C̃ = C + C_e) and x_v = x̃ with ``val_pos_emb`` else x. The scales are the NTK parameterization
    (all weights and E ~ N(0, 1) are the trainable variables); ``parameterization="standard"`` draws
    W ~ N(0, σ²/fan_in), E ~ N(0, σ_e²) and b ~ N(0, σ_b²) instead and uses only the logit scale 1/d_k (1/√d_k),
    with the tied key matrix drawn N(0, 1/C̃) and the logits multiplied by σ_Q σ_K. E is a trainable parameter of
    shape (C_e, *input_size), drawn with covariance R over positions (``pos_emb_decay_fn``, below).

    Args:
        in_channels, out_channels: C and the output channels.
        key_channels, value_channels: d_k and d_v per head; ``n_heads``: the number of heads.
        linear_scaling: logits scaled by 1/d_k with tied key and query weights (closed-form kernel for every
            mechanism), or by 1/√d_k with independent ones (closed form only for ``mechanism="identity"``).
        mechanism: "softmax", "identity", "abs" or "relu".
        W_query_std, W_key_std, W_value_std, W_out_std, b_std: the standard deviations (``b_std=None``: no bias,
            neural-tangents' default).
        pos_emb: "none", "sum" or "concat"; ``pos_emb_channels``: C_e (default C; "sum" needs C_e = C);
            ``W_pos_emb_std``: σ_e; ``val_pos_emb``: embeddings in the values too; ``input_size``: the spatial
            shape S the embeddings are built for (required with embeddings).
        pos_emb_decay_fn, pos_emb_p_norm: R(s, s') = decay_fn(Σ_i |s_i − s'_i|^p) (a function of a tensor, e.g.
            ``lambda d: 1 / (1 + d)``); None: R = identity (independent embeddings per position).

    Kernel (``ntkit.infinite.attention.self_attention``, theory.md §4.10): as d_k, d_v, n_heads and C → ∞, with
    linear scaling the attention weights of each example become deterministic, A = mechanism(σ_Q σ_K K̃(x, x)),
    and K' = σ_O² σ_V² A K_v Aᵀ + σ_b²; with 1/√d_k scaling and the identity the logits are Gaussian and
    K'(s, s') = (σ_Q σ_K σ_O σ_V)² K̃(s, s') Σ_{a,a'} K̃(a, a') K_v(a, a') + σ_b². Softmax, abs or relu with
    ``linear_scaling=False`` have no closed form: ``nk.kernel`` raises ``UnsupportedError``.
    """

    mixes_positions = True
    mask_rule = "elementwise"  # the mask is kept; the map gives masked keys no weight

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        key_channels: int,
        value_channels: int,
        n_heads: int = 1,
        linear_scaling: bool = True,
        mechanism: str = "softmax",
        W_query_std: attention.Std = 1.0,
        W_key_std: attention.Std = 1.0,
        W_value_std: attention.Std = 1.0,
        W_out_std: attention.Std = 1.0,
        b_std: attention.Std | None = None,
        pos_emb: str = "none",
        pos_emb_channels: int | None = None,
        W_pos_emb_std: attention.Std = 1.0,
        pos_emb_decay_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        pos_emb_p_norm: float = 2.0,
        val_pos_emb: bool = False,
        input_size: int | tuple[int, ...] | None = None,
        parameterization: str = "ntk",
    ) -> None:
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise InvalidArgumentError(f"parameterization must be 'ntk' or 'standard', got {parameterization!r}.")
        if mechanism not in attention.MECHANISMS:
            raise InvalidArgumentError(f"mechanism must be one of {attention.MECHANISMS}, got {mechanism!r}.")
        if pos_emb not in attention.POSITIONAL_EMBEDDINGS:
            raise InvalidArgumentError(f"pos_emb must be one of {attention.POSITIONAL_EMBEDDINGS}, got {pos_emb!r}.")
        for name, std in (
            ("W_query_std", W_query_std),
            ("W_key_std", W_key_std),
            ("W_value_std", W_value_std),
            ("W_out_std", W_out_std),
            ("W_pos_emb_std", W_pos_emb_std),
        ):
            check_std(std, name)
        check_std(b_std, "b_std", allow_none=True)
        check_positive_int(in_channels, "in_channels")
        channels_e = check_positive_int(pos_emb_channels, "pos_emb_channels", allow_none=True) or in_channels
        if pos_emb == "sum" and channels_e != in_channels:
            raise InvalidArgumentError(
                f"pos_emb='sum' adds the embeddings to the inputs, so pos_emb_channels must be in_channels "
                f"({in_channels}) or None, got {pos_emb_channels}; use pos_emb='concat' for other sizes."
            )
        size = None
        if pos_emb != "none":
            if input_size is None:
                raise InvalidArgumentError(
                    f"pos_emb={pos_emb!r} needs input_size, the spatial shape of the inputs (e.g. the sequence "
                    "length), to build the positional embeddings."
                )
            size = as_tuple(input_size, len(input_size) if isinstance(input_size, tuple) else 1, "input_size")
        if pos_emb_decay_fn is not None and not callable(pos_emb_decay_fn):
            raise InvalidArgumentError(
                f"pos_emb_decay_fn must be a function of a tensor or None, got {pos_emb_decay_fn!r}."
            )
        self.config = attention.AttentionConfig(
            in_channels=in_channels,
            out_channels=check_positive_int(out_channels, "out_channels"),
            key_channels=check_positive_int(key_channels, "key_channels"),
            value_channels=check_positive_int(value_channels, "value_channels"),
            n_heads=check_positive_int(n_heads, "n_heads"),
            mechanism=mechanism,
            linear_scaling=bool(linear_scaling),
            W_query_std=W_query_std,
            W_key_std=W_key_std,
            W_value_std=W_value_std,
            W_out_std=W_out_std,
            b_std=b_std,
            pos_emb=pos_emb,
            pos_emb_channels=channels_e if pos_emb != "none" else 0,
            W_pos_emb_std=W_pos_emb_std,
            pos_emb_decay_fn=pos_emb_decay_fn,
            pos_emb_p_norm=check_number(pos_emb_p_norm, "pos_emb_p_norm", minimum=0.0, inclusive=False),
            val_pos_emb=bool(val_pos_emb) and pos_emb != "none",
            input_size=size,
            parameterization=parameterization,
        )
        c = self.config
        heads, d_k, d_v = c.n_heads, c.key_channels, c.value_channels
        self.weight_key = nn.Parameter(torch.empty(heads, d_k, c.key_in_channels))
        self.weight_query = None if c.linear_scaling else nn.Parameter(torch.empty(heads, d_k, c.key_in_channels))
        self.weight_value = nn.Parameter(torch.empty(heads, d_v, c.value_in_channels))
        self.weight_out = nn.Parameter(torch.empty(c.out_channels, heads * d_v))
        self.bias = None if b_std is None else nn.Parameter(torch.empty(c.out_channels))
        self.pos_emb = None if size is None else nn.Parameter(torch.empty(c.pos_emb_channels, *size))
        # L with L Lᵀ = R (pos_emb_decay_fn); None if R is not positive definite (only the kernel works then).
        self._emb_factor: torch.Tensor | None
        factor = None
        if size is not None and pos_emb_decay_fn is not None:
            r = attention.positional_covariance(size, pos_emb_decay_fn, c.pos_emb_p_norm)
            lower, info = torch.linalg.cholesky_ex(r)
            factor = None if int(info) else lower.to(torch.get_default_dtype())
        self.register_buffer("_emb_factor", factor, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every parameter as the parameterization says (see the class docstring)."""
        c = self.config
        standard = c.parameterization == "standard"
        with torch.no_grad():
            draws: list[tuple[nn.Parameter | None, float]] = [
                (self.weight_key, (1.0 if c.linear_scaling else float(c.W_key_std)) / math.sqrt(c.key_in_channels)),
                (self.weight_query, float(c.W_query_std) / math.sqrt(c.key_in_channels)),
                (self.weight_value, float(c.W_value_std) / math.sqrt(c.value_in_channels)),
                (self.weight_out, float(c.W_out_std) / math.sqrt(c.n_heads * c.value_channels)),
                (self.bias, 0.0 if c.b_std is None else float(c.b_std)),
                (self.pos_emb, float(c.W_pos_emb_std)),
            ]
            for param, std in draws:
                if param is not None:
                    param.normal_(0.0, std if standard else 1.0)

    def _embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """(C_e, P) the positional embeddings σ_e L E (NTK) or L E (standard), L Lᵀ = R."""
        c = self.config
        assert self.pos_emb is not None
        e = self.pos_emb.flatten(1)
        if c.pos_emb_decay_fn is not None:
            if self._emb_factor is None:
                raise InvalidArgumentError(
                    f"pos_emb_decay_fn gives a positional covariance that is not positive definite on "
                    f"{c.input_size}, so the finite layer cannot draw embeddings with it (the kernel does not "
                    "need them: nk.kernel still works)."
                )
            e = e @ self._emb_factor.to(e).T
        return e if c.parameterization == "standard" else c.W_pos_emb_std * e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim < 3 or x.shape[1] != c.in_channels:
            raise ShapeError(
                f"SelfAttention expects inputs (N, {c.in_channels}, *spatial), got shape {tuple(x.shape)}."
            )
        if c.input_size is not None and tuple(x.shape[2:]) != c.input_size:
            raise ShapeError(
                f"SelfAttention was built for spatial shape {c.input_size}, got inputs of shape {tuple(x.shape)}."
            )
        standard = c.parameterization == "standard"
        flat = x.flatten(2)  # (N, C, P)
        keys_in = flat
        if self.pos_emb is not None:
            e = self._embeddings(x).to(flat)
            keys_in = flat + e if c.pos_emb == "sum" else torch.cat([flat, e.expand(flat.shape[0], -1, -1)], 1)
        values_in = keys_in if c.val_pos_emb else flat
        keys = torch.einsum("hdc,ncp->nhpd", self.weight_key, keys_in)
        queries = keys if self.weight_query is None else torch.einsum("hdc,ncp->nhpd", self.weight_query, keys_in)
        d_k = c.key_channels if c.linear_scaling else math.sqrt(c.key_channels)
        if standard:
            scale = (c.W_query_std * c.W_key_std if c.linear_scaling else 1.0) / d_k
        else:
            scale = c.W_query_std * c.W_key_std / (c.key_in_channels * d_k)
        weights = attention.apply_mechanism(c.mechanism, (queries @ keys.transpose(-1, -2)) * scale)
        values = torch.einsum("hdc,ncp->nhpd", self.weight_value, values_in)
        heads = (weights @ values).permute(0, 2, 1, 3).flatten(2)  # (N, P, n_heads d_v)
        y = heads @ self.weight_out.T
        if not standard:
            y = y * (c.W_out_std * c.W_value_std / math.sqrt(c.n_heads * c.value_channels * c.value_in_channels))
        if self.bias is not None and c.b_std is not None:
            y = y + (self.bias if standard else c.b_std * self.bias)
        return y.transpose(1, 2).reshape(x.shape[0], c.out_channels, *x.shape[2:])

    def kernel_transform(self, k: Kernel) -> Kernel:
        return attention.self_attention(k, self.config, layer=repr(self))

    def extra_repr(self) -> str:
        c = self.config
        parts = [
            f"{c.in_channels}, {c.out_channels}",
            f"key_channels={c.key_channels}",
            f"value_channels={c.value_channels}",
            f"n_heads={c.n_heads}",
            f"linear_scaling={c.linear_scaling}",
            f"mechanism={c.mechanism!r}",
        ]
        if c.pos_emb != "none":
            parts += [f"pos_emb={c.pos_emb!r}", f"input_size={c.input_size}", f"val_pos_emb={c.val_pos_emb}"]
        return ", ".join([*parts, f"parameterization={c.parameterization!r}"])
