"""A fast path of ``nk.kernel`` for pooled convolutional networks: Myrtle, CNTK with global average pooling.

Their kernels need the full spatial layout: every pair of images carries an (|S| x |S|) covariance through
every layer, and the generic path (the layers' maps in ``transforms``, on tiles of b1 x b2 pairs) spends its
time on ~20 eager passes per layer over those covariances, on fresh tensors (a padded copy and a new tensor
per shifted sum), on every pair of a diagonal tile (both triangles, then symmetrised), and on each tile's
examples' own covariances again. A chain

    convolution -> [ReLU / LeakyReLU / Abs / ABReLU] -> ... -> average pooling -> ... -> Flatten or global
    pooling -> dense -> ...

(any stride, dilation and zero padding; pooling with any window, stride and zero padding; no circular padding
or transposed convolution) is recognised during the planning dry run, as ``dense_chain`` recognises MLPs:
the maps record a :class:`ConvStep`, :class:`PoolStep`, :class:`ReduceStep` (or ``dense_chain``'s steps),
and the chain is used only if the steps link the input kernel to the output kernel with nothing in between.
It then computes, with the same recursions (theory.md §4.1-4.2, §4.5):

1. the examples' own pairs (x_i, x_i) once each, in batches, recording at every activation the per-position
   variances that the other pairs need (so x2 = None gives K(x_i, x_i), Θ(x_i, x_i) and ``Kernel.cov``);
2. the other pairs, only i < j when x2 is None (the result is mirrored: K(x_j, x_i)(s, s') = K(x_i, x_j)(s', s)),
   in batches of P pairs laid out (P, *S, *S') (position s of x_i's side, then s' of x_j's side).

Each batch lives in four per-thread buffers of P times the largest layer's covariance, reused from layer to
layer and tile to tile (K, Θ, and two for the activation's temporaries: twice one layer's K and Θ):

- a convolution is done separably, one spatial axis at a time, as a sum of shifted views of the previous
  result added in place into the next buffer (``window_sum``; zero padding is the range of the views, never a
  padded copy); the affine map K' = W_var·C(K) + b_var and Θ' = K' + W_var·C(Θ) are one pass each;
- an activation is the few in-place passes of ``dense_chain``'s arc-cosine map with per-position variances;
- pooling is the same window sums along each position axis separately (stride = window: no redundant work).

Numbers: the same formulas as ``transforms`` and ``activations._arc_cosine_fast`` up to the association of
sums (round-off); tests compare both paths to 1e-12 in float64 (tests/infinite/test_conv_chain.py).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch

from .dense_chain import ArcCosineStep, DenseStep, Record, Step, is_linked
from .kernel_type import Kernel, pair_entries

__all__ = [
    "ConvChain",
    "ConvStep",
    "PoolStep",
    "ReduceStep",
    "Variances",
    "conv_chain",
    "new_variances",
    "release_buffers",
    "run_pairs",
    "window_sum",
]

_TWO_PI = 2 * math.pi


@dataclass(frozen=True)
class ConvStep:
    """A convolution (``transforms.weight_layer`` with a geometry): K' = W_var/|filter|·Σ_offsets K + b_var,
    Θ' = K' + W_var/|filter|·Σ_offsets Θ ("ntk") or in_channels·Σ_offsets K + [bias] + W_var/|filter|·Σ Θ."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    W_var: float
    b_var: float | None
    parameterization: str
    in_channels: int


