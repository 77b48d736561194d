"""How each kind of layer maps the kernels of its inputs to those of its outputs (theory.md §4).

Pure functions ``Kernel -> Kernel`` (fan-in combinators: several kernels -> one). The ``ntkit.nn`` layers and
the registry of plain PyTorch layers both call these, so each formula is written once. Every map applies to
the pair kernel (N1, N2, *R) and to the per-example covariances (N, *R) alike (see ``spatial``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ShapeError, UnsupportedError
from ..gaussian.activations import Activation
from ..gaussian.functions import GaussianFunction
from ..gaussian.stable import safe_sqrt
from . import spatial
from .conv_chain import ConvStep, PoolStep, ReduceStep
from .dense_chain import ArcCosineStep, DenseStep, record_step
from .kernel_type import KERNEL_TEMPORARIES, Kernel, note_working_set, pair_entries

__all__ = [
    "ConvGeometry",
    "activation",
    "conv_geometry",
    "dropout",
    "elementwise",
    "exp_normalized",
    "fan_in_concat",
    "fan_in_concat_spatial",
    "fan_in_product",
    "fan_in_sum",
    "flatten",
    "global_pool",
    "graph_aggregation",
    "layer_norm",
    "pool",
    "separable_linear",
    "transposed_conv_geometry",
    "unshared",
    "weight_layer",
]

_MONTE_CARLO_HINT = "Estimate the kernel of such a network with nk.monte_carlo_kernel instead."

#: Extra kernel-sized temporaries while a quadrature runs (the node arrays are chunked by ntkit.gaussian.quadrature
#: under the memory budget; this covers the chunk in flight and the sums of cross terms).
QUADRATURE_TEMPORARIES = 32


@dataclass(frozen=True)
class ConvGeometry:
    """Filter (or window) size, stride, (before, after) padding and dilation per spatial axis, and whether
    padding wraps around."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    circular: bool = False
    dilation: tuple[int, ...] | None = None
    input_dilation: tuple[int, ...] | None = None  # transposed convolutions: zeros inserted between inputs
    wrap: tuple[int, ...] | None = None  # circular transposed convolutions: output sizes the result wraps onto

    @property
    def receptive_field(self) -> int:
        return math.prod(self.kernel_size)

    def dilation_of(self, i: int) -> int:
        return 1 if self.dilation is None else self.dilation[i]


def conv_geometry(
    k: Kernel,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: str | int | tuple[int, ...],
    *,
    circular: bool,
    dilation: tuple[int, ...] | None = None,
    layer: str = "convolution",
) -> ConvGeometry:
    """The geometry of a convolution (or pooling ``layer``) applied to ``k`` (padding resolved for its shape)."""
    if len(kernel_size) != k.n_spatial:
        raise UnsupportedError(
            f"a {len(kernel_size)}-d {layer} got inputs with {k.n_spatial} spatial axes "
            f"{k.spatial_shape}; inputs are (N, C, *spatial), channels first."
        )
    pads = spatial.conv_paddings(k.spatial_shape, kernel_size, stride, padding, dilation)
    spans = tuple(d * (f - 1) + 1 for f, d in zip(kernel_size, dilation or (1,) * len(kernel_size), strict=True))
    _check_window(
        k, spans, [sum(p) for p in pads], f"a {layer}'s filter" if layer == "convolution" else f"a {layer} window"
    )
    if circular and any(max(p) > n for p, n in zip(pads, k.spatial_shape, strict=True)):
        raise UnsupportedError(
            f"circular padding {pads} of a {layer} is larger than the input's spatial shape {k.spatial_shape}."
        )
    return ConvGeometry(
        tuple(kernel_size), tuple(stride), pads, circular, None if dilation is None else tuple(dilation)
    )


def _check_window(k: Kernel, window: tuple[int, ...], padding: list[int], what: str) -> None:
    """Raise ShapeError if a window (filter, pooling) is larger than the padded input along some axis."""
    for axis, (size, w, pad) in enumerate(zip(k.spatial_shape, window, padding, strict=True)):
        if w > size + pad:
            raise ShapeError(
                f"{what} of size {tuple(window)} is larger than its input of spatial shape {k.spatial_shape} "
                f"(axis {axis}: {w} > {size}" + (f" + {pad} padding" if pad else "") + "), so there is no output "
                "position. Use a smaller window, padding, or larger inputs."
            )


def transposed_conv_geometry(
    k: Kernel, kernel_size: tuple[int, ...], stride: tuple[int, ...], padding: str | int, *, circular: bool = False
) -> ConvGeometry:
    """A transposed convolution as the convolution (stride 1) of its input dilated by ``stride`` (zeros
    inserted between positions) and padded by :func:`spatial.transpose_padding` on each axis. ``circular``
    (with ``padding="same"``): the "valid" result wrapped around onto the n·stride "same" positions
    (:func:`spatial.wrap_around`)."""
    if len(kernel_size) != k.n_spatial:
        raise UnsupportedError(
            f"a {len(kernel_size)}-d transposed convolution got inputs with {k.n_spatial} spatial axes "
            f"{k.spatial_shape}; inputs are (N, C, *spatial), channels first."
        )
    pads = tuple(
        spatial.transpose_padding(f, s, "valid" if circular else padding)
        for f, s in zip(kernel_size, stride, strict=True)
    )
    wrap = tuple(n * s for n, s in zip(k.spatial_shape, stride, strict=True)) if circular else None
    return ConvGeometry(tuple(kernel_size), (1,) * k.n_spatial, pads, input_dilation=tuple(stride), wrap=wrap)


