"""Masked positions (``nk.kernel(..., mask_constant=c)``, neural-tangents' ``mask_constant``): how layers carry a
mask and leave the masked positions out (theory.md §4.11).

A position of an example is masked when all its input channels equal the mask constant (entries equal to it are
zeroed). The mask is ``Kernel.mask`` (N1 + N2, *S), ordered as ``cov``, True where masked. After each layer the
covariances of masked positions are zero ("remasked"), so sums over positions leave them out; layers that
average over positions count the unmasked ones, and attention gives masked keys no weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..errors import UnsupportedError
from ..gaussian.activations import Activation
from . import spatial
from .kernel_type import Kernel

__all__ = ["apply_masked", "input_mask", "mask_rule", "remask"]


def input_mask(x: torch.Tensor, mask_constant: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x with the entries equal to ``mask_constant`` zeroed, the mask (N, *S): all channels equal to it)."""
    entries = x == mask_constant
    return x.masked_fill(entries, 0.0), entries.all(dim=1) if x.ndim > 1 else entries


def remask(k: Kernel) -> Kernel:
    """``k`` with every covariance that involves a masked position set to zero (nngp, ntk and cov)."""
    if k.mask is None:
        return k
    keep = (~k.mask).to(k.cov.dtype)
    k1, k2 = k.split(keep)
    p1, p2 = spatial.pair_broadcast(k1, k2, k.full)
    s1, s2 = spatial.self_broadcast(keep, k.full)
    pair = p1 * p2
    return k.replace(
        nngp=k.nngp * pair,
        ntk=None if k.ntk is None or k.ntk.ndim == 0 else k.ntk * pair,
        cov=k.cov * (s1 * s2),
    )


#: How plain PyTorch layers treat masks (``ntkit.nn`` layers declare theirs as ``mask_rule``).
_PLAIN_RULES: dict[type, str] = {
    nn.Sequential: "container",
    nn.Identity: "elementwise",
    nn.Dropout: "elementwise",
    nn.ReLU: "elementwise",
    nn.LeakyReLU: "elementwise",
    nn.GELU: "elementwise",
    nn.Tanh: "elementwise",
    nn.Sigmoid: "elementwise",
    nn.SiLU: "elementwise",
    nn.Linear: "elementwise",  # the mask of a position is already the same for all its channels
    nn.Conv1d: "convolution",
    nn.Conv2d: "convolution",
    nn.Conv3d: "convolution",
    nn.AvgPool1d: "pooling",
    nn.AvgPool2d: "pooling",
    nn.AvgPool3d: "pooling",
    nn.Upsample: "resize",
    nn.LayerNorm: "elementwise",  # statistics over spatial axes leave masked positions out (transforms.layer_norm)
    nn.GroupNorm: "elementwise",
    nn.Flatten: "flatten",
}


def mask_rule(module: nn.Module) -> str | None:
    """How ``module`` treats masked positions: "container" (applies its layers in turn), "branches" (branches on
    the same input, combined position by position or concatenated), "elementwise" (keeps the mask),
    "convolution" and "pooling" (the mask at each window's centre), "transposed_convolution" (masked where any
    input reaching the output is), "resize" (masked where every input reaching the output is), "global_avg",
    "global_sum", "flatten", or None (not supported)."""
    if isinstance(module, Activation):
        return "elementwise"
    own = getattr(module, "mask_rule", None)
    if own is not None:
        return str(own)
    return _PLAIN_RULES.get(type(module))


def apply_masked(module: nn.Module, k: Kernel, transform: Callable[[Kernel], Kernel]) -> Kernel:
    """The kernel after ``module`` (its map ``transform``) for inputs with masked positions, and the outputs' mask.

    Supported (:func:`mask_rule`), each with neural-tangents' mask rule: containers that apply their layers in
    turn (``Sequential``), branches (``Residual``, ``Parallel`` summing, multiplying, concatenating channels or
    along a spatial axis, where the branches' masks are concatenated), elementwise and dense layers (activations,
    ``ExpNormalized``, ``Identity``, ``Linear``, ``Dropout``, ``LayerNorm``, whose statistics over spatial axes
    leave masked positions out; ``SelfAttention``, whose map gives masked keys no weight; ``Aggregate``: the mask
    is kept),
    convolutions, locally connected layers and window pooling (the mask of an output position is that of its
    window's centre), transposed convolutions (an output is masked if any input reaching it is), resizing (an
    output is masked if every input reaching it is), global pooling (over the unmasked positions) and
    ``Flatten``. Other layers raise :class:`UnsupportedError`.
    """
    rule = mask_rule(module)
    if rule == "container":
        return transform(k)
    if rule == "branches":  # each branch carries the mask; combined position by position, so they agree
        return remask(transform(k))
    if rule == "elementwise":
        return remask(transform(k).replace(mask=k.mask))
    if rule in ("convolution", "pooling"):
        if rule == "pooling" and getattr(module, "padding_mode", "zeros") == "circular":
            raise UnsupportedError(
                f"masked inputs to circular pooling ({module!r}): neural-tangents has no mask rule for it either "
                "(its CIRCULAR pooling fails on masks). Use zero padding, or compute without mask_constant."
            )
        out = transform(k)
        return remask(out.replace(mask=_conv_mask(module, k, out)))
    if rule == "transposed_convolution":
        out = transform(k)
        return remask(out.replace(mask=_transposed_conv_mask(module, k)))
    if rule == "resize":
        out = transform(k)
        return remask(out.replace(mask=_resize_mask(module, k)))
    if rule in ("global_avg", "global_sum"):
        return _global_pool(k, average=rule == "global_avg", transform=transform)
    if rule == "flatten":
        return transform(k).replace(mask=_all_masked(k))
    raise UnsupportedError(
        f"{type(module).__name__} ({module!r}) does not support masked inputs (mask_constant) yet; supported: "
        "Sequential, Residual, Parallel, activations, ExpNormalized, Identity, Linear, Dropout, LayerNorm, "
        "convolutions (also locally connected and transposed), AvgPool/SumPool, GlobalAvgPool, GlobalSumPool, "
        "Flatten, Resize, SelfAttention and Aggregate. Compute without mask_constant (e.g. on inputs cropped to "
        "the unmasked positions)."
    )


