"""How each kind of layer maps the kernels of its inputs to those of its outputs (theory.md §4).

Pure functions ``Kernel -> Kernel`` (fan-in combinators: several kernels -> one). The ``ntkit.nn`` layers and
the registry of plain PyTorch layers both call these, so each formula is written once. Every map applies to
the pair kernel (N1, N2, *R) and to the per-example covariances (N, *R) alike (see ``spatial``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ShapeError, UnsupportedError
from ..gaussian.activations import Activation
from ..gaussian.functions import GaussianFunction
from . import spatial
from .dense_chain import ArcCosineStep, DenseStep, record_step
from .kernel_type import KERNEL_TEMPORARIES, Kernel, note_working_set, pair_entries

__all__ = [
    "ConvGeometry",
    "activation",
    "avg_pool",
    "conv_geometry",
    "dropout",
    "elementwise",
    "fan_in_concat",
    "fan_in_product",
    "fan_in_sum",
    "flatten",
    "global_avg_pool",
    "layer_norm",
    "weight_layer",
]

_MONTE_CARLO_HINT = "Estimate the kernel of such a network with nk.monte_carlo_kernel instead."

#: Extra kernel-sized temporaries while a quadrature runs (the node arrays are chunked by ntkit.gaussian.quadrature
#: under the memory budget; this covers the chunk in flight and the sums of cross terms).
QUADRATURE_TEMPORARIES = 32


@dataclass(frozen=True)
class ConvGeometry:
    """Filter size, stride and (before, after) padding per spatial axis, and whether padding wraps around."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    circular: bool = False

    @property
    def receptive_field(self) -> int:
        return math.prod(self.kernel_size)


def conv_geometry(
    k: Kernel, kernel_size: tuple[int, ...], stride: tuple[int, ...], padding: str | int, *, circular: bool
) -> ConvGeometry:
    """The geometry of a convolution applied to the layer ``k`` (padding resolved for its spatial shape)."""
    if len(kernel_size) != k.n_spatial:
        raise UnsupportedError(
            f"a {len(kernel_size)}-d convolution got inputs with {k.n_spatial} spatial axes "
            f"{k.spatial_shape}; inputs are (N, C, *spatial), channels first."
        )
    pads = spatial.conv_paddings(k.spatial_shape, kernel_size, stride, padding)
    _check_window(k, kernel_size, [sum(p) for p in pads], "a convolution's filter")
    return ConvGeometry(tuple(kernel_size), tuple(stride), pads, circular)