@dataclass(frozen=True)
class PoolStep:
    """Window pooling (``transforms.pool``) with zero padding, divided by the window size (``"window"``), the
    input positions in the window (``"valid"``) or a constant."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    divisor: str | float


@dataclass(frozen=True)
class ReduceStep:
    """The spatial axes removed: ``"mean"`` / ``"sum"`` over all (s, s') (global pooling) or ``"flatten"`` (the
    mean over s of K(s, s))."""

    kind: str


ChainStep = Step | ConvStep | PoolStep | ReduceStep


@dataclass(frozen=True)
class ConvChain:
    """The recognised steps, the spatial shape S of each step's input, and the entries of the largest
    covariance of one pair."""

    steps: tuple[ChainStep, ...]
    shapes: tuple[tuple[int, ...], ...]
    pair_entries: int


def conv_chain(records: list[Record], k_input: Kernel, k_output: Kernel) -> ConvChain | None:
    """The chain of recorded steps if they map ``k_input`` to ``k_output`` one after the other
    (``dense_chain.is_linked``) and every one of them is a step of this fast path on a full spatial layout,
    else None."""
    if not is_linked(records, k_input, k_output):
        return None
    if not records or not isinstance(records[0][2], ConvStep) or not records[0][0].full:
        return None
    steps: list[ChainStep] = []
    for _, _, step in records:
        if not isinstance(step, ConvStep | PoolStep | ReduceStep | DenseStep | ArcCosineStep):
            return None  # (a weight layer with tensor variances records no step: not linked either)
        steps.append(step)
    largest = max(max(pair_entries(k_in.nngp), pair_entries(k_out.nngp)) for k_in, k_out, _ in records)
    return ConvChain(tuple(steps), tuple(k_in.spatial_shape for k_in, _, _ in records), largest)


# ----- the linear maps on the layout (P, *S, *S') ---------------------------------------------------------------


def window_sum(
    t: torch.Tensor,
    dims: tuple[int, ...],
    size: int,
    stride: int,
    dilation: int,
    padding: tuple[int, int],
    out: torch.Tensor,
) -> torch.Tensor:
    """out[.., p, ..] = Σ_{d < size} t[.., stride·p + dilation·d − before, ..], the same index applied jointly to
    every axis in ``dims`` (one axis: a pooling window; the pair (s_i, s_i'): a convolution's filter axis), with
    zeros outside t (zero padding of (before, after)). ``out`` has t's shape with ``dims`` resized to the
    number of outputs; each offset is one in-place add of a view (the first offset that covers every output is
    a copy instead of zero-filling)."""
    n, n_out = t.shape[dims[0]], out.shape[dims[0]]
    before = padding[0]
    spans = []
    for d in range(size):
        offset = dilation * d - before
        lo = max(0, -(offset // stride))  # the first p with stride·p + offset >= 0
        hi = min(n_out, (n - 1 - offset) // stride + 1)  # one past the last p with stride·p + offset <= n − 1
        if hi > lo:
            spans.append((lo, hi, offset))
    full = next((s for s in spans if s[0] == 0 and s[1] == n_out), None)
    if full is None:
        out.zero_()
    for lo, hi, offset in ([full] if full else []) + [s for s in spans if s is not full]:
        source, target = t, out
        for dim in dims:
            index = [slice(None)] * t.ndim
            index[dim] = slice(stride * lo + offset, stride * (hi - 1) + offset + 1, stride)
            source = source[tuple(index)]
            target = target.narrow(dim, lo, hi - lo)
        if full is not None and (lo, hi, offset) == full:
            target.copy_(source)
        else:
            target.add_(source)
    return out


def _out_size(n: int, size: int, stride: int, dilation: int, padding: tuple[int, int]) -> int:
    return (n + sum(padding) - dilation * (size - 1) - 1) // stride + 1


# ----- per-thread buffers ---------------------------------------------------------------------------------------


class _Buffers(threading.local):
    """Per-thread scratch: four flat tensors reused by every batch of this thread."""

    def get(self, n: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        bufs: list[torch.Tensor] | None = getattr(self, "bufs", None)
        if bufs is None or bufs[0].numel() < n or bufs[0].dtype != dtype or bufs[0].device != device:
            bufs = [torch.empty(n, dtype=dtype, device=device) for _ in range(4)]
            self.bufs = bufs
        return bufs


_BUFFERS = _Buffers()


def release_buffers() -> None:
    """Drop this thread's buffers (the calling thread's on GPU; CPU workers keep theirs between calls)."""
    _BUFFERS.__dict__.pop("bufs", None)


class _Pool:
    """Which of the four buffers are free: ``take`` views a free one as a tensor of the given shape, ``give``
    returns the buffer under a tensor that starts at its first entry (other tensors are ignored)."""

    def __init__(self, bufs: list[torch.Tensor]) -> None:
        self.free = list(bufs)
        self.taken: dict[int, torch.Tensor] = {}

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        flat = self.free.pop()
        self.taken[flat.data_ptr()] = flat
        return flat[: math.prod(shape)].view(shape)

    def give(self, t: torch.Tensor) -> None:
        flat = self.taken.pop(t.data_ptr(), None)
        if flat is not None:
            self.free.append(flat)


# ----- one batch of pairs ---------------------------------------------------------------------------------------


@dataclass
class Variances:
    """Per-example, per-position vectors (all examples, ordered as ``Kernel.cov``) that an arc-cosine step
    needs, written by the examples' own pairs (:func:`run_pairs` with ``record=True``)."""

    sd: torch.Tensor  # √var, (n, *S)
    inv_sd: torch.Tensor  # 1/√var
    inv_sd_grown: torch.Tensor  # 1/√var / (1 − 8ε)
    sd_scaled: torch.Tensor  # √var · √2 (p − q) / 2π
    any_zero: bool = False