def _all_masked(k: Kernel) -> torch.Tensor:
    """(N,) examples whose positions are all masked: the mask once the positions are pooled or flattened."""
    assert k.mask is not None
    return k.mask.flatten(1).all(dim=1) if k.mask.ndim > 1 else k.mask


def _conv_mask(module: nn.Module, k: Kernel, out: Kernel) -> torch.Tensor:
    """The mask of a convolution's outputs: that of the input position at each filter's centre (strided)."""
    assert k.mask is not None
    n = k.n_spatial
    if tuple(out.spatial_shape) == tuple(k.spatial_shape) and all(s == 1 for s in _as_tuple(module.stride, n)):
        return k.mask
    kernel_size, stride = _as_tuple(module.kernel_size, n), _as_tuple(module.stride, n)
    dilation = _as_tuple(getattr(module, "dilation", 1), n)
    padding = module.padding if isinstance(module.padding, str) else _as_tuple(module.padding, n)
    pads = spatial.conv_paddings(tuple(k.spatial_shape), kernel_size, stride, padding, dilation)
    mask = k.mask
    for i, ((before, _), f, s, d, n_out) in enumerate(
        zip(pads, kernel_size, stride, dilation, out.spatial_shape, strict=True)
    ):
        start = (d * (f - 1)) // 2 - before
        if start < 0:
            raise UnsupportedError(
                f"masked inputs to {module!r}: its padding puts a filter's centre outside the input, where "
                "neural-tangents' mask rule is undefined; use padding='same' or 'valid'."
            )
        mask = mask.narrow(i + 1, start, (n_out - 1) * s + 1)[(slice(None),) * (i + 1) + (slice(None, None, s),)]
    return mask


def _transposed_conv_mask(module: nn.Module, k: Kernel) -> torch.Tensor:
    """The mask of a transposed convolution's outputs: masked where any input position reaching it is masked
    (neural-tangents: the transposed convolution of the mask with a filter of ones, rounded to bool). A circular
    one (padding="same", wrapping around) takes the "same" zero-padded rule, as neural-tangents."""
    assert k.mask is not None
    n = k.n_spatial
    kernel_size, stride = _as_tuple(module.kernel_size, n), _as_tuple(module.stride, n)
    padding: str | int = str(module.padding) if isinstance(module.padding, str) else _as_tuple(module.padding, 1)[0]
    if getattr(module, "padding_mode", "zeros") == "circular":
        padding = "same"
    masked = spatial.dilate_trailing(k.mask.to(k.cov.dtype), list(stride))
    pads = [spatial.transpose_padding(f, s, padding) for f, s in zip(kernel_size, stride, strict=True)]
    masked = spatial.pad_trailing(masked, pads, circular=False)
    for i, f in enumerate(kernel_size):
        masked = spatial.shifted_sum(masked, (i + 1,), f, 1)
    return masked > 0


def _resize_mask(module: nn.Module, k: Kernel) -> torch.Tensor:
    """The mask of a resizing's outputs: masked where every input it interpolates is (neural-tangents: the mask
    of the unmasked positions resized, non-zero where some unmasked input has a weight). Interpolation weights
    are non-negative, so the module applied to the unmasked indicator is zero exactly there."""
    assert k.mask is not None
    reached: torch.Tensor = module((~k.mask).to(k.cov.dtype).unsqueeze(1)).squeeze(1)
    return reached == 0


def _as_tuple(value: object, n: int) -> tuple[int, ...]:
    """``value`` (an int, or one per axis) as ``n`` ints."""
    return tuple(value) if isinstance(value, tuple | list) else (int(value),) * n  # type: ignore[call-overload]


def _global_pool(k: Kernel, *, average: bool, transform: Callable[[Kernel], Kernel]) -> Kernel:
    """Global pooling over the unmasked positions: the sum of K(s, s') (zero at masked positions), divided for
    the average by n(x) n(x') with n the unmasked positions of each example."""
    assert k.mask is not None
    summed = transform(remask(k).replace(mask=None))  # the mean over all |S|² pairs (average) or the sum
    out_mask = _all_masked(k)
    if not average:
        return summed.replace(mask=out_mask)
    size = math.prod(k.spatial_shape)
    counts = (~k.mask).flatten(1).sum(dim=1).to(k.cov.dtype).clamp_min(1.0)  # n per example, ordered as cov
    n1, n2 = k.split(counts)
    pair = size**2 / (n1[:, None] * n2[None, :])
    own = size**2 / counts**2
    mean = None
    if k.mean is not None:
        mean = (k.mean * (~k.mask).to(k.mean.dtype)).flatten(1).sum(dim=1) / counts
    return summed.replace(
        nngp=summed.nngp * pair,
        ntk=None if summed.ntk is None or summed.ntk.ndim == 0 else summed.ntk * pair,
        cov=summed.cov * own,
        mean=mean,
        mask=out_mask,
    )
