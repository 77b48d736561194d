"""``nk.approx.nystrom(kernel_fn, landmarks)``: Nyström features of any exact kernel, the generic fallback.

With M landmarks z and K_zz = U Λ Uᵀ (eigendecomposition in float64, eigenvalues below ``rcond`` × the largest
dropped), the features are

    φ(x) = K(x, z) U_r Λ_r^{-1/2},   so   φ(x)·φ(y) = K(x, z) K_zz⁺ K(z, y)

(Williams & Seeger 2001, "Using the Nyström Method to Speed Up Kernel Machines"): exact on the landmarks and a
rank-r approximation elsewhere. With every training point as a landmark, ``nk.approx.ridge`` on these features
is exact kernel ridge regression (ΦΦᵀ = K on the training set, Φ_*Φᵀ = K_*).

The kernel comes from a network (``nk.kernel``), a function, or an ``ntkit.scale`` store of K(x, x) over a set
of examples; with a store, landmarks and inputs are integer indices of the store's examples (K(x, z) is read
from the stored tiles).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .._memory import resolve_budget
from .._validation import check_tensor, format_shape
from ..errors import InvalidArgumentError, NotPSDError, ShapeError, UnsupportedError
from ..infinite.compute import kernel
from ..infinite.kernel_type import Kernel
from .features import progress_bar

__all__ = ["NystromFeatures", "nystrom"]

KernelFn = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | Kernel"]


def nystrom(
    kernel_fn: nn.Module | KernelFn | Any,
    landmarks: torch.Tensor,
    *,
    get: str = "ntk",
    rcond: float = 1e-10,
    memory_budget: int | str | None = None,
    progress: bool = False,
) -> NystromFeatures:
    """Nyström features (module doc) of ``kernel_fn`` with the given landmarks.

    Args:
        kernel_fn: a network (its exact kernel ``nk.kernel(net, a, b, get=get)``), a function ``(a, b) ->``
            kernel: a tensor (Na, Nb) or an ``nk.Kernel`` (its ``get`` part is used), or an
            ``ntkit.scale.KernelStore`` of a symmetric kernel K(x, x) (complete).
        landmarks: (M, ...) inputs z, or with a store (M,) integer indices of its examples; the number of
            features is at most M.
        get: "ntk" or "nngp", for networks and functions returning an ``nk.Kernel``.
        rcond: eigenvalues of K_zz below ``rcond`` × the largest are dropped (the pseudo-inverse's cut-off).
        memory_budget: bytes (or "4G") for a batch of K(x, z); default a quarter of free memory.
        progress: a tqdm bar over the batches.

    Returns:
        :class:`NystromFeatures`: ``feats(x)`` (N, r) features, r = the rank kept; ``feats.batches(x)`` as for
        ``nk.approx.features``; usable with ``nk.approx.ridge``.
    """
    if get not in ("nngp", "ntk"):
        raise InvalidArgumentError(f"get must be 'nngp' or 'ntk', got {get!r}.")
    if not isinstance(rcond, float | int) or not 0 <= rcond < 1:
        raise InvalidArgumentError(f"rcond must be a number in [0, 1), got {rcond!r}.")
    if _is_store(kernel_fn):
        fn: KernelFn = _StoreKernel(kernel_fn, get)
        z = check_tensor(landmarks, "landmarks", ndim=1, allow_integer=True)
        if z.is_floating_point():
            raise InvalidArgumentError("with a KernelStore, landmarks are integer indices of the store's examples.")
        return NystromFeatures(fn, z, get, float(rcond), memory_budget, progress)
    if isinstance(kernel_fn, nn.Module):
        net = kernel_fn

        def evaluate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | Kernel:
            return kernel(net, a, b, get=get)

        fn = evaluate
    elif callable(kernel_fn):
        fn = kernel_fn
    else:
        raise InvalidArgumentError(f"kernel_fn must be a network or a function (a, b) -> kernel, got {kernel_fn!r}.")
    z = check_tensor(landmarks, "landmarks", min_ndim=2)
    return NystromFeatures(fn, z, get, float(rcond), memory_budget, progress)


def _is_store(obj: object) -> bool:
    """An ``ntkit.scale.KernelStore`` (checked by name: importing ntkit.scale needs its extra)."""
    return any(c.__name__ == "KernelStore" and c.__module__.startswith("ntkit.scale") for c in type(obj).__mro__)


class _StoreKernel:
    """K(a, b) read from a stored symmetric kernel, for integer index tensors a (Na,) and b (Nb,)."""

    def __init__(self, store: Any, get: str) -> None:
        if get not in store.kernels:
            raise InvalidArgumentError(f"the store at {store.location} holds {store.kernels}, not {get!r}.")
        if not store.symmetric or not store.complete:
            raise UnsupportedError(
                f"nystrom needs a complete store of a symmetric kernel K(x, x); the store at {store.location} is "
                f"{'incomplete' if store.symmetric else 'of K(x1, x2)'}. Finish it with nk.scale.kernel(net, x, "
                "store=...)."
            )
        self.array, self.n, self.dtype = getattr(store, get), store.shape[0], store.dtype

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        for name, idx in (("x", a), ("landmarks", b)):
            if idx.is_floating_point() or int(idx.min()) < 0 or int(idx.max()) >= self.n:
                raise InvalidArgumentError(
                    f"with a KernelStore, {name} must be integer indices in [0, {self.n}) of the store's examples."
                )
        rows = self.array[a.cpu().numpy()][:, b.cpu().numpy()].compute()
        return torch.from_numpy(rows).to(a.device)


class NystromFeatures:
    """φ(x) = K(x, z) U_r Λ_r^{-1/2} (see :func:`nystrom`); ``n_features`` = r."""

    def __init__(
        self,
        kernel_fn: KernelFn,
        landmarks: torch.Tensor,
        get: str,
        rcond: float,
        memory_budget: int | str | None,
        progress: bool,
    ) -> None:
        self.kernel_fn, self.landmarks, self.get = kernel_fn, landmarks, get
        self.memory_budget, self.progress = memory_budget, progress
        k_zz = self._kernel(landmarks, landmarks)
        #: dtype of the features when the inputs are indices (otherwise the inputs' dtype).
        self.dtype = k_zz.dtype
        k_zz = k_zz.to(torch.float64)
        k_zz = (k_zz + k_zz.T) / 2
        eigenvalues, vectors = torch.linalg.eigh(k_zz)
        top = float(eigenvalues[-1])
        if top <= 0 or float(eigenvalues[0]) < -1e-6 * top:
            raise NotPSDError(
                f"the landmarks' kernel has eigenvalues from {float(eigenvalues[0]):.3g} to {top:.3g}: it is not "
                "positive semi-definite. Check kernel_fn, or compute it in float64."
            )
        keep = eigenvalues > rcond * top
        #: U_r Λ_r^{-1/2}, (M, r) in float64.
        self.projection = vectors[:, keep] / eigenvalues[keep].sqrt()
        self.n_features = int(keep.sum())

    def _kernel(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = self.kernel_fn(a, b)
        if isinstance(out, Kernel):
            part = getattr(out, self.get)
            if part is None:
                raise UnsupportedError(f"kernel_fn returned an nk.Kernel without its {self.get!r} part.")
            out = part
        if not isinstance(out, torch.Tensor) or out.shape != (a.shape[0], b.shape[0]):
            shape = format_shape(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ShapeError(
                f"kernel_fn(a, b) must return a ({a.shape[0]}, {b.shape[0]}) tensor or nk.Kernel for {a.shape[0]} "
                f"and {b.shape[0]} inputs, got {shape}."
            )
        return out

    def __call__(self, x: torch.Tensor, *, progress: bool | None = None) -> torch.Tensor:
        """φ(x): (N, ...) -> (N, r) in x's dtype (the kernel's for indices into a store)."""
        return torch.cat([phi for _, phi in self.batches(x, progress=progress)])

    def batches(self, x: torch.Tensor, *, progress: bool | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        """(rows, φ(x[rows])) for batches whose K(x, z) fits the memory budget."""
        x = check_tensor(x, "x", min_ndim=1, allow_integer=not self.landmarks.is_floating_point())
        if x.shape[1:] != self.landmarks.shape[1:]:
            raise ShapeError(
                f"x has shape {format_shape(x.shape)} but the landmarks are {format_shape(self.landmarks.shape)}; "
                "pass inputs of the landmarks' per-example shape."
            )
        budget = resolve_budget(self.memory_budget, x.device)
        per_example = 8 * 4 * (self.landmarks.shape[0] + self.n_features)  # K(x, z), its float64 copy, φ
        size = max(1, min(x.shape[0], budget // per_example))
        starts = range(0, x.shape[0], size)
        report = progress_bar(progress if progress is not None else self.progress, len(starts), "Nyström")
        projection = self.projection.to(x.device)
        dtype = x.dtype if x.is_floating_point() else self.dtype
        for start in starts:
            rows = slice(start, min(start + size, x.shape[0]))
            k_xz = self._kernel(x[rows], self.landmarks.to(x.device)).to(torch.float64)
            yield rows, (k_xz @ projection).to(dtype)
            report(1)
        report(None)
