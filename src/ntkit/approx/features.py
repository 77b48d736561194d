"""``nk.approx.features(net, n_features, get, method, seed)``: explicit features φ(x) with φ(x)·φ(y) ≈ the
infinite-width NNGP or NTK of ``net`` (docs/approx.md; Zandieh et al. 2021, Algorithm 1, section 4 and the
CNTK sketch; theory.md §6.2 and §6.6).

The features follow the kernel recursion of theory.md §4.1 layer by layer (``steps``), with ψ_K features of the
NNGP K and ψ_Θ features of the NTK Θ at every position (input: ψ_K(s) = x(s)/√C, no Θ): weight layers, pooling
and Flatten map them exactly; each activation draws features f, f' of its dual kernels (``activation_features``)
and sketches the product ψ_Θ ⊗ f' (Θ' = Θ ⊙ Ṫ) with a TensorSketch. In the standard parameterization the final
ψ_Θ is divided by √n for the widest hidden fan-in channel count n, as ``nk.kernel`` normalises (theory.md §4.4).

Given the features of its input, every step is unbiased, so for one hidden layer E[φ(x)·φ(y)] is exactly the
kernel; deeper, T is applied to an estimate of K and the features are consistent (error O(1/√m)) but not
unbiased. Randomness comes from a ``torch.Generator`` seeded with ``seed``, never the global generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .._memory import check_fits, resolve_budget
from .._validation import check_tensor, format_shape
from ..errors import InvalidArgumentError, ShapeError, UnsupportedError
from .activation_features import ActivationFeatures, HermiteSketchFeatures, RandomActivationFeatures
from .sketches import TensorSketch
from .steps import ActivationStep, Dims, Step, WeightStep, parse

__all__ = ["FeatureMap", "features", "progress_bar"]

METHODS = ("random_features", "sketch")


def features(
    net: nn.Module,
    n_features: int = 8192,
    get: str = "ntk",
    method: str = "random_features",
    seed: int = 0,
    *,
    degree: int = 4,
    memory_budget: int | str | None = None,
    progress: bool = False,
) -> FeatureMap:
    """Random features or sketches of the infinite-width ``get`` kernel of ``net`` (module doc).

    Args:
        net: an ``ntkit.nn.Sequential`` (or ``torch.nn.Sequential``) of ``ntkit.nn`` layers: Linear, Conv1d,
            Conv2d, activations (two in a row are composed), AvgPool1d/2d, SumPool1d/2d, GlobalAvgPool,
            GlobalSumPool, Flatten and Identity, starting with a Linear or Conv layer (or Flatten then Linear) and
            ending with (N, outputs). Anything else raises :class:`UnsupportedError` pointing to the exact kernel.
        n_features: F, the number of features (columns of φ(x)).
        get: "nngp" or "ntk".
        method: "random_features" (φ(Gᵀψ)/√m per activation: arc-cosine features for the ReLU family) or
            "sketch" (truncated Hermite/arc-cosine series of each activation with PolySketch features).
        seed: the seed of the ``torch.Generator`` that draws every projection and hash.
        degree: q, the truncation degree of the series of the "sketch" method (the tail beyond goes into one
            extra degree so the diagonal stays unbiased).
        memory_budget: bytes (or "4G") for a batch of features; default a quarter of free memory (random
            projections over a quarter of free memory raise :class:`MemoryBudgetError`).
        progress: a tqdm bar over batches (needs tqdm).

    Returns:
        :class:`FeatureMap`: ``feats(x)`` maps (N, d) or (N, C, *S) inputs to (N, F) features on x's device, in
        x's dtype.
    """
    if get not in ("nngp", "ntk"):
        raise InvalidArgumentError(f"get must be 'nngp' or 'ntk', got {get!r}.")
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {METHODS}, got {method!r}.")
    if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 4:
        raise InvalidArgumentError(f"n_features must be an int >= 4, got {n_features!r}.")
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise InvalidArgumentError(f"degree must be an int >= 1, got {degree!r}.")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidArgumentError(f"seed must be an int, got {seed!r}.")
    if not isinstance(net, nn.Module):
        raise InvalidArgumentError(f"net must be a torch.nn.Module, got {type(net).__name__}.")
    steps, flatten_input = parse(net)
    return FeatureMap(steps, flatten_input, n_features, get, method, seed, degree, memory_budget, progress)


class FeatureMap:
    """φ: (N, d) or (N, C, *S) -> (N, n_features) with φ(x1) φ(x2)ᵀ ≈ the ``get`` kernel of the network.

    Deterministic: the same seed gives the same features on every call and device (up to round-off). When
    Flatten multiplies the widths by a number of positions, F may not be reachable exactly: the last
    ``n_features - used_features`` columns are then zero (they change no kernel value).
    """

    def __init__(
        self,
        steps: list[Step],
        flatten_input: bool,
        n_features: int,
        get: str,
        method: str,
        seed: int,
        degree: int,
        memory_budget: int | str | None,
        progress: bool,
    ) -> None:
        self.n_features, self.get, self.method, self.seed, self.degree = n_features, get, method, seed, degree
        self.memory_budget, self.progress, self._flatten_input = memory_budget, progress, flatten_input
        weights = [s for s in steps if isinstance(s, WeightStep)]
        first = weights[0]
        self.in_channels, self._n_spatial = first.in_channels, len(first.kernel_size)
        self._standard = first.parameterization == "standard"
        hidden = [w.in_channels for w in weights[1:]]
        self._standard_scale = 1 / math.sqrt(max(hidden, default=first.in_channels))
        width, sketch_width = self._allocate(steps)
        self.used_features = self._output_dim(steps, width, sketch_width)
        self._widest = self._dims(steps, width, sketch_width)[1]
        generator = torch.Generator().manual_seed(seed)
        self.steps = self._draw(steps, width, sketch_width, generator)

    # ----------------------------------------------------------------------------------------- construction

    def _dims(self, steps: list[Step], width: int, sketch_width: int) -> tuple[Dims, int]:
        """(the output's Dims, the widest per-position intermediate) for activation features of ``width`` and
        products sketched to ``sketch_width``."""
        d, widest = Dims(self.in_channels, 0), self.in_channels
        for step in steps:
            d = Dims(width, sketch_width) if isinstance(step, ActivationStep) else step.dims(d)
            widest = max(widest, d.k + d.t)
        return d, widest

    def _output_dim(self, steps: list[Step], width: int, sketch_width: int) -> int:
        d, _ = self._dims(steps, width, sketch_width)
        return d.k if self.get == "nngp" else d.t

    def _allocate(self, steps: list[Step]) -> tuple[int, int]:
        """(m, m_s): activation features of m and products of m_s dimensions so that the output has n_features
        columns, or, if no split reaches it exactly (Flatten multiplies widths), the most columns below it."""
        f, smallest = self.n_features, 2 + self.degree
        best: tuple[int, int, int] | None = None  # (output dim, m, m_s)
        sketch_width, lowest = (0, 0) if self.get == "nngp" else (f // 2, 1)
        while sketch_width >= lowest:
            at0 = self._output_dim(steps, 0, sketch_width)
            slope = self._output_dim(steps, 1, sketch_width) - at0
            width = (f - at0) // slope if slope else 0
            if width >= smallest:
                used = at0 + slope * width
                if used == f:
                    return width, sketch_width
                if best is None or used > best[0]:  # ties: the first, most even split
                    best = (used, width, sketch_width)
            sketch_width -= 1
        if best is None:
            raise InvalidArgumentError(
                f"n_features={f} is too small for this network (every activation needs at least degree + 2 = "
                f"{smallest} features, every bias one more, and Flatten multiplies them by the number of "
                "positions); use a few hundred or more."
            )
        return best[1], best[2]

    def _draw(self, steps: list[Step], width: int, sketch_width: int, generator: torch.Generator) -> list[Step]:
        """The steps with their random features and sketches, drawn in order from ``generator``."""
        drawn: list[Step] = []
        d, projections = Dims(self.in_channels, 0), 0
        for step in steps:
            if not isinstance(step, ActivationStep):
                drawn.append(step)
                d = step.dims(d)
                continue
            feats: ActivationFeatures
            if self.method == "random_features":
                projections += d.k * width
                check_fits(
                    4 * projections,
                    resolve_budget(None),
                    f"the random projections ({projections:,} numbers; dim ψ_K = {d.k} before an activation)",
                    "Use method='sketch' (count sketches instead of dense projections), fewer n_features, or "
                    "raise memory_budget.",
                )
                feats = RandomActivationFeatures(step.act, d.k, width, generator)
            else:
                feats = HermiteSketchFeatures(step.act, d.k, width, self.degree, generator)
            product = TensorSketch(d.t, width, sketch_width, generator) if self.get == "ntk" else None
            drawn.append(ActivationStep(step.act, feats, product))
            d = Dims(width, sketch_width)
        return drawn

    # ----------------------------------------------------------------------------------------- evaluation

    def __call__(self, x: torch.Tensor, *, progress: bool | None = None) -> torch.Tensor:
        """φ(x): (N, d) or (N, C, *S) -> (N, n_features), on x's device and in x's dtype."""
        x = self._check(x)
        budget = resolve_budget(self.memory_budget, x.device)
        itemsize = x.element_size()
        check_fits(
            x.shape[0] * self.n_features * itemsize,
            budget,
            f"the features of {x.shape[0]} examples ({x.shape[0]} x {self.n_features})",
            "Use nk.approx.ridge (it accumulates over batches), FeatureMap.batches, or raise memory_budget.",
        )
        out = x.new_zeros((x.shape[0], self.n_features))
        for rows, phi in self.batches(x, progress=progress):
            out[rows] = phi
        return out

    def batches(self, x: torch.Tensor, *, progress: bool | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        """(rows, φ(x[rows])) for batches of rows sized to the memory budget (never all of φ(x) at once)."""
        x = self._check(x)
        budget = resolve_budget(self.memory_budget, x.device)
        positions = math.prod(x.shape[2:]) if self._n_spatial else 1
        per_example = 8 * x.element_size() * (positions * self._widest + self.n_features)
        size = max(1, min(x.shape[0], budget // per_example))
        starts = range(0, x.shape[0], size)
        report = progress_bar(progress if progress is not None else self.progress, len(starts), "features")
        with torch.no_grad():
            for start in starts:
                rows = slice(start, min(start + size, x.shape[0]))
                yield rows, self._features(x[rows])
                report(1)
        report(None)

    def _check(self, x: object) -> torch.Tensor:
        x = check_tensor(x, "x")
        if self._flatten_input and x.ndim > 2:
            x = x.flatten(1)
        ndim = 2 + self._n_spatial
        if x.ndim != ndim or x.shape[1] != self.in_channels:
            expected = "(N, {})".format(", ".join([str(self.in_channels)] + ["*"] * self._n_spatial))
            what = "features" if not self._n_spatial else f"channels and {self._n_spatial} spatial axes"
            raise ShapeError(
                f"x has shape {format_shape(x.shape)} but the network's first layer takes {self.in_channels} "
                f"{what}; pass {expected} inputs."
            )
        return x

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """The recursion of the module doc on one batch: (B, C, *S) -> (B, n_features)."""
        need_ntk = self.get == "ntk"
        psi_k: torch.Tensor = x.movedim(1, -1) / math.sqrt(x.shape[1])  # (B, *S, C)
        psi_t: torch.Tensor | None = None
        for step in self.steps:
            psi_k, psi_t = step(psi_k, psi_t, need_ntk)
        out = psi_k
        if need_ntk:
            assert psi_t is not None
            out = psi_t * self._standard_scale if self._standard else psi_t
        if self.used_features < self.n_features:
            out = torch.nn.functional.pad(out, (0, self.n_features - self.used_features))
        return out

    def __repr__(self) -> str:
        return (
            f"FeatureMap(n_features={self.n_features}, get={self.get!r}, method={self.method!r}, seed={self.seed}, "
            f"in_channels={self.in_channels})"
        )


def progress_bar(progress: bool, total: int, desc: str) -> Callable[[int | None], None]:
    """report(n) after n more batches, report(None) at the end; a tqdm bar if ``progress``."""
    if not progress:
        return lambda n: None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise UnsupportedError("progress=True needs tqdm (pip install tqdm, or ntkit[repro]).") from None
    bar = tqdm(total=total, desc=desc, unit="batch")
    return lambda n: bar.close() if n is None else bar.update(n)