def new_variances(chain: ConvChain, n: int, dtype: torch.dtype, device: torch.device) -> list[Variances | None]:
    """Empty per-example vectors for each activation of the chain (None for the other steps)."""

    def empty(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.empty((n, *shape), dtype=dtype, device=device)

    return [
        Variances(empty(shape), empty(shape), empty(shape), empty(shape)) if isinstance(step, ArcCosineStep) else None
        for step, shape in zip(chain.steps, chain.shapes, strict=True)
    ]


def run_pairs(
    chain: ConvChain,
    variances: list[Variances | None],
    a: torch.Tensor,
    b: torch.Tensor,
    rows_a: torch.Tensor,
    rows_b: torch.Tensor,
    need_ntk: bool,
    record: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(K, Θ) of the chain's output for the P pairs (a[p], b[p]), a and b (P, C, *S); ``rows_a``, ``rows_b`` (P,)
    index their examples in ``variances``. ``record``: a is b (the examples' own pairs), whose variances are
    written into ``variances`` before each activation uses them. The results are (P,) or, if spatial axes remain,
    (P, S_1, S_1', ..., S_k, S_k') (``Kernel``'s full layout); those with spatial axes are views of this thread's
    buffers, valid until its next batch."""
    n_pairs, channels = a.shape[:2]
    spatial_shape = tuple(a.shape[2:])
    m = math.prod(spatial_shape)
    pool = _Pool(_BUFFERS.get(n_pairs * chain.pair_entries, a.dtype, a.device))
    k = pool.take((n_pairs, m, m))
    torch.bmm(a.reshape(n_pairs, channels, m).transpose(1, 2), b.reshape(n_pairs, channels, m), out=k)
    k = k.div_(channels).view(n_pairs, *spatial_shape, *spatial_shape)  # the input's kernel x·x' / C
    theta: torch.Tensor | None = None  # Θ = 0 at the input
    for step, shape, v in zip(chain.steps, chain.shapes, variances, strict=True):
        if isinstance(step, ConvStep):
            maps: list[Map] = [((1 + i, 1 + len(shape) + i), *axis) for i, axis in enumerate(_conv_axes(step))]
            k, theta = _weight(step, math.prod(step.kernel_size), _linear(k, maps, pool), theta, maps, need_ntk, pool)
        elif isinstance(step, DenseStep):
            k, theta = _weight(step, 1, k, theta, [], need_ntk, pool)
        elif isinstance(step, PoolStep):
            k = _pooled(step, k, shape, pool)
            theta = None if theta is None else _pooled(step, theta, shape, pool)
        elif isinstance(step, ReduceStep):
            k = _reduced(step.kind, k, pool)
            theta = None if theta is None else _reduced(step.kind, theta, pool)
        else:
            assert v is not None
            if record:
                _record(step, v, k, rows_a)
            k, theta = _arc_cosine(step, v, k, theta, rows_a, rows_b, pool)
    return _interleaved(k), None if theta is None else _interleaved(theta)


def _conv_axes(step: ConvStep) -> list[tuple[int, int, int, tuple[int, int]]]:
    """(size, stride, dilation, padding) of the filter along each spatial axis."""
    return list(zip(step.kernel_size, step.stride, step.dilation, step.padding, strict=True))


Map = tuple[tuple[int, ...], int, int, int, tuple[int, int]]  # dims, size, stride, dilation, padding


def _linear(t: torch.Tensor, maps: list[Map], pool: _Pool) -> torch.Tensor:
    """``window_sum`` along each map in turn, each into a free buffer (the previous one is given back)."""
    for dims, size, stride, dilation, padding in maps:
        if size == 1 and stride == 1 and padding == (0, 0):
            continue
        shape = list(t.shape)
        n_out = _out_size(shape[dims[0]], size, stride, dilation, padding)
        for dim in dims:
            shape[dim] = n_out
        out = window_sum(t, dims, size, stride, dilation, padding, pool.take(tuple(shape)))
        pool.give(t)
        t = out
    return t


def _weight(
    step: ConvStep | DenseStep,
    receptive: int,
    summed: torch.Tensor,
    theta: torch.Tensor | None,
    maps: list[Map],
    need_ntk: bool,
    pool: _Pool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A weight layer given Σ_offsets K (``summed``, in place): K' = scale·ΣK + b_var with scale = W_var/|filter|,
    Θ' = K' + scale·ΣΘ ("ntk") or in_channels·ΣK + [bias] + scale·ΣΘ ("standard"), as ``transforms.weight_layer``."""
    scale = step.W_var / receptive if receptive > 1 else step.W_var
    bias = 0.0 if step.b_var is None else step.b_var
    new_theta = None
    if need_ntk:
        summed_theta = None if theta is None else _linear(theta, maps, pool)
        if step.parameterization == "standard":
            if summed_theta is None:
                new_theta = torch.mul(summed, step.in_channels, out=_like(summed, pool))
            else:
                new_theta = summed_theta.mul_(scale).add_(summed, alpha=step.in_channels)
            new_theta.add_(0.0 if step.b_var is None else 1.0)
        summed.mul_(scale).add_(bias)
        if step.parameterization == "ntk":
            if summed_theta is None:
                new_theta = _like(summed, pool).copy_(summed)
            else:
                new_theta = torch.add(summed, summed_theta, alpha=scale, out=summed_theta)
    else:
        summed.mul_(scale).add_(bias)
    return summed, new_theta


def _like(t: torch.Tensor, pool: _Pool) -> torch.Tensor:
    """A free buffer of t's shape (a fresh tensor once the spatial axes are gone: those are tiny)."""
    return pool.take(tuple(t.shape)) if t.ndim > 1 else torch.empty_like(t)


def _pooled(step: PoolStep, t: torch.Tensor, in_shape: tuple[int, ...], pool: _Pool) -> torch.Tensor:
    """Window sums along each position axis s_i and s_i' separately, then the divisor (``transforms.pool``)."""
    n = len(in_shape)
    axes = list(zip(in_shape, step.kernel_size, step.stride, step.padding, strict=True))
    maps: list[Map] = [
        ((1 + i + side * n,), size, stride, 1, pad) for i, (_, size, stride, pad) in enumerate(axes) for side in (0, 1)
    ]
    t = _linear(t, maps, pool)
    if step.divisor != "valid":
        constant = float(math.prod(step.kernel_size)) if step.divisor == "window" else float(step.divisor)
        return t if constant == 1.0 else t.div_(constant * constant)
    for i, (size_in, size, stride, pad) in enumerate(axes):  # the input positions (not padding) in each window
        ones = t.new_ones((size_in,))
        counts = window_sum(ones, (0,), size, stride, 1, pad, t.new_empty((t.shape[1 + i],)))
        for side in (0, 1):
            t.div_(counts.view((-1,) + (1,) * (2 * n - i - side * n - 1)))
    return t


def _reduced(kind: str, t: torch.Tensor, pool: _Pool) -> torch.Tensor:
    """(P, *S, *S') -> (P,): the mean or sum over all (s, s') (global pooling), or the mean of K(s, s) (flatten)."""
    n_pairs = t.shape[0]
    if kind == "flatten":
        m = math.isqrt(t[0].numel())
        out = t.reshape(n_pairs, m, m).diagonal(dim1=1, dim2=2).mean(-1)
    else:
        flat = t.reshape(n_pairs, -1)
        out = flat.mean(-1) if kind == "mean" else flat.sum(-1)
    pool.give(t)
    return out


def _record(step: ArcCosineStep, v: Variances, k: torch.Tensor, rows: torch.Tensor) -> None:
    """The examples' own variances K(x, x)(s, s) (the spatial diagonal of their own pairs ``k``) -> ``v``."""
    n_pairs = k.shape[0]
    shape = v.sd.shape[1:]
    m = math.prod(shape)
    var = k.reshape(n_pairs, m, m).diagonal(dim1=1, dim2=2).reshape(n_pairs, *shape)
    sd = torch.sqrt(var)
    inv = sd.reciprocal()
    v.sd[rows] = sd
    v.inv_sd[rows] = inv
    v.inv_sd_grown[rows] = inv * (1.0 / (1.0 - 8.0 * torch.finfo(k.dtype).eps))
    v.sd_scaled[rows] = sd * (math.sqrt(2) * (step.p - step.q) / _TWO_PI)
    if bool((var == 0).any()):
        v.any_zero = True


def _arc_cosine(
    step: ArcCosineStep,
    v: Variances,
    k: torch.Tensor,
    theta: torch.Tensor | None,
    rows_a: torch.Tensor,
    rows_b: torch.Tensor,
    pool: _Pool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(T, Θ·Ṫ) for the ABReLU family, per position (``activations._arc_cosine_fast``, ``dense_chain``):

    ρ = clamp(K / √(v(s) v'(s')) / (1 − 8ε), ±1),  Ṫ = p/2 + (q − p)·arccos ρ / 2π,
    T = √2 (p − q)/2π · √v √v' · √(D − D²/2) + Ṫ·K,  D = 1 − |ρ|,

    v (first side, at s) and v' (second side, at s') broadcast over the layout (P, *S, *S')."""
    n_pairs = k.shape[0]
    shape = tuple(v.sd.shape[1:])
    ones = (1,) * len(shape)

    def first(t: torch.Tensor) -> torch.Tensor:
        return t[rows_a].view(n_pairs, *shape, *ones)

    def second(t: torch.Tensor) -> torch.Tensor:
        return t[rows_b].view(n_pairs, *ones, *shape)

    rho = torch.mul(k, first(v.inv_sd), out=_like(k, pool)).mul_(second(v.inv_sd_grown))
    if v.any_zero:  # 0/0 at a zero variance: ρ = 1 (ϑ = 0, the ρ → 1 limit)
        rho.nan_to_num_(nan=1.0)
    rho.clamp_(-1.0, 1.0)
    angle = torch.acos(rho, out=_like(k, pool))
    dot = torch.add(k.new_full((), step.p / 2), angle, alpha=(step.q - step.p) / _TWO_PI, out=angle)
    t = torch.sub(k.new_ones(()), rho.abs_(), out=rho).addcmul_(rho, rho, value=-0.5).sqrt_()
    t.mul_(first(v.sd_scaled)).mul_(second(v.sd)).addcmul_(dot, k)
    pool.give(k)
    if theta is not None:
        theta.mul_(dot)
    pool.give(dot)
    return t, theta


def _interleaved(t: torch.Tensor) -> torch.Tensor:
    """(P, *S, *S') -> (P, S_1, S_1', ..., S_k, S_k') (``Kernel``'s full layout; a view)."""
    n = (t.ndim - 1) // 2
    return t.permute([0, *(d for i in range(n) for d in (1 + i, 1 + n + i))]) if n else t