def weight_layer(
    k: Kernel,
    *,
    W_var: float | torch.Tensor,
    b_var: float | torch.Tensor | None,
    parameterization: str,
    in_channels: int,
    out_channels: int,
    geometry: ConvGeometry | None = None,
    layer: str = "a weight layer",
    s_in: int = 1,
) -> Kernel:
    """A dense layer (``geometry=None``) or a convolution, weights W_std²/fan_in and bias b_std² (theory.md §4.1, §4.5):

        K' = W_var · C(K) + b_var,    C = the mean over filter offsets of the shifted kernel (``spatial.shifted_sum``)
        "ntk":      Θ' = K' + W_var · C(Θ)
        "standard": Θ' = (in_channels / s_in) · |filter| · C(K) + [bias] + W_var · C(Θ)   (unnormalised: J Jᵀ; 4.4)

    ``s_in``: the standard parameterization's width multiplier of the inputs (theory.md §4.4): the layer reads
    ``in_channels`` = s_in · n channels but is normalised as if it read n. Layers of both parameterizations may be
    mixed: each adds its own term to Θ (theory.md §4.4). ``b_var=None``: no bias parameter. The output is a
    centred Gaussian, independent of other branches.
    ``layer`` names the layer in error messages (a layer whose ``in_channels`` differs from the channels of
    its inputs raises :class:`ShapeError`: the finite network could not run).
    """
    if k.channels != in_channels:
        kind = "input features" if geometry is None else "input channels"
        raise ShapeError(
            f"{layer} expects {in_channels} {kind}, but its inputs have {k.channels} (the input data or the "
            "layer before it); the network could not run on these inputs. Make the sizes agree."
        )
    if geometry is None and k.n_spatial:
        raise UnsupportedError(
            f"a dense (Linear) layer got inputs with spatial axes {k.spatial_shape}; ntkit's Linear, like "
            "torch.nn.Linear, acts on (N, features) inputs. Add Flatten() or GlobalAvgPool() before it."
        )

    def conv(t: torch.Tensor) -> torch.Tensor:
        """Σ over filter offsets of the shifted kernel (``spatial.shifted_sum`` on each spatial axis)."""
        if geometry is None or t.ndim == 0:
            return t
        copies = 2 if k.full else 1
        if geometry.input_dilation is not None:
            t = spatial.dilate_trailing(t, [f for f in geometry.input_dilation for _ in range(copies)])
        per_axis = [geometry.padding[i] for i in range(k.n_spatial) for _ in range(copies)]
        t = spatial.pad_trailing(t, per_axis, geometry.circular)
        for i in range(k.n_spatial):
            axes = spatial.spatial_axes(k.n_spatial, i, k.full)
            t = spatial.shifted_sum(t, axes, geometry.kernel_size[i], geometry.stride[i], geometry.dilation_of(i))
            if geometry.wrap is not None:
                # Positions that wrap onto one another use different filter offsets (independent weights), so
                # in the diagonal layout folding the diagonal alone is exact.
                for axis in axes:
                    t = spatial.wrap_around(t, axis, geometry.wrap[i])
        return t

    mapped = k.map(conv)  # sums over the receptive field: W_var / |filter| turns them into the mean
    receptive = geometry.receptive_field if geometry else 1
    scale = W_var / receptive if receptive > 1 else W_var
    bias = 0.0 if b_var is None else b_var

    def affine(t: torch.Tensor) -> torch.Tensor:
        return (t * scale).add_(bias)  # in place on the fresh product

    nngp = affine(mapped["nngp"])
    ntk = None
    sp_width = k.sp_width
    ntk_in = mapped["ntk"]  # None exactly when k.ntk is
    if ntk_in is not None:
        if parameterization == "ntk":
            # one pass when the scale is a number
            ntk = torch.add(nngp, ntk_in, alpha=scale) if isinstance(scale, float) else nngp + scale * ntk_in
        else:
            width = in_channels // s_in
            ntk = width * mapped["nngp"] + (0.0 if b_var is None else 1.0) + scale * ntk_in
            hidden, input_fed = sp_width
            sp_width = (hidden, max(input_fed, width)) if k.is_input else (max(hidden, width), input_fed)
    spatial_shape = tuple(mapped["cov"].shape[1:][:: 2 if k.full else 1]) if k.n_spatial else ()
    out = k.weight_output(
        nngp=nngp,
        ntk=ntk,
        cov=affine(mapped["cov"]),
        spatial_shape=spatial_shape,
        channels=out_channels,
        parameterization=_joined(k.parameterization, parameterization) if k.ntk is not None else k.parameterization,
        sp_width=sp_width,
    )
    if isinstance(W_var, torch.Tensor) or isinstance(b_var, torch.Tensor):
        return out  # tensor variances (kernels differentiable in them): no fast-path step, the generic path runs
    if geometry is None:
        record_step(k, out, DenseStep(W_var, b_var, parameterization, in_channels // s_in))
    elif not geometry.circular and geometry.input_dilation is None:
        dilation = geometry.dilation or (1,) * k.n_spatial
        record_step(
            k,
            out,
            ConvStep(
                geometry.kernel_size,
                geometry.stride,
                geometry.padding,
                dilation,
                W_var,
                b_var,
                parameterization,
                in_channels // s_in,
            ),
        )
    return out


def unshared(k: Kernel) -> Kernel:
    """The layer ``k`` computed by a weight layer whose weights differ at every output position (locally
    connected): outputs at different positions are independent, so K, Θ and the per-example covariances
    vanish off the spatial diagonal (nothing changes in the diagonal layout)."""
    if not k.full:
        return k
    return k.replace(**k.map(lambda t: t if t.ndim == 0 else t * _spatial_diagonal_mask(k, t)))


def activation(k: Kernel, act: Activation) -> Kernel:
    """φ applied to the layer: its outputs are φ(u) for the last Gaussian u, or φ(ψ(u)) after other
    elementwise functions of u (two activations in a row; a residual sum of u and φ(u))."""
    if k.is_gaussian:
        out = elementwise(k, GaussianFunction((act,)))
        slopes = act.arc_cosine_slopes
        if slopes is not None:
            a, b = slopes
            record_step(k, out, ArcCosineStep(a**2 + b**2, 2 * a * b))
        return out
    if k.source is not None and k.fn is not None:  # set together
        return elementwise(k.source, k.fn.then(act))
    if k.is_input:
        raise UnsupportedError(
            f"{type(act).__name__} is applied to the network input, which is not random: apply it to the data "
            "before computing the kernel, or start the network with a Linear or convolution layer."
        )
    raise UnsupportedError(
        f"{type(act).__name__} gets inputs that are neither Gaussian nor an elementwise function of a Gaussian "
        "layer (for example after pooling, flattening, dropout, concatenation or layer normalisation of "
        "activations, or a sum with an independent branch), so its kernel has no closed form. Put a Linear or "
        "convolution layer before it. " + _MONTE_CARLO_HINT
    )


def elementwise(g: Kernel, psi: GaussianFunction) -> Kernel:
    """The kernels of ψ(u) for u the Gaussian layer ``g`` (theory.md §4.2):

    K' = E[ψ(u) ψ(v)],   Θ' = Θ_g · E[ψ'(u) ψ'(v)],   mean = E[ψ(u)],   (u, v) ~ N(0, Λ_g).
    """
    d = g.variances()
    v1, v2 = spatial.pair_broadcast(*g.split(d), g.full)
    if psi.uses_quadrature:
        note_working_set(pair_entries(g.nngp) * (KERNEL_TEMPORARIES + QUADRATURE_TEMPORARIES))
    a, b = spatial.self_broadcast(d, g.full)
    if g.nngp.is_meta:
        # The dry run of a full spatial layout runs on the meta device, which has shapes but no values, and
        # quadrature places its nodes and checks its accuracy by the values: only the shapes (and whether
        # derivatives are tracked) are needed here, so the results are placeholders built from the inputs.
        nngp = v1 + g.nngp + v2
        return g.replace(
            nngp=nngp,
            ntk=None if g.ntk is None else nngp + g.ntk,
            cov=a + g.cov + b,
            is_gaussian=False,
            is_input=False,
            mean=d.clone(),
            source=g,
            fn=psi,
        )
    if g.ntk is None:
        nngp, ntk = psi.nngp(v1, g.nngp, v2), None
    else:
        nngp, ntk = psi.nngp_and_ntk(v1, g.nngp, v2, g.ntk)
    cov = psi.nngp(a, g.cov, b)
    if g.x1_is_x2:
        # K(x_i, x_i) must equal the variance exactly: transcendental functions may round differently on a
        # vector and on a matrix, and a correlation off 1 by one ulp moves arc-cosines by √eps downstream.
        nngp = torch.diagonal_scatter(nngp, cov.movedim(0, -1), dim1=0, dim2=1)
    return g.replace(
        nngp=nngp,
        ntk=ntk,
        cov=cov,
        is_gaussian=False,
        is_input=False,
        mean=psi.mean(d),
        source=g,
        fn=psi,
    )


def exp_normalized(k: Kernel, *, gamma: float, shift: float) -> Kernel:
    """neural-tangents' ExpNormalized of a Gaussian layer (:class:`ntkit.nn.ExpNormalized`, theory.md §4.2): with
    v = K(x, x), ρ = K(x, x')/√(v v') clipped to [−1, 1] and e = exp(γ (ρ + shift)),

        K' = √(v v') · e,    Θ' = γ · Θ · e,    mean = √v · exp(γ shift / 2).
    """
    if not k.is_gaussian:
        raise UnsupportedError(
            "ExpNormalized needs a Gaussian layer (the output of a Linear or convolution layer, or a sum of such): "
            "its finite layer's kernel is the closed form only for Gaussian inputs. " + _MONTE_CARLO_HINT
        )
    d = k.variances()

    def normalised(t: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = safe_sqrt(p * q)
        rho = torch.where(scale > 0, t / torch.where(scale > 0, scale, torch.ones_like(scale)), 0.0)
        e = torch.exp(gamma * (rho.clamp(-1.0, 1.0) + shift))
        return scale * e, e

    nngp, e12 = normalised(k.nngp, *spatial.pair_broadcast(*k.split(d), k.full))
    cov, _ = normalised(k.cov, *spatial.self_broadcast(d, k.full))
    if k.x1_is_x2:  # K(x_i, x_i) equals the variance exactly (as ``elementwise``)
        nngp = torch.diagonal_scatter(nngp, cov.movedim(0, -1), dim1=0, dim2=1)
    return k.replace(
        nngp=nngp,
        ntk=None if k.ntk is None else gamma * k.ntk * e12,
        cov=cov,
        is_gaussian=False,
        is_input=False,
        mean=safe_sqrt(d) * math.exp(gamma * shift / 2),
        source=None,
        fn=None,
    )


def layer_norm(k: Kernel, *, eps: float, affine: str | None = None, n_axes: int = 0) -> Kernel:
    """Normalisation over the channels and the last ``n_axes`` spatial axes A of each example (0: over channels
    at each position), y = (x − μ) / √(σ² + eps) with μ, σ² the mean and variance over channels and A.

    In the limit these statistics are deterministic per example: with the channel means m(s) = ``mean`` and
    variances d(s) = K(x, x)(s), μ = mean_A m and σ² = mean_A d − μ². So y is an affine map of x per example:

        K'(s, s') = (K(s, s') − μ m'(s') − m(s) μ' + μ μ') · r r',   r = 1/√(σ² + eps),   mean' = (m − μ)·r,
        Θ'(s, s') = Θ(s, s') · r r'  (+ (K' + 1) from the affine parameters: ``affine="channel"`` one γ, β per
        channel, shared by all positions; ``"position"`` one per channel and position of A, as
        torch.nn.LayerNorm([C, H, W]), so only equal positions along A share them).

    With n_axes = 0, μ = m and K' = (K − m m') r r'. Inputs that are not Gaussian (after a nonlinearity) only
    need their means, so this works anywhere (neural-tangents: Gaussian inputs only). Masked positions
    (``k.mask``) are left out of the means over A.
    """
    d = k.variances()
    m = torch.zeros_like(d) if k.mean is None else k.mean
    if n_axes:  # means over A; with masked positions (``k.mask``) over the unmasked ones (neural-tangents)
        dims = tuple(range(-n_axes, 0))
        weights = torch.ones_like(d) if k.mask is None else (~k.mask).to(d.dtype)
        counts = weights.sum(dim=dims, keepdim=True).clamp_min(1.0)

        def average(v: torch.Tensor) -> torch.Tensor:
            return ((v * weights).sum(dim=dims, keepdim=True) / counts).expand_as(v)

        mu = average(m)
        var = average(d) - mu * mu
    else:
        mu, var = m, d - m * m
    scale = _safe_rsqrt(var.clamp_min(0) + eps)  # r per example and position

    Broadcast = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

    def normalise(t: torch.Tensor, broadcast: Broadcast) -> torch.Tensor:
        (m_a, m_b), (mu_a, mu_b), (r_a, r_b) = (broadcast(v) for v in (m, mu, scale))
        return (t - (mu_a * m_b + m_a * mu_b - mu_a * mu_b)) * (r_a * r_b)

    def pair(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return spatial.pair_broadcast(*k.split(v), k.full)

    def own(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return spatial.self_broadcast(v, k.full)

    nngp = normalise(k.nngp, pair)
    ntk = None
    if k.ntk is not None:
        r1, r2 = pair(scale)
        ntk = k.ntk * (r1 * r2)
        if affine == "channel":
            ntk = ntk + nngp + 1.0
        elif affine == "position":
            ntk = ntk + torch.where(_spatial_diagonal_mask(k, nngp, last=n_axes), nngp + 1.0, 0.0)
    return k.replace(
        nngp=nngp,
        ntk=ntk,
        cov=normalise(k.cov, own),
        mean=(m - mu) * scale if n_axes else None,
        source=None,
        fn=None,
    )


def _safe_rsqrt(x: torch.Tensor) -> torch.Tensor:
    """1/√x, and 0 where x = 0 (a zero input normalises to zero)."""
    positive = x > 0
    return torch.where(positive, torch.rsqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def dropout(k: Kernel, p: float) -> Kernel:
    """Train-mode dropout y = x·m/(1 − p), m ~ Bernoulli(1 − p) per unit: an example's own variances scale by
    1/(1 − p) (one mask), covariances between different examples do not (independent masks). The same holds
    for Θ, the gradients being masked alike. "The same example" is the batch diagonal of an x2=None kernel,
    which ``nk.kernel`` also uses for x2 equal to x1 (neural-tangents' rule); equal rows at different positions
    are different examples."""
    factor = 1.0 / (1.0 - p)

    def scale_diagonal(t: torch.Tensor, batch_diagonal: bool) -> torch.Tensor:
        mask = _spatial_diagonal_mask(k, t)
        if batch_diagonal:
            n = t.shape[0]
            eye = torch.eye(n, dtype=torch.bool, device=t.device).reshape(n, n, *([1] * (t.ndim - 2)))
            mask = mask & eye
        return torch.where(mask, t * factor, t)

    same = k.x1_is_x2
    return k.replace(
        nngp=scale_diagonal(k.nngp, True) if same else k.nngp,
        ntk=None if k.ntk is None else (scale_diagonal(k.ntk, True) if same and k.ntk.ndim else k.ntk),
        cov=scale_diagonal(k.cov, False),
        is_gaussian=False,
        source=None,
        fn=None,
    )


def _spatial_diagonal_mask(k: Kernel, t: torch.Tensor, last: int | None = None) -> torch.Tensor:
    """True at the entries of ``t`` whose two positions coincide (all of them in the diagonal layout), along
    every spatial axis or only the ``last`` ones."""
    mask = torch.ones((), dtype=torch.bool, device=t.device)
    if not k.full:
        return mask
    first = 0 if last is None else k.n_spatial - last
    for i, size in enumerate(k.spatial_shape):
        if i < first:
            continue
        eye = torch.eye(size, dtype=torch.bool, device=t.device)
        shape = [1] * (2 * k.n_spatial)
        shape[2 * i : 2 * i + 2] = [size, size]
        mask = mask & eye.reshape(shape)
    return mask


def _require_full(k: Kernel, layer: str) -> None:
    if k.n_spatial and not k.full:
        raise UnsupportedError(
            f"{layer} mixes positions, so it needs the covariances between all pairs of positions; "
            "this kernel keeps only the diagonal (diagonal_spatial=True). nk.kernel chooses the layout "
            "itself; when calling transforms directly, start from Kernel.from_inputs(..., diagonal_spatial=False)."
        )


def pool(k: Kernel, geometry: ConvGeometry, divisor: str | float) -> Kernel:
    """Window pooling y(p) = Σ_{a ∈ window(p)} x(a) / c(p) along each spatial axis, with c(p) the window size
    (``divisor="window"``: padding counted, torch's default and neural-tangents' AvgPool), the number of input
    positions in the window (``"valid"``: torch's count_include_pad=False, neural-tangents' normalize_edges=True)
    or a constant (1.0: sum pooling). Being linear, it maps the kernel along each position axis separately:

        K'(p, p') = Σ_{a ∈ window(p)} Σ_{a' ∈ window(p')} K(a, a') / (c(p) c(p')).
    """
    _require_full(k, "pooling")
    n = k.n_spatial
    counts = [_window_counts(k, geometry, i) if divisor == "valid" else None for i in range(n)]
    constant = float(geometry.receptive_field if divisor == "window" else 1.0 if divisor == "valid" else divisor)

    def window_means(t: torch.Tensor, full: bool) -> torch.Tensor:
        if t.ndim == 0:
            return t
        copies = 2 if full else 1
        t = spatial.pad_trailing(t, [geometry.padding[i] for i in range(n) for _ in range(copies)], geometry.circular)
        for i in range(n):
            for axis in spatial.spatial_axes(n, i, full):
                t = spatial.shifted_sum(t, (axis,), geometry.kernel_size[i], geometry.stride[i])
                count = counts[i]
                if count is not None:
                    t = t / count.reshape((-1,) + (1,) * (-axis - 1))
        return t if constant == 1.0 else t / constant**copies

    fields = k.map(lambda t: window_means(t, True))
    out = k.replace(
        **fields,
        spatial_shape=tuple(fields["cov"].shape[1::2]),
        mean=None if k.mean is None else window_means(k.mean, False),
        source=None,
        fn=None,
    )
    if not geometry.circular:
        record_step(k, out, PoolStep(geometry.kernel_size, geometry.stride, geometry.padding, divisor))
    return out


def separable_linear(k: Kernel, matrices: tuple[torch.Tensor, ...], layer: str = "resizing") -> Kernel:
    """A fixed linear map of the positions, one (S_i', S_i) matrix A_i per spatial axis (resizing,
    interpolation): y(p) = Σ_s Π_i A_i(p_i, s_i) x(s), so along each position axis

        K'(p, p') = Σ_{s, s'} A(p, s) A(p', s') K(s, s'),   mean' = A m.
    """
    if len(matrices) != k.n_spatial:
        raise UnsupportedError(
            f"{len(matrices)}-d {layer} got inputs with {k.n_spatial} spatial axes {k.spatial_shape}."
        )
    _require_full(k, layer)

    def apply(t: torch.Tensor, full: bool) -> torch.Tensor:
        if t.ndim == 0:
            return t
        for i, a in enumerate(matrices):
            for axis in spatial.spatial_axes(k.n_spatial, i, full):
                t = torch.tensordot(t, a.to(t), dims=([t.ndim + axis], [1])).movedim(-1, axis)
        return t

    fields = k.map(lambda t: apply(t, True))
    return k.replace(
        **fields,
        spatial_shape=tuple(a.shape[0] for a in matrices),
        mean=None if k.mean is None else apply(k.mean, False),
        source=None,
        fn=None,
    )


def graph_aggregation(k: Kernel, adjacency: torch.Tensor, axes: tuple[int, ...]) -> Kernel:
    """Graph aggregation over the nodes at the positions of spatial ``axes`` (one axis, or several: a grid of
    nodes numbered row-major) with one (n, n) adjacency per example, ``adjacency`` (N1 + N2, n, n) ordered as
    ``cov`` (A[i, j] the weight of the edge i -> j): y_j = Σ_i A[i, j] x_i, so for examples a, b (theory.md
    §4.6, a linear map of the positions that depends on the example)

        K'_ab(j, j') = Σ_{i, i'} A_a[i, j] A_b[i', j'] K_ab(i, i'),   mean'_a(j) = Σ_i A_a[i, j] m_a(i).
    """
    _require_full(k, "graph aggregation")
    a1, a2 = k.split(adjacency)

    def aggregate(t: torch.Tensor, t_axes: list[int], a: torch.Tensor, batch: int) -> torch.Tensor:
        """Σ_i A_e[i, j] t[..., i, ...] over the node axes ``t_axes`` of t, e the example index on ``batch``."""
        tail = list(range(-len(t_axes), 0))
        moved = t.movedim(t_axes, tail)
        flat = moved.reshape(*moved.shape[: -len(t_axes)], -1)
        spec = "z...i,zij->z...j" if batch == 0 else "yz...i,zij->yz...j"
        return torch.einsum(spec, flat, a.to(t)).reshape(moved.shape).movedim(tail, t_axes)

    first = [spatial.spatial_axes(k.n_spatial, i, True)[0] for i in axes]
    second = [spatial.spatial_axes(k.n_spatial, i, True)[1] for i in axes]

    def both(t: torch.Tensor | None, left: torch.Tensor, right: torch.Tensor, pair: bool) -> torch.Tensor | None:
        if t is None or t.ndim == 0:
            return t
        return aggregate(aggregate(t, first, left, 0), second, right, 1 if pair else 0)

    mean_axes = [spatial.spatial_axes(k.n_spatial, i, False)[0] for i in axes]
    return k.replace(
        nngp=both(k.nngp, a1, a2, True),
        ntk=both(k.ntk, a1, a2, True),
        cov=both(k.cov, adjacency, adjacency, False),
        mean=None if k.mean is None else aggregate(k.mean, mean_axes, adjacency, 0),
        source=None,
        fn=None,
    )


def _window_counts(k: Kernel, geometry: ConvGeometry, i: int) -> torch.Tensor:
    """(S_i',) the number of input positions (not padding) in each window along spatial axis ``i``."""
    ones = torch.ones(k.spatial_shape[i], dtype=k.cov.dtype, device=k.cov.device)
    ones = spatial.pad_trailing(ones, [geometry.padding[i]], geometry.circular)
    return spatial.shifted_sum(ones, (-1,), geometry.kernel_size[i], geometry.stride[i])


def global_pool(k: Kernel, *, average: bool = True) -> Kernel:
    """The mean (``average``) or the sum over all positions: K' = mean (or Σ) over (s, s') of K(s, s')."""
    if not k.n_spatial:
        raise UnsupportedError("global pooling needs inputs with spatial axes (N, C, *spatial).")
    _require_full(k, "global pooling")
    dims = tuple(range(-2 * k.n_spatial, 0))

    def reduce(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            return t
        return t.mean(dim=dims) if average else t.sum(dim=dims)

    fields = _reduce_spatial(k, reduce)
    mean = fields["mean"]  # a tensor when k.mean is
    if not average and isinstance(mean, torch.Tensor):
        fields["mean"] = mean * math.prod(k.spatial_shape)  # the sum of the position means
    out = k.replace(**fields, source=None, fn=None)
    record_step(k, out, ReduceStep("mean" if average else "sum"))
    return out


def flatten(k: Kernel) -> Kernel:
    """(N, C, *S) -> (N, C·|S|): the kernel of the flattened vector is the mean over positions of K(s, s).

    Its units have different variances at different positions, so a nonlinearity cannot follow directly.
    """
    if not k.n_spatial:
        return k
    n = k.n_spatial

    def mean_diagonal(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            return t
        return spatial.spatial_diagonal(t, n, k.full).mean(dim=tuple(range(-n, 0)))

    out = k.replace(
        **_reduce_spatial(k, mean_diagonal),
        channels=k.channels * math.prod(k.spatial_shape),
        is_gaussian=False,
        source=None,
        fn=None,
    )
    record_step(k, out, ReduceStep("flatten"))
    return out


def _reduce_spatial(k: Kernel, reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, object]:
    """Fields after a map that removes the spatial axes; the channel means are averaged over positions."""
    dims = tuple(range(-k.n_spatial, 0))
    return {
        **k.map(reduce),
        "spatial_shape": (),
        "mean": None if k.mean is None else k.mean.mean(dim=dims),
    }


# ----- fan-in of parallel branches ------------------------------------------------------------------------------


def _check_branches(kernels: list[Kernel], what: str) -> None:
    first = kernels[0]
    for other in kernels[1:]:
        if other.spatial_shape != first.spatial_shape:
            raise UnsupportedError(
                f"{what} of branches with different spatial shapes {first.spatial_shape} and {other.spatial_shape}."
            )
    if len({(k.ntk is None) for k in kernels}) > 1:
        raise UnsupportedError(f"{what} of branches where only some carry an NTK.")


def _as_function_of_gaussian(k: Kernel) -> tuple[Kernel, GaussianFunction] | None:
    """(Gaussian layer g, ψ) with k = ψ(g), or None if k is not an elementwise function of one Gaussian."""
    if k.is_gaussian:
        return k, GaussianFunction.identity()
    if k.source is not None and k.fn is not None:  # set together
        return k.source, k.fn
    return None


#: How elementwise functions ψ_i of one Gaussian combine into one (``GaussianFunction.sum`` or ``.product``).
Combine = Callable[[tuple[GaussianFunction, ...]], GaussianFunction]


def _sum(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ values (at least one; shapes broadcast), a new tensor computed as the built-in ``sum`` does (whose type
    for tensors is ``Tensor | int``)."""
    total = 0 + values[0]
    for v in values[1:]:
        total = total + v
    return total


def _prod(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Π values (at least one; shapes broadcast), computed as ``math.prod`` does."""
    total = 1 * values[0]
    for v in values[1:]:
        total = total * v
    return total


def _independent_groups(kernels: list[Kernel]) -> list[list[Kernel]]:
    """The branches grouped so that different groups are independent in the limit (theory.md §4.9): branches
    whose ``roots`` (the weight layers their randomness comes from) overlap, directly or through other
    branches, share a group; deterministic branches (no roots: the input) share one group."""
    deterministic = object()
    groups: list[tuple[frozenset[object], list[int]]] = []
    for i, k in enumerate(kernels):
        roots = k.roots or frozenset((deterministic,))
        joined = [g for g in groups if g[0] & roots]
        groups = [g for g in groups if not g[0] & roots]
        groups.append((roots.union(*(g[0] for g in joined)), sorted([i, *(j for g in joined for j in g[1])])))
    return [[kernels[i] for i in members] for _, members in sorted(groups, key=lambda g: g[1][0])]


def _combine_dependent(kernels: list[Kernel], combine: Combine, what: str) -> Kernel:
    """Branches that may be correlated: they must all be elementwise functions ψ_i of the same Gaussian g,
    and the result is combine(ψ_i) of g, with cross terms E[ψ_i(u) ψ_j(v)] by quadrature."""
    if len(kernels) == 1:
        return kernels[0]
    found = [_as_function_of_gaussian(k) for k in kernels]
    pairs = [p for p in found if p is not None]
    if len(pairs) < len(found) or any(p[0] is not pairs[0][0] for p in pairs):
        raise UnsupportedError(
            f"the {what} of branches that are correlated in a way ntkit cannot compute: branches are combined "
            "in closed form when each has its own weight layers (a Linear or convolution, possibly followed by "
            "activations, pooling or normalisation: independent branches), or when they are elementwise "
            "functions (identity, activations) of the same Gaussian layer. " + _MONTE_CARLO_HINT
        )
    return elementwise(pairs[0][0], combine(tuple(p[1] for p in pairs)))


def _independent_parts(kernels: list[Kernel], combine: Combine, what: str) -> list[Kernel]:
    """The branches as mutually independent parts: each group of :func:`_independent_groups` combined into one
    exactly (one branch, or elementwise functions of one Gaussian).

    A part's ``mean`` is its expectation at each unit when the part is Gaussian or an elementwise function of
    one (all channels alike), but only the mean over units otherwise (after flattening or concatenation, and
    for the input); the combinations below need per-unit expectations of all but one part."""
    _check_branches(kernels, f"the {what}")
    parts = [_combine_dependent(group, combine, what) for group in _independent_groups(kernels)]
    averaged = [p for p in parts if p.mean is not None and _as_function_of_gaussian(p) is None]
    if len(averaged) > 1:
        raise UnsupportedError(
            f"the {what} of independent branches of which several have non-zero means that differ between "
            "units (after flattening, concatenation, pooling or normalisation of activations): their cross "
            "terms E[a]E[b] are not tracked. End all but one of these branches in a Linear or convolution "
            "layer. " + _MONTE_CARLO_HINT
        )
    return parts


def _merged(parts: list[Kernel], **fields: Any) -> Kernel:
    """Parts merged into one layer: ``fields`` (the combined tensors and flags) over common defaults."""
    defaults = {
        "channels": max(p.channels for p in parts),
        "is_input": False,
        "source": None,
        "fn": None,
        "roots": frozenset().union(*(p.roots for p in parts)),
        "parameterization": _common_parameterization(parts),
        "sp_width": (max(p.sp_width[0] for p in parts), max(p.sp_width[1] for p in parts)),
    }
    return parts[0].replace(**{**defaults, **fields})


def _mean_products(parts: list[Kernel]) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """Σ_{i≠j} m_i ⊗ m_j for the pair kernel and for the per-example covariances: the cross terms
    E[a_i] E[a_j'] of a sum of independent parts with means m_i (0 when no two parts have a mean)."""
    means = [p.mean for p in parts if p.mean is not None]
    if len(means) < 2:
        return 0.0, 0.0
    k = parts[0]
    pair = [spatial.pair_broadcast(*k.split(m), k.full) for m in means]
    own = [spatial.self_broadcast(m, k.full) for m in means]

    def cross(factors: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        total = _sum([a for a, _ in factors]) * _sum([b for _, b in factors])
        return total - _sum([a * b for a, b in factors])

    return cross(pair), cross(own)


def fan_in_sum(kernels: list[Kernel]) -> Kernel:
    """y = Σ_i branch_i(x), the branches applied to the same input (theory.md §4.9).

    Independent parts (:func:`_independent_groups`) a_i have zero cross-covariance, so
    K = Σ_i K_i + Σ_{i≠j} m_i m_j' (m_i the parts' means) and Θ = Σ_i Θ_i; branches that are elementwise
    functions of a common Gaussian are first combined exactly.
    """
    parts = _independent_parts(kernels, GaussianFunction.sum, "sum")
    if len(parts) == 1:
        return parts[0]

    def add(name: str) -> torch.Tensor | None:
        values: list[torch.Tensor] = [getattr(p, name) for p in parts if getattr(p, name) is not None]
        return _sum(values) if values else None

    pair_cross, own_cross = _mean_products(parts)
    return _merged(
        parts,
        nngp=_sum([p.nngp for p in parts]) + pair_cross,
        ntk=add("ntk"),
        cov=_sum([p.cov for p in parts]) + own_cross,
        mean=add("mean"),
        is_gaussian=all(p.is_gaussian for p in parts),
    )


def fan_in_product(kernels: list[Kernel]) -> Kernel:
    """y = Π_i branch_i(x) elementwise (theory.md §4.9). Independent parts a_i (:func:`_independent_groups`)
    multiply: K = Π_i K_i, Θ = Σ_i Θ_i Π_{j≠i} K_j (the product rule; the cross terms vanish in the limit),
    mean = Π_i m_i; branches that are elementwise functions of a common Gaussian are first combined exactly."""
    parts = _independent_parts(kernels, GaussianFunction.product, "product")
    if len(parts) == 1:
        return parts[0]

    def product(name: str) -> torch.Tensor | None:
        values: list[torch.Tensor | None] = [getattr(p, name) for p in parts]
        present = [v for v in values if v is not None]
        return _prod(present) if len(present) == len(values) else None

    ntk = None
    ntks = [p.ntk for p in parts if p.ntk is not None]
    if len(ntks) == len(parts):  # all branches carry an NTK or none (_check_branches)
        ntk = _sum([t * _prod([q.nngp for q in parts if q is not p]) for t, p in zip(ntks, parts, strict=True)])
    means = [p.mean for p in parts]
    return _merged(
        parts,
        **{name: product(name) for name in ("nngp", "cov")},
        ntk=ntk,
        is_gaussian=False,
        mean=None if any(m is None for m in means) else math.prod(means),  # a centred factor: mean 0
    )


def fan_in_concat(kernels: list[Kernel]) -> Kernel:
    """Concatenation along channels: the per-channel kernel is the channel-weighted mean of the branches'
    kernels, K = Σ_i n_i K_i / Σ_i n_i (n_i the branches' finite channel counts). No cross terms are needed."""
    _check_branches(kernels, "the concatenation")
    weights = [k.channels for k in kernels]
    total = sum(weights)

    def mix(name: str) -> torch.Tensor | None:
        """Σ_i n_i t_i / Σ_i n_i over the branches that have ``name`` (a missing channel mean is zero)."""
        present = [(w, getattr(k, name)) for w, k in zip(weights, kernels, strict=True) if getattr(k, name) is not None]
        return _sum([w * t for w, t in present]) / total if present else None

    return _merged(
        kernels,
        **{name: mix(name) for name in ("nngp", "ntk", "cov", "mean")},
        channels=total,
        is_gaussian=False,
        is_input=all(k.is_input for k in kernels),
    )


def fan_in_concat_spatial(kernels: list[Kernel], axis: int) -> Kernel:
    """Concatenation along spatial axis ``axis``: positions of different branches are different units, and
    branches that end in their own random linear layer are independent centred Gaussians, so the kernel is
    block diagonal along that axis (neural-tangents' FanInConcat along a spatial axis, which assumes this):

        K'((a, s), (b, s')) = K_a(s, s') if a = b else 0   (full layout; the diagonal layout concatenates).

    Branches that may be correlated (identity, activations of a shared layer) raise ``UnsupportedError``.
    """
    first = kernels[0]
    if not 0 <= axis < first.n_spatial:
        raise UnsupportedError(
            f"concatenation along dim {axis + 2} of inputs with {first.n_spatial} spatial axes {first.spatial_shape}."
        )
    for k in kernels:
        others = k.spatial_shape[:axis] + k.spatial_shape[axis + 1 :]
        if others != first.spatial_shape[:axis] + first.spatial_shape[axis + 1 :] or k.channels != first.channels:
            raise UnsupportedError(
                f"concatenation along spatial axis {axis} of branches with {k.channels} and {first.channels} "
                f"channels and spatial shapes {k.spatial_shape} and {first.spatial_shape}: all other sizes must agree."
            )
    if len(_independent_groups(kernels)) < len(kernels) or any(k.mean is not None for k in kernels):
        raise UnsupportedError(
            "concatenation along a spatial axis needs independent branches with zero means, each ending in its own "
            "Linear or convolution layer (possibly followed by pooling); branches that share random layers are "
            "correlated across the concatenated positions, and non-zero means correlate all positions. "
            + _MONTE_CARLO_HINT
        )
    if len({k.ntk is None for k in kernels}) > 1:
        raise UnsupportedError("concatenation of branches where only some carry an NTK.")
    sizes = [k.spatial_shape[axis] for k in kernels]

    def join(ts: list[torch.Tensor], n_batch: int) -> torch.Tensor:
        if not first.full:
            return torch.cat(ts, dim=n_batch + axis)
        return spatial.block_diagonal(ts, n_batch + 2 * axis, sizes)

    def field(name: str, n_batch: int) -> torch.Tensor | None:
        ts = [getattr(k, name) for k in kernels]
        return (
            None
            if ts[0] is None
            else join([t.expand_as(k.nngp) if t.ndim == 0 else t for t, k in zip(ts, kernels, strict=True)], n_batch)
        )

    shape = list(first.spatial_shape)
    shape[axis] = sum(sizes)
    return _merged(
        kernels,
        nngp=field("nngp", 2),
        ntk=field("ntk", 2),
        cov=field("cov", 1),
        spatial_shape=tuple(shape),
        mean=None,
        is_gaussian=all(k.is_gaussian for k in kernels),
        mask=_concatenated_masks(kernels, axis),
    )


def _concatenated_masks(kernels: list[Kernel], axis: int) -> torch.Tensor | None:
    """The branches' masks (N1 + N2, *S) joined along spatial ``axis`` (None if no branch has one; a branch
    without one is unmasked), as neural-tangents' FanInConcat."""
    if all(k.mask is None for k in kernels):
        return None
    first = next(k.mask for k in kernels if k.mask is not None)
    masks = [k.mask if k.mask is not None else first.new_zeros((first.shape[0], *k.spatial_shape)) for k in kernels]
    return torch.cat(masks, dim=1 + axis)


def _joined(*parameterizations: str | None) -> str | None:
    """The parameterization of a network whose weight layers use these ("mixed" if they differ)."""
    found = {p for p in parameterizations if p is not None}
    return None if not found else found.pop() if len(found) == 1 else "mixed"


def _common_parameterization(kernels: list[Kernel]) -> str | None:
    return _joined(*(k.parameterization for k in kernels))
