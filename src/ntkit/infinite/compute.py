"""``nk.kernel(model, x1, x2)``: the infinite-width NNGP and NTK of an architecture, tiled under a memory budget."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, ParamSpec, TypedDict, TypeVar

import torch
from torch import nn

from .._memory import check_fits, format_bytes, resolve_budget
from .._progress import Progress, progress_bar
from .._validation import all_finite, check_number, check_positive_int, parse_get
from ..errors import InvalidArgumentError, MemoryBudgetError, NonFiniteError, ShapeError
from . import torch_layers  # noqa: F401  (registers PyTorch's layers)
from .conv_chain import new_variances, release_buffers, run_pairs
from .dense_chain import chain_variances, run_chain_tile
from .duplicates import equal_pairs, row_hashes
from .inputs import InputArg, Inputs
from .kernel_type import Kernel, Kernels
from .planning import Plan, plan_inputs
from .registry import apply_kernels, check_declared_init

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["KernelOptions", "kernel", "kernels"]

P = ParamSpec("P")
R = TypeVar("R")

#: One output's tile: (K, Θ or None, the tile's kernel or None); the kernel is None when the per-example
#: covariances are already in place (``dense_chain``).
TileValues = tuple[torch.Tensor, torch.Tensor | None, Kernel | None]
#: ``evaluate(rows, cols, diagonal) -> one TileValues per output of the network`` of one tile.
Evaluate = Callable[[slice, slice, bool], list[TileValues]]

_GET = ("nngp", "ntk")

#: Entries per kernel tensor of one tile on CPU (512 KiB in float32). Tiles are spread over a thread pool whose
#: workers run their operations single-threaded: no parallel region, and so no barrier, per operation, while a
#: tile of this size pays the Python and dispatch cost of its few dozen operations once per 10^5 entries and its
#: temporaries stay in the L2/L3 caches (tuned with benchmarks/infinite.py; the measurements are in
#: benchmarks/README.md). Kernels whose single pair exceeds this run tile after tile with parallel operations.
_TILE_ENTRIES = 2**17
#: Entries per tile of the dense fast path (``dense_chain``): its passes are in place on four buffers per worker
#: (4 MiB in float32), so larger tiles stay in cache, and fewer tiles mean fewer torch calls, each of which hands
#: Python's GIL between the workers (benchmarks/README.md).
_CHAIN_TILE_ENTRIES = 2**18
#: ... but at least this many examples per tile side where one pair is large (full spatial layouts): each tile
#: also recomputes its examples' own covariances, (b1 + b2) of them next to b1·b2 pairs, a quarter extra at 8
#: and more for smaller tiles (benchmarks/README.md).
_MIN_TILE_SIDE = 8
#: Entries per buffer of the convolutional fast path (``conv_chain``): pairs are batched up to this many
#: entries of the largest layer (one pair of 32 x 32 images has 2^20, so Myrtle's batches are single pairs on
#: CPU, whose operations on them are large enough that batching more saves nothing; a GPU gets 16 pairs per
#: operation, within the memory budget).
_CONV_BATCH_ENTRIES = {"cpu": 2**20, "other": 2**24}


def kernel(
    model: nn.Module,
    x1: InputArg,
    x2: InputArg | None = None,
    *,
    get: str | tuple[str, ...] = _GET,
    memory_budget: int | str | None = None,
    block_size: int | None = None,
    dtype: torch.dtype | None = None,
    diagonal_spatial: bool | None = None,
    progress: bool = False,
    mask_constant: float | None = None,
    pattern: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Kernel:
    """The infinite-width NNGP K and NTK Θ of ``model``'s architecture between x1 and x2 (theory.md §4).

    Widths are ignored (the infinite limit; the kernels are per output: the limit is K ⊗ I over outputs).

    Args:
        model: ``ntkit.nn`` layers, PyTorch layers with a registered kernel (``torch.nn.Sequential`` of Linear,
            Conv1d/2d/3d, AvgPool1d/2d/3d, AdaptiveAvgPool(1), Flatten, activations, Identity, Dropout, LayerNorm), or
            both mixed. Plain PyTorch weight layers use the standard parameterization and their own
            initialisation variances (:func:`ntkit.declare_init`).
        x1: (N1, D) or (N1, C, *S) inputs (channels first); x2: (N2, same) or None for x1 (then only one
            triangle of tiles is computed and the result is exactly symmetric). x2 that is x1, or equal to it and
            not requiring a gradient of its own, is treated as None: equal inputs give equal answers (with the
            input's duplicates rule of :mod:`.duplicates` and the correlation rule of the activations).
            A network with several inputs takes a tuple of tensors, one per input (the same N in each; x2 then
            a tuple too): ``kernel(net, (x_a, x_b))`` (:mod:`ntkit.nn.combinators`, :mod:`.inputs`).
        get: "nngp", "ntk" or both.
        memory_budget: bytes (or "4G") for the output and the working set; default a quarter of free memory.
        block_size: at most this many examples per tile side (tiles are chosen to fit the budget anyway).
        dtype: the result's dtype (default: x1's), also the computation's, except that bfloat16 and float16 are
            computed in float32 and the result rounded (computing in them lost 15-31% at ReLU depth 20-40); float32
            results that overflow are recomputed in float64.
        diagonal_spatial: force the spatial layout (default: full only if some layer pools).
        progress: show a tqdm progress bar over the tiles (needs ``tqdm``; see ``ntkit._progress``).
        mask_constant: input entries equal to it are masked (neural-tangents' ``mask_constant``): zeroed, and a
            position whose channels all equal it is left out by the layers that follow (pooling averages over the
            unmasked positions, attention gives them no weight, their covariances are zero; theory.md §4.11).
            Layers that do not support masks raise ``UnsupportedError`` (see ``ntkit.infinite.masking``).
        pattern: the graph of each example, for ``ntkit.nn.Aggregate`` layers without a fixed adjacency
            (neural-tangents' ``pattern``): a tensor for x1 when x2 is None, else the pair (x1's, x2's); each
            dense (N, n, n) edge weights or sparse (N, n_edges, 2) integer (tail, head) edges, (-1, -1) padding
            (``ntkit.infinite.graphs``).

    Returns:
        :class:`Kernel` with ``nngp`` and ``ntk`` of shape (N1, N2) (with the output's spatial layout
        appended if the network does not pool or flatten), ``cov1`` (N1,) = K(x1_i, x1_i) and ``cov2``. A network
        with several outputs (a ``FanOut`` or ``Parallel(..., fan_in=None)`` not joined again) raises
        ``ShapeError``: :func:`kernels` returns one :class:`Kernel` per output.
        For the standard parameterization Θ is normalised by the width n of the widest hidden layer
        (Θ = J Jᵀ / n in expectation; theory.md §4.4): ``Kernel.neural_tangents_ntk()`` gives neural-tangents' J Jᵀ.

    Differentiable with respect to x1, x2 and ``W_std``/``b_std`` given as tensors, in reverse and forward mode
    (torch.func.jvp/jacfwd/hessian, torch.autograd.forward_ad).

    Raises:
        UnsupportedError: a layer without a kernel (the message names it) or an unsupported combination.
        MemoryBudgetError: the result or one tile cannot fit the budget (raised before computing).
        NonFiniteError: the true kernel overflows the dtype.
    """
    _check_model(model)
    check_declared_init(model)  # its warnings point at the caller's line
    options = KernelOptions(
        get=get,
        memory_budget=memory_budget,
        block_size=block_size,
        dtype=dtype,
        diagonal_spatial=diagonal_spatial,
        progress=progress,
        mask_constant=mask_constant,
        pattern=pattern,
    )
    (result,) = _kernels(model, x1, x2, options, one_output=True)
    return result


class KernelOptions(TypedDict, total=False):
    """The keyword arguments of :func:`kernel` (and :func:`kernels`), documented there."""

    get: str | tuple[str, ...]
    memory_budget: int | str | None
    block_size: int | None
    dtype: torch.dtype | None
    diagonal_spatial: bool | None
    progress: bool
    mask_constant: float | None
    pattern: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None


def kernels(
    model: nn.Module, x1: InputArg, x2: InputArg | None = None, **options: Unpack[KernelOptions]
) -> tuple[Kernel, ...]:
    """The infinite-width kernels of each output of a network with several outputs (theory.md §4): a tuple with
    one :class:`Kernel` per output, output i's equal to the kernel of the network that keeps only its branch (the
    cross-covariances between outputs are not returned); a network with one output gives a 1-tuple. Arguments
    (``get``, ``memory_budget``, ``block_size``, ``dtype``, ``diagonal_spatial``, ``progress``,
    ``mask_constant``, ``pattern``) and everything else as :func:`kernel`."""
    _check_model(model)
    check_declared_init(model)  # its warnings point at the caller's line
    unknown = set(options) - set(KernelOptions.__annotations__)
    if unknown:
        raise InvalidArgumentError(f"unexpected argument(s) {', '.join(sorted(unknown))} (see nk.kernel).")
    return _kernels(model, x1, x2, options, one_output=False)


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}.")


def _kernels(
    model: nn.Module, x1: InputArg, x2: InputArg | None, options: KernelOptions, *, one_output: bool
) -> tuple[Kernel, ...]:
    """:func:`kernels`; with ``one_output`` a network with several outputs raises ``ShapeError`` (after the plan)."""
    get, dtype = options.get("get", _GET), options.get("dtype")
    memory_budget, block_size = options.get("memory_budget"), options.get("block_size")
    diagonal_spatial, mask_constant = options.get("diagonal_spatial"), options.get("mask_constant")
    progress, pattern = options.get("progress", False), options.get("pattern")
    wanted, _ = parse_get(get, _GET)
    inputs = Inputs.check(x1, x2, pattern)  # equal inputs take the x2=None path (docs/infinite.md, "Equal inputs")
    dtype = dtype or inputs.dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidArgumentError(f"dtype must be a floating-point torch.dtype, got {dtype!r}.")
    check_positive_int(block_size, "block_size", allow_none=True)
    if diagonal_spatial not in (None, True, False):
        raise InvalidArgumentError(
            f"diagonal_spatial must be True, False or None (chosen from the layers), got {diagonal_spatial!r}."
        )
    if mask_constant is not None:
        check_number(mask_constant, "mask_constant")
    args = (model, inputs, wanted, memory_budget, block_size, mask_constant, one_output)
    work = torch.promote_types(dtype, torch.float32)  # half precisions are computed in float32
    result, finite = _compute(*args, work, diagonal_spatial, progress)
    if not finite and work == torch.float32:
        # Products of variances inside the recursions can overflow float32 before the result does: recompute in
        # float64 and keep the result if it fits the dtype.
        work = torch.float64
        result, finite = _compute(*args, work, diagonal_spatial, progress)
    outs = result
    if work != dtype:
        outs = tuple(k.replace(**{name: _cast(getattr(k, name), dtype) for name in _TENSORS}) for k in outs)
        finite = finite and all(t is None or all_finite(t) for k in outs for t in _fields(k))
    if not finite:
        raise NonFiniteError(
            f"the kernel has entries that are not finite in {dtype} (largest value {torch.finfo(dtype).max:.3g}). "
            "Layer settings are checked finite when the layers are built, so this is usually overflow of the "
            "variances, which grow like W_std^(2·depth) in deep networks (or a registered kernel function that "
            "returns NaN). Use dtype=torch.float64, a smaller W_std, or fewer layers."
        )
    outs = outs if "nngp" in wanted else tuple(k.replace(nngp=None) for k in outs)
    return outs


_TENSORS = ("nngp", "ntk", "cov")


def _fields(k: Kernel) -> list[torch.Tensor | None]:
    return [getattr(k, name) for name in _TENSORS]


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _compute(
    model: nn.Module,
    inputs: Inputs,
    wanted: tuple[str, ...],
    memory_budget: int | str | None,
    block_size: int | None,
    mask_constant: float | None,
    one_output: bool,
    dtype: torch.dtype,
    diagonal_spatial: bool | None,
    progress: bool,
) -> tuple[tuple[Kernel, ...], bool]:
    """The kernel(s) in ``dtype`` (one per output of the network), and whether every entry is finite. With
    ``one_output`` a network with several outputs raises ``ShapeError``."""
    need_ntk = "ntk" in wanted
    p = plan_inputs(
        model, inputs, dtype=dtype, ntk=need_ntk, diagonal_spatial=diagonal_spatial, mask_constant=mask_constant
    )
    if one_output and len(p.outputs) > 1:
        raise ShapeError(
            f"the network has {len(p.outputs)} outputs (a FanOut or Parallel(..., fan_in=None) not joined again); "
            "nk.kernel returns the kernel of one output: use nk.kernels, which returns one Kernel per output."
        )
    n1, n2, device = inputs.n1, inputs.n2, inputs.device
    large = _large_blocks(device)
    pooled = not p.requires_grad and not large and device.type == "cpu" and p.kernel_entries <= _TILE_ENTRIES
    n_workers = torch.get_num_threads() if pooled else 0  # 0: tile after tile in this thread
    budget = resolve_budget(memory_budget, device)
    if p.conv_chain is not None:  # one input and one output (``plan``)
        x1, x2 = inputs.x1[0].to(dtype), None if inputs.x2 is None else inputs.x2[0].to(dtype)
        return _run_conv_chain(p, x1, x2, need_ntk, budget, block_size, progress)
    # dense layers and ReLU-family activations: ``dense_chain``, in the pool's tiles or in large blocks
    chain = p.chain is not None and not p.requires_grad and (pooled or large)
    tile_entries = _CHAIN_TILE_ENTRIES if chain else _TILE_ENTRIES
    itemsize = torch.finfo(dtype).bits // 8
    b = _block_size(p, n1, n2, len(wanted), itemsize, budget, n_workers, block_size, tile_entries)
    inputs = inputs.to(device, dtype)
    if p.requires_grad:
        return _whole(model, inputs, p, need_ntk, mask_constant)
    tiles = _tiles(n1, n2, b, inputs.x2 is None)
    with progress_bar(progress, len(tiles), "nk.kernel", "tile") as bar:
        return _run_tiles(model, inputs, p, tiles, need_ntk, n_workers, mask_constant, chain=chain, bar=bar)


def _large_blocks(device: torch.device) -> bool:
    """Whether tiles are as large as the budget allows and run in the calling thread (CUDA), instead of cache-sized
    tiles spread over the thread pool (CPU): a GPU gains nothing from small tiles or threads, and each tile costs a
    kernel launch per pass and a host synchronisation for its finiteness check."""
    return device.type == "cuda"


def _block_size(
    p: Plan,
    n1: int,
    n2: int,
    n_kernels: int,
    itemsize: int,
    budget: int,
    n_workers: int,
    block_size: int | None,
    tile_entries: int = _TILE_ENTRIES,
) -> int:
    """Examples per tile side: tiles of about ``tile_entries`` entries per kernel tensor (at least
    ``_MIN_TILE_SIDE`` examples per side), fewer if ``n_workers`` tiles in flight next to the result would
    exceed the budget (which raises if even one pair cannot fit)."""
    out_bytes = p.output_bytes(n1, n2, itemsize, n_kernels)
    check_fits(
        out_bytes,
        budget,
        f"the result ({n_kernels} kernel(s) of {n1} x {n2} pairs x {p.output_entries:,} entries)",
        "Compute it in blocks of x1 and x2 that fit, or raise memory_budget.",
    )
    if p.requires_grad:
        check_fits(
            out_bytes + p.tile_bytes(n1, n2, itemsize),
            budget,
            f"computing the kernel with gradients ({p.describe_pair(itemsize)}, all kept for the backward pass)",
            "Use fewer examples, or torch.no_grad() if no gradients are needed.",
        )
        return max(n1, n2)
    room = (budget - out_bytes) // max(n_workers, 1)
    pair_bytes = p.tile_bytes(1, 1, itemsize) // 3
    if 3 * pair_bytes > room:
        raise MemoryBudgetError(
            f"one pair of examples needs {format_bytes(3 * pair_bytes)}: {p.describe_pair(itemsize)}; the memory "
            f"budget leaves {format_bytes(room)} next to the result. Raise memory_budget, or use a network that "
            "flattens instead of pooling (diagonal spatial covariances are much smaller)."
        )
    fits = math.isqrt(1 + room // pair_bytes) - 1  # the largest b with (b² + 2b) · pair_bytes <= room
    fast = max(math.isqrt(tile_entries // p.kernel_entries), _MIN_TILE_SIDE) if n_workers else fits
    return max(1, min(fits, fast, block_size or fits, max(n1, n2)))


def _transpose_pair(t: torch.Tensor, full: bool, n_spatial: int) -> torch.Tensor:
    """K(x2, x1) from K(x1, x2): swap the batch axes and, in the full layout, each pair of position axes."""
    if t.ndim == 0:
        return t
    order = [1, 0]
    for i in range(n_spatial if full else 0):
        order += [3 + 2 * i, 2 + 2 * i]
    order += list(range(len(order), t.ndim))
    return t.permute(order)


def _tiles(n1: int, n2: int, b: int, symmetric: bool) -> list[tuple[slice, slice]]:
    """(rows, cols) blocks covering the result; only the upper triangle when x2 is x1."""
    return [
        (slice(i, min(i + b, n1)), slice(j, min(j + b, n2)))
        for i in range(0, n1, b)
        for j in range(i if symmetric else 0, n2, b)
    ]


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (process id, workers, pool)
_POOL_LOCK = threading.Lock()


def _worker_pool(n_workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``n_workers`` threads whose torch operations run single-threaded.

    Worker threads, even just one: in the calling thread every small operation opens an OpenMP parallel region
    whose helper threads spin afterwards, which costs most when the cores are shared; single-threaded workers
    start no such helpers (benchmarks/README.md). The pool is kept between calls (starting threads costs a
    noticeable part of a small kernel's time) and made again after a fork (threads do not survive it) or for
    another count. torch.set_num_threads(1) in a worker also sets the count that threads started later begin
    with, so the caller's count is restored once every worker has started.
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[:2] != (os.getpid(), n_workers):
            threads = torch.get_num_threads()
            pool = ThreadPoolExecutor(n_workers, thread_name_prefix="ntkit-kernel", initializer=_single_threaded)
            try:
                started = threading.Barrier(n_workers)  # each task waits for all: every worker is started
                list(pool.map(lambda _: started.wait(), range(n_workers)))
            finally:
                torch.set_num_threads(threads)
            if _POOL is not None and _POOL[0] == os.getpid():
                _POOL[2].shutdown(wait=False)
            _POOL = (os.getpid(), n_workers, pool)
        return _POOL[2]


def _single_threaded() -> None:
    """Make this (worker) thread's torch operations single-threaded, for good.

    torch.set_num_threads(1) alone is not enough: a thread's first parallel operation initialises its OpenMP/MKL
    thread counts from torch's process-wide count (``at::internal::lazy_init_num_threads``), which the caller's
    count has replaced by then, so every operation of the workers then opened a parallel region, which costs more
    than the operation itself at these sizes. One operation large enough to be parallel does that initialisation now.
    """
    torch.set_num_threads(1)
    torch.ones(1 << 16).add_(1.0)


def _no_grad(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` under torch.no_grad() (grad mode is per thread; pooled tiles never need gradients)."""

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with torch.no_grad():
            return fn(*args, **kwargs)

    return run


def _ntk_scale(meta: Kernel) -> float:
    """The factor that normalises the accumulated standard-parameterization NTK (J Jᵀ) by the width (4.4)."""
    return 1.0 / meta.sp_normalizer()


def _whole(
    model: nn.Module, inputs: Inputs, p: Plan, need_ntk: bool, mask_constant: float | None
) -> tuple[tuple[Kernel, ...], bool]:
    """The kernel(s) in one piece and out of place, when derivatives are taken: reverse mode keeps every tile for
    the backward pass anyway, and forward mode (``torch.func`` transforms, dual tensors) cannot follow results
    written into preallocated tensors by worker threads. Also returns whether every entry is finite."""
    k0 = inputs.kernel(diagonal_spatial=p.diagonal_spatial, ntk=need_ntk, mask_constant=mask_constant)
    computed = _each(apply_kernels(model, k0))
    symmetric = inputs.x2 is None
    outs = []
    for k, meta in zip(computed, p.outputs, strict=True):
        nngp, ntk = k.nngp, None if k.ntk is None else k.ntk.expand_as(k.nngp) * _ntk_scale(meta)
        if symmetric:  # symmetric up to round-off: make it exact
            nngp = (nngp + _transpose_pair(nngp, meta.full, meta.n_spatial)) / 2
            ntk = None if ntk is None else (ntk + _transpose_pair(ntk, meta.full, meta.n_spatial)) / 2
        outs.append(_result(meta, nngp, ntk, k.cov, symmetric))
    return tuple(outs), all(t is None or all_finite(t) for out in outs for t in _fields(out))


def _each(k: Kernels) -> tuple[Kernel, ...]:
    """The outputs' kernels as a tuple (one kernel: a 1-tuple)."""
    return k if isinstance(k, tuple) else (k,)


def _run_tiles(
    model: nn.Module,
    inputs: Inputs,
    p: Plan,
    tiles: list[tuple[slice, slice]],
    need_ntk: bool,
    n_workers: int,
    mask_constant: float | None,
    *,
    chain: bool,
    bar: Progress,
) -> tuple[tuple[Kernel, ...], bool]:
    """Compute the kernel(s) tile by tile (by the layers' kernel maps, or ``dense_chain`` if ``chain``) into
    preallocated results, one per output of the network (differentiable: slices are copied in); also returns
    whether every entry is finite. The standard-parameterization NTK is normalised here (4.4). ``bar`` is advanced
    by one per tile."""
    symmetric = inputs.x2 is None
    n1, n2 = inputs.n1, inputs.n2
    dtype, device = inputs.dtype, inputs.device
    results = [_TileResults.allocate(meta, n1, n2, symmetric, need_ntk, dtype, device) for meta in p.outputs]

    evaluate: Evaluate
    if chain:  # prepared in a worker too: the caller's thread may be a forked child's, where MKL/OpenMP hang
        x1, x2 = inputs.x1[0], None if inputs.x2 is None else inputs.x2[0]  # one input and one output (``plan``)
        prepare, args = _no_grad(_chain_evaluator), (p, x1, x2, need_ntk, results[0].cov)
        evaluate = _worker_pool(n_workers).submit(prepare, *args).result() if n_workers else prepare(*args)
    else:

        def evaluate(rows: slice, cols: slice, diagonal: bool) -> list[TileValues]:
            pair = inputs.tile(rows, None if diagonal else cols)
            k0 = pair.kernel(diagonal_spatial=p.diagonal_spatial, ntk=need_ntk, mask_constant=mask_constant)
            return [
                (k.nngp, None if k.ntk is None else k.ntk.expand_as(k.nngp), k) for k in _each(apply_kernels(model, k0))
            ]

    def tile(rows: slice, cols: slice) -> bool:
        try:
            values = evaluate(rows, cols, symmetric and rows == cols)
            return all([out.write(rows, cols, *value) for out, value in zip(results, values, strict=True)])
        finally:
            bar.update(1)

    if n_workers:
        finite = all(_worker_pool(n_workers).map(_no_grad(tile), *zip(*tiles, strict=True)))
    else:
        finite = all([tile(rows, cols) for rows, cols in tiles])
    return tuple(_result(out.meta, out.nngp, out.ntk, out.cov, symmetric) for out in results), finite


@dataclass(frozen=True)
class _TileResults:
    """The preallocated results of one output of the network, which tiles are written into."""

    meta: Kernel  # the output's kernel from the plan (metadata)
    nngp: torch.Tensor  # (N1, N2, *R)
    ntk: torch.Tensor | None
    cov: torch.Tensor  # (N1 [+ N2], *R)
    symmetric: bool
    ntk_scale: float

    @classmethod
    def allocate(
        cls, meta: Kernel, n1: int, n2: int, symmetric: bool, need_ntk: bool, dtype: torch.dtype, device: torch.device
    ) -> _TileResults:
        nngp = torch.empty((n1, n2, *meta.nngp.shape[2:]), dtype=dtype, device=device)
        ntk = torch.empty_like(nngp) if need_ntk else None
        cov = torch.empty((n1 if symmetric else n1 + n2, *meta.cov.shape[1:]), dtype=dtype, device=device)
        return cls(meta, nngp, ntk, cov, symmetric, _ntk_scale(meta) if need_ntk else 1.0)

    def write(
        self, rows: slice, cols: slice, nngp_value: torch.Tensor, ntk_value: torch.Tensor | None, k: Kernel | None
    ) -> bool:
        """Write one tile's values (and, from the tiles that hold them, the per-example covariances); returns
        whether they are finite."""
        symmetric, meta = self.symmetric, self.meta
        diagonal = symmetric and rows == cols
        if ntk_value is not None and self.ntk_scale != 1.0:
            ntk_value = ntk_value * self.ntk_scale
        pairs = [(self.nngp, nngp_value)]
        if self.ntk is not None and ntk_value is not None:
            pairs.append((self.ntk, ntk_value))
        for out, value in pairs:
            if diagonal:  # symmetric up to round-off: make it exact, written straight into the result
                torch.add(value, _transpose_pair(value, meta.full, meta.n_spatial), out=out[rows, cols]).mul_(0.5)
                continue
            out[rows, cols] = value
            if symmetric:
                out[cols, rows] = _transpose_pair(value, meta.full, meta.n_spatial)
        finite = all(all_finite(out[rows, cols]) for out, _ in pairs)
        if k is None:  # the per-example covariances are already in place
            return finite
        if cols.start == (rows.start if symmetric else 0):
            self.cov[rows] = k.cov1
        if not symmetric and rows.start == 0:
            n1 = self.nngp.shape[0]
            self.cov[n1 + cols.start : n1 + cols.stop] = k.split(k.cov)[1]  # k.cov2: x2's part (x2 is not x1)
        return finite and all_finite(k.cov)


def _chain_evaluator(p: Plan, x1: torch.Tensor, x2: torch.Tensor | None, need_ntk: bool, cov: torch.Tensor) -> Evaluate:
    """Tiles of a dense/ReLU-family chain (``dense_chain``): per-example variances once for all examples (into
    ``cov``), then each tile in its thread's reused buffers. The returned values are valid until the thread's
    next tile (the caller copies them into the result)."""
    steps = p.chain
    assert steps is not None  # the caller checked p.chain
    examples = x1 if x2 is None else torch.cat([x1, x2])
    var0 = (examples * examples).sum(1) / examples.shape[1]
    hashes = row_hashes(examples)
    variances, var_out = chain_variances(steps, var0)
    cov.copy_(var_out)
    xs2, offset = (x1, 0) if x2 is None else (x2, x1.shape[0])

    def evaluate(rows: slice, cols: slice, diagonal: bool) -> list[TileValues]:
        i2 = slice(offset + cols.start, offset + cols.stop)
        a, b = x1[rows], xs2[cols]
        i, j = equal_pairs(a, b, hashes[rows], hashes[i2])
        equal = (i, j, var0[rows][i]) if i.numel() else None
        nngp, ntk = run_chain_tile(steps, variances, a, b, rows, i2, diagonal, need_ntk, equal)
        return [(nngp, ntk, None)]

    return evaluate


def _run_conv_chain(
    p: Plan,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    need_ntk: bool,
    budget: int,
    block_size: int | None,
    progress: bool,
) -> tuple[tuple[Kernel, ...], bool]:
    """A pooled CNN by ``conv_chain``: first the examples' own pairs (their variances at every activation, and
    ``cov``; with x2 = None also the batch diagonal of K and Θ), then the other pairs, only i < j when x2 is
    None (mirrored into the result), in batches of pairs spread over the worker pool on CPU. Also returns
    whether every entry is finite."""
    chain = p.conv_chain
    assert chain is not None
    symmetric = x2 is None
    examples = x1 if x2 is None else torch.cat([x1, x2])
    n1, n = x1.shape[0], examples.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    itemsize = x1.element_size()
    n_workers = torch.get_num_threads() if x1.device.type == "cpu" else 0
    out_bytes = p.output_bytes(n1, n2, itemsize, 2 if need_ntk else 1)
    check_fits(
        out_bytes,
        budget,
        f"the result ({n1} x {n2} pairs x {p.output_entries:,} entries)",
        "Compute it in blocks of x1 and x2 that fit, or raise memory_budget.",
    )
    pair_bytes = 4 * chain.pair_entries * itemsize  # four buffers of the largest layer per pair
    room = (budget - out_bytes) // max(n_workers, 1)
    if pair_bytes > room:
        raise MemoryBudgetError(
            f"one pair of examples needs {format_bytes(pair_bytes)}: four covariances of {chain.pair_entries:,} "
            f"entries (the largest layer's, full spatial layout); the memory budget leaves {format_bytes(room)} "
            "next to the result. "
            "Raise memory_budget, or use a network that flattens instead of pooling."
        )
    entries = _CONV_BATCH_ENTRIES["cpu" if n_workers else "other"]
    batch = max(1, min(room // pair_bytes, entries // chain.pair_entries, (block_size or n) ** 2))
    meta = p.output
    nngp = torch.empty((n1, n2, *meta.nngp.shape[2:]), dtype=x1.dtype, device=x1.device)
    ntk = torch.empty_like(nngp) if need_ntk else None
    cov = torch.empty((n, *meta.cov.shape[1:]), dtype=x1.dtype, device=x1.device)
    variances = new_variances(chain, n, x1.dtype, x1.device)
    n_spatial = meta.n_spatial if meta.full else 0

    def own(rows: torch.Tensor) -> None:
        k, theta = run_pairs(chain, variances, examples[rows], examples[rows], rows, rows, need_ntk and symmetric, True)
        cov[rows] = k
        if symmetric:  # the batch diagonal, exactly symmetric in (s, s') as the generic path makes it
            for out, t in ((nngp, k), (ntk, theta)):
                if out is not None and t is not None:
                    out[rows, rows] = (t + _swap_positions(t, n_spatial)) / 2 if n_spatial else t

    hashes = row_hashes(x1) if symmetric and n_spatial else None

    def pairs(rows: torch.Tensor, cols: torch.Tensor) -> None:
        a, b = x1[rows], x1[cols] if x2 is None else x2[cols]
        k, theta = run_pairs(chain, variances, a, b, rows, cols if symmetric else cols + n1, need_ntk, False)
        if hashes is not None:  # equal examples get their own pair's symmetrised value (``own``), exactly
            for p in (hashes[rows] == hashes[cols]).nonzero().flatten().tolist():
                if torch.equal(a[p], b[p]):
                    for t in (k, theta):
                        if t is not None:
                            t[p] = (t[p] + _swap_positions(t[p : p + 1], n_spatial)[0]) / 2
        for out, t in ((nngp, k), (ntk, theta)):
            if out is not None and t is not None:
                out[rows, cols] = t
                if symmetric:
                    out[cols, rows] = _swap_positions(t, n_spatial)

    index = torch.arange(n, device=x1.device)
    own_batches: list[tuple[torch.Tensor, ...]] = [(index[i : i + batch],) for i in range(0, n, batch)]
    if symmetric:
        rows, cols = torch.triu_indices(n1, n1, offset=1, device=x1.device)
    else:
        rows, cols = (t.flatten() for t in torch.meshgrid(index[:n1], index[:n2], indexing="ij"))
    pair_batches: list[tuple[torch.Tensor, ...]] = [
        (rows[i : i + batch], cols[i : i + batch]) for i in range(0, rows.numel(), batch)
    ]
    with progress_bar(progress, len(own_batches) + len(pair_batches), "nk.kernel", "batch") as bar:

        def run(fn: Callable[..., None], batches: list[tuple[torch.Tensor, ...]]) -> None:
            def one(args: tuple[torch.Tensor, ...]) -> None:
                with torch.no_grad():
                    fn(*args)
                bar.update(1)

            if n_workers:
                list(_worker_pool(n_workers).map(one, batches))
            else:
                for args in batches:
                    one(args)

        try:
            run(own, own_batches)  # the variances that every other pair needs
            run(pairs, pair_batches)
        finally:
            if not n_workers:
                release_buffers()
    if ntk is not None and (scale := _ntk_scale(meta)) != 1.0:
        ntk.mul_(scale)
    out = _result(meta, nngp, ntk, cov, symmetric)
    return (out,), all(t is None or all_finite(t) for t in _fields(out))


def _result(meta: Kernel, nngp: torch.Tensor, ntk: torch.Tensor | None, cov: torch.Tensor, symmetric: bool) -> Kernel:
    """The output layer's kernel (metadata of the plan) with the computed tensors."""
    return meta.replace(
        nngp=nngp,
        ntk=ntk,
        cov=cov,
        x1_is_x2=symmetric,
        mean=None,
        source=None,
        fn=None,
        roots=frozenset(),
        ntk_divisor=meta.sp_normalizer() if ntk is not None else 1,
        mask=None,
        pattern=None,
    )


def _swap_positions(t: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """(P, S_1, S_1', ..., S_k, S_k') -> the same with each pair (s_i, s_i') swapped: K(x2, x1) from K(x1, x2)."""
    return t.permute([0, *(1 + 2 * i + side for i in range(n_spatial) for side in (1, 0))]) if n_spatial else t
