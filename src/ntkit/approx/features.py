"""``nk.approx.features(net, n_features, get, method, seed)``: explicit features φ(x) with φ(x)·φ(y) ≈ the
infinite-width NNGP or NTK of ``net`` (docs/approx.md; Zandieh et al. 2021, Algorithm 1 and section 4).

The features follow the kernel recursion of theory.md §4.1 layer by layer, with ψ_K features of the NNGP K and
ψ_Θ features of the NTK Θ of the current layer (input: ψ_K = x/√d, no Θ):

- Linear (NTK parameterization):  ψ_K' = [W_std ψ_K, b_std],  ψ_Θ' = [ψ_K', W_std ψ_Θ]
  (K' = W_std² K + b_std², Θ' = K' + W_std² Θ, exactly);
- Linear (standard parameterization): ψ_Θ' = [√n_in ψ_K, 1, W_std ψ_Θ] (Θ' = n_in K + 1 + W_std² Θ), and
  the final ψ_Θ divided by √n for the widest hidden width n, as ``nk.kernel`` normalises (theory.md §4.4);
- activation φ: ψ_K' = f(ψ_K), ψ_Θ' = TensorSketch(ψ_Θ, f'(ψ_K)) (Θ' = Θ ⊙ Ṫ: the sketch of the tensor
  product ψ_Θ ⊗ f', unbiased for the product of inner products), with f, f' from ``activation_features``.

Given the features of its input, every step is unbiased, so for one hidden layer E[φ(x)·φ(y)] is exactly the
kernel; deeper, T is applied to an estimate of K and the features are consistent (error O(1/√m)) but not
unbiased. Randomness comes from a ``torch.Generator`` seeded with ``seed``, never the global generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .._memory import check_fits, resolve_budget
from .._validation import check_tensor, format_shape
from ..errors import InvalidArgumentError, ShapeError, UnsupportedError
from ..gaussian.activations import Activation, compose
from ..nn.linear import Linear
from ..nn.reshape import Flatten, Identity
from .activation_features import ActivationFeatures, HermiteSketchFeatures, RandomActivationFeatures
from .sketches import TensorSketch

__all__ = ["FeatureMap", "features", "progress_bar"]

METHODS = ("random_features", "sketch")
_EXACT_HINT = (
    "Compute its kernel exactly with nk.kernel (up to ~10^4-10^5 examples), or approximate it with "
    "nk.approx.nystrom(lambda a, b: nk.kernel(net, a, b).ntk, landmarks)."
)


@dataclass(frozen=True)
class _Dense:
    W_std: float
    b_std: float | None
    parameterization: str
    in_features: int


@dataclass
class _Activation:
    act: Activation
    features: ActivationFeatures | None = None
    product: TensorSketch | None = None  # ψ_Θ ⊗ f' -> ψ_Θ'


_Step = _Dense | _Activation


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
        net: an ``ntkit.nn.Sequential`` (or ``torch.nn.Sequential``) of ``ntkit.nn.Linear`` layers and
            ``ntkit.nn`` activations (Identity and Flatten of flat inputs pass through; two activations in a row
            are composed). Anything else raises :class:`UnsupportedError` pointing to the exact kernel.
        n_features: F, the number of features (columns of φ(x)).
        get: "nngp" or "ntk".
        method: "random_features" (φ(Gᵀψ)/√m per activation: arc-cosine features for the ReLU family) or
            "sketch" (truncated Hermite/arc-cosine series of each activation with PolySketch features).
        seed: the seed of the ``torch.Generator`` that draws every projection and hash.
        degree: q, the truncation degree of the series of the "sketch" method (the tail beyond goes into one
            extra degree so the diagonal stays unbiased).
        memory_budget: bytes (or "4G") for a batch of features; default a quarter of free memory.
        progress: a tqdm bar over batches (needs tqdm).

    Returns:
        :class:`FeatureMap`: ``feats(x)`` maps (N, d) inputs to (N, F) features on x's device, in x's dtype.
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
    steps = _parse(net)
    return FeatureMap(steps, n_features, get, method, seed, degree, memory_budget, progress)


def _parse(net: nn.Module) -> list[_Step]:
    """The network as dense and activation steps (consecutive activations composed into one)."""
    steps: list[_Step] = []
    for layer in _layers(net):
        if isinstance(layer, Linear):
            # W_std/b_std given as tensors are read as numbers: features are not differentiable in them
            b_std = None if layer.b_std is None else float(layer.b_std)
            steps.append(_Dense(float(layer.W_std), b_std, layer.parameterization, layer.in_features))
        elif isinstance(layer, Activation):
            if not steps:
                raise UnsupportedError(
                    f"{type(layer).__name__} is applied to the network input, which is not random: apply it to "
                    "the data first, or start the network with a Linear layer."
                )
            if isinstance(steps[-1], _Activation):
                steps[-1] = _Activation(compose(steps[-1].act, layer))
            else:
                steps.append(_Activation(layer))
        elif not isinstance(layer, Identity | Flatten):
            plain = type(layer).__module__.startswith("torch.nn")
            hint = (
                "Build the network from ntkit.nn layers (parameterization='standard' for PyTorch's). " if plain else ""
            )
            raise UnsupportedError(
                hint
                + f"nk.approx.features does not support {type(layer).__name__} layers: it supports ntkit.nn.Linear, "
                "ntkit.nn activations, Identity and Flatten (dense networks; convolutions and pooling are not "
                "implemented). " + _EXACT_HINT
            )
    dense = [s for s in steps if isinstance(s, _Dense)]
    if not dense or not isinstance(steps[0], _Dense):
        raise UnsupportedError("nk.approx.features needs a network that starts with an ntkit.nn.Linear layer.")
    if not any(isinstance(s, _Activation) for s in steps):
        raise UnsupportedError(
            "this network has no activation: its kernels are linear in x·y, so use nk.kernel (exact and cheap)."
        )
    if len({d.parameterization for d in dense}) > 1:
        raise UnsupportedError(
            "this network mixes the 'ntk' and 'standard' parameterizations; use one for every layer (as nk.kernel)."
        )
    return steps


def _layers(net: nn.Module) -> Iterator[nn.Module]:
    if isinstance(net, nn.Sequential):
        for layer in net:
            yield from _layers(layer)
    else:
        yield net


class FeatureMap:
    """φ: (N, d) -> (N, n_features) with φ(x1) φ(x2)ᵀ ≈ the ``get`` kernel of the network (``features``).

    Deterministic: the same seed gives the same features on every call and device (up to round-off).
    """

    def __init__(
        self,
        steps: list[_Step],
        n_features: int,
        get: str,
        method: str,
        seed: int,
        degree: int,
        memory_budget: int | str | None,
        progress: bool,
    ) -> None:
        self.n_features, self.get, self.method, self.seed, self.degree = n_features, get, method, seed, degree
        self.memory_budget, self.progress = memory_budget, progress
        first = steps[0]
        assert isinstance(first, _Dense)
        self.in_features = first.in_features
        hidden = [s.in_features for s in steps[1:] if isinstance(s, _Dense)]
        self._standard_scale = 1 / math.sqrt(max(hidden, default=first.in_features))
        self._standard = first.parameterization == "standard"
        width, sketch_width = self._allocate(steps)
        generator = torch.Generator().manual_seed(seed)
        self.steps = self._draw(steps, width, sketch_width, generator)

    # ----------------------------------------------------------------------------------------- construction

    def _dims(self, steps: list[_Step], width: int, sketch_width: int) -> tuple[int, int, int]:
        """(dim ψ_K, dim ψ_Θ, the widest per-example intermediate) at the output, for activation features of
        ``width`` and products sketched to ``sketch_width``."""
        dk, dt, widest = self.in_features, 0, self.in_features
        for step in steps:
            if isinstance(step, _Dense):
                dk, dt = dk + (step.b_std is not None), dk + (step.b_std is not None) + dt
            else:
                dk, dt = width, sketch_width
            widest = max(widest, dk + dt)
        return dk, dt, widest

    def _allocate(self, steps: list[_Step]) -> tuple[int, int]:
        """(m, m_s): activation features of m and products of m_s dimensions so the output has n_features."""
        f = self.n_features
        sketch_width = 0 if self.get == "nngp" else f // 2
        while sketch_width >= 0:
            at0 = self._output_dim(steps, 0, sketch_width)
            slope = self._output_dim(steps, 1, sketch_width) - at0
            width, rest = divmod(f - at0, slope) if slope else (0, 1)
            if rest == 0 and width >= 2 + self.degree:
                return width, sketch_width
            sketch_width -= 1
        raise InvalidArgumentError(
            f"n_features={f} is too small for this network (every activation needs at least degree + 2 = "
            f"{self.degree + 2} features and every bias one more); use a few hundred or more."
        )

    def _output_dim(self, steps: list[_Step], width: int, sketch_width: int) -> int:
        dk, dt, _ = self._dims(steps, width, sketch_width)
        return dk if self.get == "nngp" else dt

    def _draw(self, steps: list[_Step], width: int, sketch_width: int, generator: torch.Generator) -> list[_Step]:
        """The steps with their random features and sketches, drawn in order from ``generator``."""
        drawn: list[_Step] = []
        dk, dt = self.in_features, 0
        for step in steps:
            if isinstance(step, _Dense):
                drawn.append(step)
                dk, dt = dk + (step.b_std is not None), dk + (step.b_std is not None) + dt
                continue
            feats: ActivationFeatures
            if self.method == "random_features":
                feats = RandomActivationFeatures(step.act, dk, width, generator)
            else:
                feats = HermiteSketchFeatures(step.act, dk, width, self.degree, generator)
            product = TensorSketch(dt, width, sketch_width, generator) if self.get == "ntk" else None
            drawn.append(_Activation(step.act, feats, product))
            dk, dt = width, sketch_width
        self._widest = self._dims(steps, width, sketch_width)[2]
        return drawn

    # ----------------------------------------------------------------------------------------- evaluation

    def __call__(self, x: torch.Tensor, *, progress: bool | None = None) -> torch.Tensor:
        """φ(x): (N, d) -> (N, n_features), on x's device and in x's dtype."""
        x = self._check(x)
        budget = resolve_budget(self.memory_budget, x.device)
        itemsize = x.element_size()
        check_fits(
            x.shape[0] * self.n_features * itemsize,
            budget,
            f"the features of {x.shape[0]} examples ({x.shape[0]} x {self.n_features})",
            "Use nk.approx.ridge (it accumulates over batches), FeatureMap.batches, or raise memory_budget.",
        )
        out = x.new_empty((x.shape[0], self.n_features))
        for rows, phi in self.batches(x, progress=progress):
            out[rows] = phi
        return out

    def batches(self, x: torch.Tensor, *, progress: bool | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        """(rows, φ(x[rows])) for batches of rows sized to the memory budget (never all of φ(x) at once)."""
        x = self._check(x)
        budget = resolve_budget(self.memory_budget, x.device)
        per_example = 8 * x.element_size() * (self._widest + self.n_features)
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
        x = check_tensor(x, "x", ndim=2)
        if x.shape[1] != self.in_features:
            raise ShapeError(
                f"x has shape {format_shape(x.shape)} but the network's first Linear layer takes "
                f"{self.in_features} features; pass (N, {self.in_features}) inputs."
            )
        return x

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """The recursion of the module doc on one batch: (B, d) -> (B, n_features)."""
        need_ntk = self.get == "ntk"
        psi_k = x / math.sqrt(x.shape[1])
        psi_t: torch.Tensor | None = None
        for step in self.steps:
            if isinstance(step, _Dense):
                bias = [] if step.b_std is None else [psi_k.new_full((psi_k.shape[0], 1), step.b_std)]
                new_k = torch.cat([step.W_std * psi_k, *bias], dim=1)
                if need_ntk:
                    scaled = [] if psi_t is None else [step.W_std * psi_t]
                    if self._standard:
                        ones = [torch.ones_like(b) for b in bias]
                        psi_t = torch.cat([math.sqrt(step.in_features) * psi_k, *ones, *scaled], dim=1)
                    else:
                        psi_t = torch.cat([new_k, *scaled], dim=1)
                psi_k = new_k
            else:
                assert step.features is not None
                psi_k, derivative = step.features(psi_k, need_ntk)
                if need_ntk:
                    assert step.product is not None and psi_t is not None and derivative is not None
                    psi_t = step.product(psi_t, derivative)
        if not need_ntk:
            return psi_k
        assert psi_t is not None
        return psi_t * self._standard_scale if self._standard else psi_t

    def __repr__(self) -> str:
        return (
            f"FeatureMap(n_features={self.n_features}, get={self.get!r}, method={self.method!r}, seed={self.seed}, "
            f"in_features={self.in_features})"
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
