"""``nk.Kernel``: the infinite-width kernels of one layer for a pair of input batches, and what composition needs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from .._validation import format_shape
from ..errors import UnsupportedError
from . import spatial
from .duplicates import equal_pairs
from .graphs import stack_patterns

if TYPE_CHECKING:
    from ..gaussian.activations import Activation
    from ..gaussian.functions import GaussianFunction

__all__ = ["Kernel", "Kernels"]

#: Tensors of a kernel's size alive at once while a layer's map runs (inputs, outputs, the Gaussian layer kept
#: for composition, temporaries of the closed forms): the working set is this many times the kernel's size.
KERNEL_TEMPORARIES = 12

#: During the shape-only dry run of ``nk.kernel`` (on the meta device, one example per side) this records the
#: largest working set, in tensor entries per pair of examples, of any layer's map.
working_set_probe: ContextVar[list[int] | None] = ContextVar("ntkit_working_set_probe", default=None)


def note_working_set(entries_per_pair: int) -> None:
    """Record a working set for the memory plan (a no-op outside the dry run)."""
    probe = working_set_probe.get()
    if probe is not None:
        probe[0] = max(probe[0], int(entries_per_pair))


def planning() -> bool:
    """True during the dry run (working sets are being recorded)."""
    return working_set_probe.get() is not None


def pair_entries(t: torch.Tensor) -> int:
    """Entries per pair of examples of a pair kernel tensor (N1, N2, *R)."""
    return t[0, 0].numel() if t.ndim >= 2 else 1


class KernelTensors(TypedDict):
    """The tensors a linear map acts on (:meth:`Kernel.map`), as keyword arguments for :meth:`Kernel.replace`."""

    nngp: torch.Tensor
    ntk: torch.Tensor | None
    cov: torch.Tensor


@dataclass(frozen=True, eq=False, repr=False)
class Kernel:
    """The NNGP K and NTK Θ of one layer's outputs for inputs x1 (N1 examples) and x2 (N2 examples).

    The infinite-width limit is independent across channels, so kernels are per channel (the limit is K ⊗ I).
    With k spatial axes S = (S_1, ..., S_k) still present (images: NCHW, so S = (H, W)), the layout R is

    - diagonal (``diagonal_spatial=True``): R = S, entries Cov[x1(s), x2(s)], enough when the network ends
      by flattening;
    - full: R = (S_1, S_1', ..., S_k, S_k'), entries Cov[x1(s), x2(s')], needed by pooling.

    Attributes:
        nngp: (N1, N2, *R) K(x1, x2) = E[f(x1) f(x2)] (None only in results of nk.kernel that did not get it).
        ntk: (N1, N2, *R) Θ(x1, x2) (None if not requested; a 0-dim zero at the input).
        cov: (N1 + N2, *R) the per-example covariances K(x_i, x_i) the next nonlinearity needs, x1's then
            x2's ((N1, *R) when ``x1_is_x2``), in one tensor so that each map runs once on them; read them as
            ``cov1`` (N1, *R) and ``cov2`` (N2, *R) or None when ``x1_is_x2`` (then it equals cov1).
        x1_is_x2: x2 is x1 (the same examples, so the batch diagonal holds K(x, x)).
        spatial_shape: S, () once the spatial axes are pooled or flattened.
        diagonal_spatial: which layout R the tensors use.
        channels: the finite channel count of this layer in the module that defined it (weights branches
            of a channel concatenation; widths do not enter the limit otherwise).
        is_gaussian: the layer's outputs are (in the limit) a centred Gaussian process, so a nonlinearity
            can be applied through Gaussian expectations.
        is_input: the kernel of the (deterministic) network input, or of deterministic maps of it.
        mean: (N1 + N2, *S) (or (N1, *S)) the channel means E_c[x_c] per example and position (None: zero),
            ordered as ``cov``; layer normalisation after a nonlinearity needs them (``mean1``, ``mean2``).
        source, fn: when the layer is an elementwise function ψ of the last Gaussian layer, that layer's
            kernel and ψ (two activations in a row compose through them).
        roots: tokens of the weight layers this layer's randomness comes from without another weight layer in
            between (a weight layer's outputs: its own token; other maps keep them; combinations join them;
            the deterministic input: none). Layers with disjoint roots are independent in the limit (theory.md
            §4.9), which the combinations of parallel branches use.
        parameterization: "ntk", "standard" or "mixed" (both), from the weight layers met so far.
        sp_width: the widest fan-in channel counts (divided by the width multiplier s_in) of the
            standard-parameterization weight layers (after the input, on the input): Θ accumulates their
            unnormalised (J Jᵀ) contributions and
            ``nk.kernel`` divides by :meth:`sp_normalizer` at the end (theory.md §4.4).
        mask: (N1 + N2, *S) (or (N1, *S)) True at the masked positions of each example, ordered as ``cov``
            (None: nothing masked; ``nk.kernel(..., mask_constant=)``, :mod:`.masking`).
        pattern: the graph of each example for graph aggregation, ordered as ``cov``: dense (N1 + N2, n, n) edge
            weights or sparse (N1 + N2, E, 2) edge lists (None: no per-example graphs; ``nk.kernel(...,
            pattern=)``, :mod:`.graphs`). Layers other than ``Aggregate`` pass it on unchanged.
        ntk_divisor: what ``ntk`` has been divided by: :meth:`sp_normalizer` in results of ``nk.kernel`` for
            the standard parameterization, else 1 (kernels composed by hand stay unnormalised).
            :meth:`neural_tangents_ntk` undoes it.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | None
    cov: torch.Tensor
    x1_is_x2: bool
    spatial_shape: tuple[int, ...] = ()
    diagonal_spatial: bool = True
    channels: int = 1
    is_gaussian: bool = False
    is_input: bool = False
    mean: torch.Tensor | None = None
    source: Kernel | None = None
    fn: GaussianFunction | None = None
    roots: frozenset[object] = frozenset()
    parameterization: str | None = None
    sp_width: tuple[int, int] = (0, 0)
    ntk_divisor: int = 1
    mask: torch.Tensor | None = None
    pattern: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.nngp is not None and planning():
            note_working_set(pair_entries(self.nngp) * KERNEL_TEMPORARIES)

    @classmethod
    def from_inputs(
        cls,
        x1: torch.Tensor,
        x2: torch.Tensor | None = None,
        *,
        diagonal_spatial: bool = True,
        ntk: bool = True,
        mask_constant: float | None = None,
        pattern: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> Kernel:
        """The input layer's kernel K(x1, x2) = x1·x2 / C (the mean over the C channels).

        x1: (N1, C) or (N1, C, *S) (channels first, as PyTorch); x2 the same with N2 examples, or None for x1.
        The NTK of the input is zero (no parameters yet). With ``mask_constant``, entries equal to it are zeroed
        and positions whose channels all equal it are masked (:func:`.masking.input_mask`). ``pattern``: the
        graphs of x1's and x2's examples (x2's None when x2 is None), checked by :func:`.graphs.check_pattern`.
        """
        masks = None
        if mask_constant is not None:
            from .masking import input_mask  # masking builds on this module

            x1, mask_a = input_mask(x1, mask_constant)
            masks = [mask_a]
            if x2 is not None:
                x2, mask_b = input_mask(x2, mask_constant)
                masks.append(mask_b)
        full = not diagonal_spatial
        n_spatial = x1.ndim - 2 if x1.ndim > 2 else 0
        channels = x1.shape[1] if x1.ndim > 1 else 1
        a = x1 if x1.ndim > 1 else x1.unsqueeze(1)
        b = a if x2 is None else (x2 if x2.ndim > 1 else x2.unsqueeze(1))
        nngp = _gram(a, b, n_spatial, full, pair=True) / channels
        if x2 is None:  # the batch diagonal itself, so that an example has correlation exactly 1 with itself
            examples, cov = a, nngp.diagonal(dim1=0, dim2=1).movedim(-1, 0)
        else:
            examples = torch.cat([a, b])
            cov = _gram(examples, examples, n_spatial, full, pair=False) / channels
        if not planning():  # equal examples get the per-example value: correlation exactly 1 (``duplicates``)
            i, j = equal_pairs(a, b)
            if i.numel():
                nngp = nngp.index_put((i, j), cov[i])
        return cls(
            nngp=nngp,
            ntk=nngp.new_zeros(()) if ntk else None,
            cov=cov,
            x1_is_x2=x2 is None,
            spatial_shape=tuple(a.shape[2:]),
            diagonal_spatial=diagonal_spatial,
            channels=channels,
            is_input=True,
            mean=examples.mean(1),
            mask=None if masks is None else torch.cat(masks),
            pattern=None if pattern is None else stack_patterns(*pattern),
        )

    def replace(self, **changes: Any) -> Kernel:
        """A copy with some fields changed (kernels are immutable); ``changes`` are fields of any of their types."""
        return dataclasses.replace(self, **changes)

    def weight_output(self, **changes: Any) -> Kernel:
        """``replace(**changes)`` for the output of a new weight layer (dense, convolution, attention): Gaussian,
        no longer the input, zero mean, no pending elementwise function or source, and randomness of its own (a new
        root, independent of every other layer's)."""
        new_layer = {"is_gaussian": True, "is_input": False, "mean": None, "source": None, "fn": None}
        return self.replace(**new_layer, roots=frozenset((object(),)), **changes)

    @property
    def n_spatial(self) -> int:
        return len(self.spatial_shape)

    @property
    def full(self) -> bool:
        """True for the full spatial layout (only meaningful with spatial axes)."""
        return not self.diagonal_spatial and self.n_spatial > 0

    @property
    def n1(self) -> int:
        return (self.nngp if self.nngp is not None else self.ntk).shape[0]

    def split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A per-example tensor ordered as ``cov`` -> its x1 and x2 parts (the same tensor twice if x1 is x2)."""
        return (t, t) if self.x1_is_x2 else (t[: self.n1], t[self.n1 :])

    @property
    def cov1(self) -> torch.Tensor:
        """(N1, *R) K(x1_i, x1_i)."""
        return self.split(self.cov)[0]

    @property
    def cov2(self) -> torch.Tensor | None:
        """(N2, *R) K(x2_j, x2_j), None when ``x1_is_x2``."""
        return None if self.x1_is_x2 else self.split(self.cov)[1]

    @property
    def mean1(self) -> torch.Tensor | None:
        return None if self.mean is None else self.split(self.mean)[0]

    @property
    def mean2(self) -> torch.Tensor | None:
        return None if self.mean is None else self.split(self.mean)[1]

    def sp_normalizer(self) -> int:
        """The width n by which ``nk.kernel`` normalises the standard-parameterization NTK, Θ = J Jᵀ / n
        (theory.md §4.4): the widest fan-in channel count of a weight layer after the input, or, if every weight
        layer reads the input, the widest of theirs; 1 for the NTK parameterization. Only standard-parameterization
        layers count, also in networks that mix the two (theory.md §4.4)."""
        hidden, input_fed = self.sp_width
        return hidden or input_fed or 1

    def neural_tangents_ntk(self) -> torch.Tensor | None:
        """Θ as neural-tangents defines it: ``ntk`` itself for the NTK parameterization, and for the standard
        one the unnormalised J Jᵀ at the module's finite widths (``ntk`` · :meth:`sp_normalizer` for results
        of ``nk.kernel``, which normalise it). None if the kernel has no NTK."""
        return None if self.ntk is None else self.ntk * self.ntk_divisor

    def variances(self) -> torch.Tensor:
        """The per-example, per-position variances (N1 + N2, *S), ordered as ``cov``: its spatial diagonal."""
        return spatial.spatial_diagonal(self.cov, self.n_spatial, self.full)

    def map(self, f: Callable[[torch.Tensor], torch.Tensor]) -> KernelTensors:
        """``f`` applied to nngp, ntk and cov (a linear map acting on the trailing layout axes), as keyword
        arguments for :meth:`replace`."""
        return {"nngp": f(self.nngp), "ntk": None if self.ntk is None else f(self.ntk), "cov": f(self.cov)}

    def activation(self, act: Activation) -> Kernel:
        """The kernel of φ applied to this layer's outputs, φ = ``act`` an elementwise activation
        (:func:`.transforms.activation`). The activations' own ``kernel_transform`` calls this: they live below
        the engine (:mod:`ntkit.gaussian`), so they reach its rule through the kernel they are given."""
        from .transforms import activation  # transforms builds on this module: imported when first needed

        return activation(self, act)

    def __repr__(self) -> str:
        def shape(t: torch.Tensor | None) -> str:
            return "None" if t is None else format_shape(t.shape)

        layout = "full" if self.full else "diagonal"
        flags = [name for name in ("x1_is_x2", "is_gaussian", "is_input") if getattr(self, name)]
        return (
            f"Kernel(nngp={shape(self.nngp)}, ntk={shape(self.ntk)}, cov1={shape(self.cov1)}, "
            f"cov2={shape(self.cov2)}, spatial={format_shape(self.spatial_shape)} {layout}, "
            f"channels={self.channels}" + "".join(", " + f for f in flags) + ")"
        )


#: The kernels flowing between layers: one :class:`Kernel`, or one per tensor where a network carries several
#: (several inputs, ``FanOut``, ``Parallel(..., fan_in=None)``; ``ntkit.nn.combinators``).
Kernels = Kernel | tuple[Kernel, ...]


def _gram(a: torch.Tensor, b: torch.Tensor, n_spatial: int, full: bool, pair: bool) -> torch.Tensor:
    """Σ_c a_c(s) b_c(s') over channels for every pair of examples (pair) or per example (not pair).

    a: (N1, C, *S), b: (N2, C, *S) (b is a when not pair). Returns (N1, N2, *R) or (N1, *R).
    """
    if n_spatial == 0:  # plain matrix products (no einsum parsing)
        return a @ b.T if pair else (a * a).sum(1)
    letters = "abdefghijklopqrstuvwxyz"  # all but c (channels), m and n (examples)
    if 2 * n_spatial > len(letters):
        raise UnsupportedError(f"at most {len(letters) // 2} spatial axes are supported, got {n_spatial}.")
    s1 = letters[:n_spatial]
    s2 = letters[n_spatial : 2 * n_spatial] if full else s1
    out_spatial = "".join(x + y for x, y in zip(s1, s2, strict=True)) if full else s1
    eq = f"nc{s1},mc{s2}->nm{out_spatial}" if pair else f"nc{s1},nc{s2}->n{out_spatial}"
    return torch.einsum(eq, a, b)