def _check_window(k: Kernel, window: tuple[int, ...], padding: list[int], what: str) -> None:
    """Raise ShapeError if a window (filter, pooling) is larger than the padded input along some axis."""
    for axis, (size, w, pad) in enumerate(zip(k.spatial_shape, window, padding, strict=True)):
        if w > size + pad:
            raise ShapeError(
                f"{what} of size {tuple(window)} is larger than its input of spatial shape {k.spatial_shape} "
                f"(axis {axis}: {w} > {size}" + (f" + {pad} padding" if pad else "") + "), so there is no output "
                "position. Use a smaller window, padding, or larger inputs."
            )


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
) -> Kernel:
    """A dense layer (``geometry=None``) or a convolution, weights W_std²/fan_in and bias b_std² (theory.md §4.1, §4.5):

        K' = W_var · C(K) + b_var,    C = the mean over filter offsets of the shifted kernel (``spatial.shifted_sum``)
        "ntk":      Θ' = K' + W_var · C(Θ)
        "standard": Θ' = in_channels · |filter| · C(K) + [bias] + W_var · C(Θ)   (unnormalised: J Jᵀ; 4.4)

    ``b_var=None``: no bias parameter. The output is a centred Gaussian, independent of other branches.
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
    if k.ntk is not None and k.parameterization not in (None, parameterization):
        raise UnsupportedError(
            f"this network mixes {k.parameterization!r} and {parameterization!r} parameterizations; their NTKs "
            "scale differently with the width, so use one parameterization for every layer (or get='nngp')."
        )

    def conv(t: torch.Tensor) -> torch.Tensor:
        """Σ over filter offsets of the shifted kernel (``spatial.shifted_sum`` on each spatial axis)."""
        if geometry is None or t.ndim == 0:
            return t
        per_axis = [geometry.padding[i] for i in range(k.n_spatial) for _ in range(2 if k.full else 1)]
        t = spatial.pad_trailing(t, per_axis, geometry.circular)
        for i in range(k.n_spatial):
            t = spatial.shifted_sum(
                t, spatial.spatial_axes(k.n_spatial, i, k.full), geometry.kernel_size[i], geometry.stride[i]
            )
        return t

    mapped = k.map(conv)  # sums over the receptive field: W_var / |filter| turns them into the mean
    receptive = geometry.receptive_field if geometry else 1
    scale = W_var / receptive if receptive > 1 else W_var
    bias = 0.0 if b_var is None else b_var

    def affine(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else (t * scale).add_(bias)  # in place on the fresh product

    nngp = affine(mapped["nngp"])
    ntk = None
    sp_width = k.sp_width
    if k.ntk is not None:
        if parameterization == "ntk":
            # one pass when the scale is a number
            ntk = (
                torch.add(nngp, mapped["ntk"], alpha=scale)
                if isinstance(scale, float)
                else nngp + scale * mapped["ntk"]
            )
        else:
            ntk = in_channels * mapped["nngp"] + (0.0 if b_var is None else 1.0) + scale * mapped["ntk"]
            hidden, input_fed = sp_width
            sp_width = (hidden, max(input_fed, in_channels)) if k.is_input else (max(hidden, in_channels), input_fed)
    spatial_shape = tuple(mapped["cov"].shape[1:][:: 2 if k.full else 1]) if k.n_spatial else ()
    out = k.replace(
        nngp=nngp,
        ntk=ntk,
        cov=affine(mapped["cov"]),
        spatial_shape=spatial_shape,
        channels=out_channels,
        is_gaussian=True,
        is_input=False,
        mean=None,
        source=None,
        fn=None,
        fresh=object(),
        parameterization=parameterization if k.ntk is not None else k.parameterization,
        sp_width=sp_width,
    )
    if geometry is None:
        record_step(k, out, DenseStep(W_var, b_var, parameterization, in_channels))
    return out


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
    if k.source is not None:
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
        fresh=None,
    )


def layer_norm(k: Kernel, *, eps: float, affine: bool) -> Kernel:
    """Normalisation over channels at each position, y = (x − mean_c x) / √(var_c x + eps).

    In the limit the channel mean and variance of one example are its E_c[x] = ``mean`` and K(x, x) − mean²,
    deterministic, so y is an affine map of x per example:

        K' = (K − m1 m2) / √(s1 s2),   Θ' = Θ / √(s1 s2) (+ K' + 1 with a trainable elementwise affine),
        s = K(x, x) − m² + eps.

    Inputs that are not Gaussian (after a nonlinearity) only need their means, so this works anywhere.
    """
    d = k.variances()
    m = torch.zeros_like(d) if k.mean is None else k.mean
    scale = _safe_rsqrt((d - m * m).clamp_min(0) + eps)  # 1/√s per example and position

    def normalise(t, m_a, m_b, s_a, s_b):
        return (t - m_a * m_b) * (s_a * s_b)

    (m1, m2), (s1, s2) = k.split(m), k.split(scale)
    p_m1, p_m2 = spatial.pair_broadcast(m1, m2, k.full)
    p_s1, p_s2 = spatial.pair_broadcast(s1, s2, k.full)
    nngp = normalise(k.nngp, p_m1, p_m2, p_s1, p_s2)
    ntk = None
    if k.ntk is not None:
        ntk = k.ntk * (p_s1 * p_s2)
        if affine:
            ntk = ntk + nngp + 1.0
    cov = normalise(k.cov, *spatial.self_broadcast(m, k.full), *spatial.self_broadcast(scale, k.full))
    return k.replace(nngp=nngp, ntk=ntk, cov=cov, mean=None, source=None, fn=None)


def _safe_rsqrt(x: torch.Tensor) -> torch.Tensor:
    """1/√x, and 0 where x = 0 (a zero input normalises to zero)."""
    positive = x > 0
    return torch.where(positive, torch.rsqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def dropout(k: Kernel, p: float) -> Kernel:
    """Train-mode dropout y = x·m/(1 − p), m ~ Bernoulli(1 − p) per unit: an example's own variances scale by
    1/(1 − p) (one mask), covariances between different examples do not (independent masks). The same holds
    for Θ, the gradients being masked alike."""
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


def _spatial_diagonal_mask(k: Kernel, t: torch.Tensor) -> torch.Tensor:
    """True at the entries of ``t`` whose two positions coincide (all of them in the diagonal layout)."""
    if not k.full:
        return torch.ones((), dtype=torch.bool, device=t.device)
    mask = torch.ones((), dtype=torch.bool, device=t.device)
    for i, size in enumerate(k.spatial_shape):
        eye = torch.eye(size, dtype=torch.bool, device=t.device)
        shape = [1] * (2 * k.n_spatial)
        shape[2 * i : 2 * i + 2] = [size, size]
        mask = mask & eye.reshape(shape)
    return mask


def _require_full(k: Kernel, layer: str) -> None:
    if k.n_spatial and not k.full:
        raise UnsupportedError(
            f"{layer} averages over positions, so it needs the covariances between all pairs of positions; "
            "this kernel keeps only the diagonal (diagonal_spatial=True). nk.kernel chooses the layout "
            "itself; when calling transforms directly, start from Kernel.from_inputs(..., diagonal_spatial=False)."
        )


def avg_pool(k: Kernel, kernel_size: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...]) -> Kernel:
    """Average pooling over windows (zeros padded and counted, as torch's default): a window mean along each
    position axis independently, Cov[mean_a x(a), mean_a' y(a')] = mean_a mean_a' Cov[x(a), y(a')]."""
    if len(kernel_size) != k.n_spatial:
        raise UnsupportedError(
            f"{len(kernel_size)}-d pooling got inputs with {k.n_spatial} spatial axes {k.spatial_shape}."
        )
    _require_full(k, "average pooling")
    _check_window(k, kernel_size, [2 * p for p in padding], "an average pooling window")

    def pool(t: torch.Tensor, full: bool) -> torch.Tensor:
        """Window means along every position axis (each axis of a full kernel separately)."""
        if t.ndim == 0:
            return t
        copies = 2 if full else 1
        t = spatial.pad_trailing(
            t, [(padding[i], padding[i]) for i in range(k.n_spatial) for _ in range(copies)], False
        )
        for i in range(k.n_spatial):
            for axis in spatial.spatial_axes(k.n_spatial, i, full):
                t = spatial.shifted_sum(t, (axis,), kernel_size[i], stride[i])
        return t / math.prod(kernel_size) ** copies

    fields = k.map(lambda t: pool(t, True))
    shape = tuple(fields["cov"].shape[1::2])
    return k.replace(
        **fields,
        spatial_shape=shape,
        mean=None if k.mean is None else pool(k.mean, False),
        source=None,
        fn=None,
    )


def global_avg_pool(k: Kernel) -> Kernel:
    """The mean over all positions: K' = mean over (s, s') of K(s, s')."""
    if not k.n_spatial:
        raise UnsupportedError("global average pooling needs inputs with spatial axes (N, C, *spatial).")
    _require_full(k, "global average pooling")
    n = 2 * k.n_spatial

    def mean_all(t: torch.Tensor) -> torch.Tensor:
        return t if t.ndim == 0 else t.mean(dim=tuple(range(-n, 0)))

    return k.replace(**_reduce_spatial(k, mean_all), source=None, fn=None)


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

    return k.replace(
        **_reduce_spatial(k, mean_diagonal),
        channels=k.channels * math.prod(k.spatial_shape),
        is_gaussian=False,
        source=None,
        fn=None,
    )


def _reduce_spatial(k: Kernel, reduce) -> dict:
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


def _is_new_fresh(branch: Kernel, start: Kernel) -> bool:
    """The branch ends in a zero-mean random linear map of weights drawn inside the branch."""
    return branch.fresh is not None and branch.fresh is not start.fresh


def _as_function_of_gaussian(k: Kernel) -> tuple[Kernel, GaussianFunction] | None:
    """(Gaussian layer g, ψ) with k = ψ(g), or None if k is not an elementwise function of one Gaussian."""
    if k.is_gaussian:
        return k, GaussianFunction.identity()
    if k.source is not None:
        return k.source, k.fn
    return None


def _combine_dependent(kernels: list[Kernel], combine, what: str) -> Kernel:
    """Branches that may be correlated: they must all be elementwise functions ψ_i of the same Gaussian g,
    and the result is combine(ψ_i) of g, with cross terms E[ψ_i(u) ψ_j(v)] by quadrature."""
    if len(kernels) == 1:
        return kernels[0]
    pairs = [_as_function_of_gaussian(k) for k in kernels]
    if any(p is None for p in pairs) or any(p[0] is not pairs[0][0] for p in pairs):
        raise UnsupportedError(
            f"the {what} of branches that are correlated in a way ntkit cannot compute: each branch must end in "
            "its own Linear or convolution layer (independent branches), or all branches must be elementwise "
            "functions (identity, activations) of the same Gaussian layer. " + _MONTE_CARLO_HINT
        )
    return elementwise(pairs[0][0], combine(tuple(p[1] for p in pairs)))


def _split_branches(kernels: list[Kernel], start: Kernel, combine, what: str) -> tuple[list[Kernel], bool]:
    """The branches as parts that are mutually independent: those ending in their own random linear layer, and
    all the others combined into one exactly (elementwise functions of one Gaussian). Also: any such others?"""
    _check_branches(kernels, f"the {what}")
    independent = [k for k in kernels if _is_new_fresh(k, start)]
    dependent = [k for k in kernels if not _is_new_fresh(k, start)]
    return ([_combine_dependent(dependent, combine, what)] if dependent else []) + independent, bool(dependent)


def _merged(parts: list[Kernel], **fields) -> Kernel:
    """Parts merged into one layer: ``fields`` (the combined tensors and flags) over common defaults."""
    defaults = {
        "channels": max(p.channels for p in parts),
        "is_input": False,
        "source": None,
        "fn": None,
        "fresh": None,
        "parameterization": _common_parameterization(parts),
        "sp_width": (max(p.sp_width[0] for p in parts), max(p.sp_width[1] for p in parts)),
    }
    return parts[0].replace(**{**defaults, **fields})


def fan_in_sum(kernels: list[Kernel], start: Kernel) -> Kernel:
    """y = Σ_i branch_i(x), all branches applied to the kernel ``start``.

    Branches ending in their own random linear layer are independent of the rest (zero cross-covariance), so
    their K and Θ add; the others are combined exactly as elementwise functions of their common Gaussian.
    """
    parts, any_dependent = _split_branches(kernels, start, GaussianFunction.sum, "sum")
    if len(parts) == 1:
        return parts[0]

    def add(name: str):
        values = [getattr(p, name) for p in parts if getattr(p, name) is not None]
        return sum(values) if values else None

    return _merged(
        parts,
        **{name: add(name) for name in ("nngp", "ntk", "cov", "mean")},
        is_gaussian=all(p.is_gaussian for p in parts),
        fresh=None if any_dependent else object(),
    )


def fan_in_product(kernels: list[Kernel], start: Kernel) -> Kernel:
    """y = Π_i branch_i(x) elementwise. Independent branches (own random linear layer) multiply:
    K = Π K_i, Θ = Σ_i Θ_i Π_{j≠i} K_j (the product rule; cross terms vanish in the limit); the other branches
    are combined exactly as elementwise functions of their common Gaussian."""
    parts, any_dependent = _split_branches(kernels, start, GaussianFunction.product, "product")
    if len(parts) == 1:
        return parts[0]

    def product(name: str):
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else math.prod(values)

    ntk = None
    if parts[0].ntk is not None:
        ntk = sum(p.ntk * math.prod(q.nngp for q in parts if q is not p) for p in parts)
    return _merged(
        parts,
        **{name: product(name) for name in ("nngp", "cov")},
        ntk=ntk,
        is_gaussian=False,
        mean=None,  # a factor is an independent centred Gaussian
        fresh=None if any_dependent else object(),
    )


def fan_in_concat(kernels: list[Kernel]) -> Kernel:
    """Concatenation along channels: the per-channel kernel is the channel-weighted mean of the branches'
    kernels, K = Σ_i n_i K_i / Σ_i n_i (n_i the branches' finite channel counts). No cross terms are needed."""
    _check_branches(kernels, "the concatenation")
    weights = [k.channels for k in kernels]
    total = sum(weights)

    def mix(name: str):
        """Σ_i n_i t_i / Σ_i n_i over the branches that have ``name`` (a missing channel mean is zero)."""
        present = [(w, getattr(k, name)) for w, k in zip(weights, kernels, strict=True) if getattr(k, name) is not None]
        return sum(w * t for w, t in present) / total if present else None

    return _merged(
        kernels,
        **{name: mix(name) for name in ("nngp", "ntk", "cov", "mean")},
        channels=total,
        is_gaussian=False,
        is_input=all(k.is_input for k in kernels),
    )


def _common_parameterization(kernels: list[Kernel]) -> str | None:
    found = {k.parameterization for k in kernels if k.parameterization is not None}
    if len(found) > 1 and kernels[0].ntk is not None:
        raise UnsupportedError(
            f"parallel branches use different parameterizations {sorted(found)}; use one for every layer."
        )
    return found.pop() if found else None
