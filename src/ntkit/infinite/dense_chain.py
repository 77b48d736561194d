"""A fast path of ``nk.kernel`` for the commonest architecture: dense layers and ReLU-family activations.

The generic path runs each layer's kernel map (``transforms``) on every tile: about 20 eager passes per layer
and several fresh kernel-sized tensors, whose first touch and Python dispatch cost more than the arithmetic. A chain

    weight_layer (dense) -> [ReLU / LeakyReLU / Abs / ABReLU] -> weight_layer -> ...

(``ntkit.nn.Linear``, ``torch.nn.Linear`` through the registry, any module whose kernel map is
:func:`~ntkit.infinite.transforms.weight_layer` without a geometry, and :func:`~ntkit.infinite.transforms.activation`
of a Gaussian layer with an :class:`~ntkit.nn.ABReLU`) is recognised during the planning dry run: those maps
record a :class:`DenseStep` or :class:`ArcCosineStep`, and the chain is used only if the steps link the input
kernel to the output kernel with nothing else in between (so any other layer, even one registered by a user
that merely returns ``k.replace(...)``, keeps the generic path). Each tile then runs the same recursions
(theory.md §4.1-4.2) with ``out=`` and in-place operations on per-worker buffers that are reused from tile to
tile and call to call (on a GPU, where one block is usually the whole kernel, fresh ones per block from the caching
allocator, so that no GPU memory stays pinned between calls): no kernel-sized tensor is allocated per layer, and
the per-example variances, their square roots and reciprocals are computed once per call for all examples
(vectors), not per tile.

Numbers: the same formulas in the same order as ``transforms.weight_layer`` and ``activations._arc_cosine_fast``
up to the association of a few products (round-off); tests compare both paths to 1e-12 in float64.
"""

from __future__ import annotations

import math
import threading
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from .kernel_type import Kernel

__all__ = [
    "ArcCosineStep",
    "DenseStep",
    "chain_recorder",
    "chain_variances",
    "is_linked",
    "linked_chain",
    "record_step",
    "run_chain_tile",
]

_TWO_PI = 2 * math.pi


@dataclass(frozen=True)
class DenseStep:
    """A dense ``weight_layer``: K' = W_var·K + b_var; Θ' = K' + W_var·Θ ("ntk") or
    in_channels·K + [bias] + W_var·Θ ("standard", unnormalised)."""

    W_var: float
    b_var: float | None
    parameterization: str
    in_channels: int


@dataclass(frozen=True)
class ArcCosineStep:
    """An :class:`~ntkit.nn.ABReLU`-family activation of a Gaussian layer, p = a² + b², q = 2ab."""

    p: float
    q: float


Step = DenseStep | ArcCosineStep

#: (input kernel, output kernel, step) of one recognised map; the step is one of this module's or of
#: :mod:`.conv_chain` (which builds on this module, so the type here is ``object``; readers check it).
Record = tuple[Kernel, Kernel, object]

#: Set by the planning dry run: the records of the recognised maps, in order.
_RECORDER: ContextVar[list[Record] | None] = ContextVar("ntkit_dense_chain_recorder", default=None)


def chain_recorder() -> ContextVar[list[Record] | None]:
    """The context variable the planning dry run sets to a list to collect steps."""
    return _RECORDER


def record_step(k_in: Kernel, k_out: Kernel, step: object) -> None:
    """Note that ``k_out`` is ``step`` applied to ``k_in`` (a no-op outside the planning dry run)."""
    records = _RECORDER.get()
    if records is not None:
        records.append((k_in, k_out, step))


def is_linked(records: list[Record], k_input: Kernel, k_output: Kernel) -> bool:
    """Whether the recorded steps map ``k_input`` to ``k_output`` one after the other (no other map ran)."""
    if not records or records[0][0] is not k_input or records[-1][1] is not k_output:
        return False
    return all(records[i][0] is records[i - 1][1] for i in range(1, len(records)))


def linked_chain(records: list[Record], k_input: Kernel, k_output: Kernel) -> tuple[Step, ...] | None:
    """The steps if they map ``k_input`` to ``k_output`` one after the other and are all dense layers and
    arc-cosine activations (else None: another map ran, or a weight layer with tensor variances, which records no
    step)."""
    if not is_linked(records, k_input, k_output):
        return None
    if not isinstance(records[0][2], DenseStep):
        return None
    steps: list[Step] = []
    for _, _, step in records:
        if not isinstance(step, DenseStep | ArcCosineStep):
            return None
        steps.append(step)
    return tuple(steps)


@dataclass(frozen=True)
class _Variances:
    """Per-example vectors (all examples, ordered as ``Kernel.cov``) that an arc-cosine step needs."""

    inv_sd: torch.Tensor  # 1/√var
    inv_sd_grown: torch.Tensor  # 1/√var / (1 − 8ε)
    sd_scaled: torch.Tensor  # √var · √2 (p − q) / 2π
    sd: torch.Tensor  # √var
    out: torch.Tensor  # the activation's own variance p/2 · var
    any_zero: bool


def chain_variances(steps: tuple[Step, ...], var0: torch.Tensor) -> tuple[list[_Variances | None], torch.Tensor]:
    """The per-example variances through the chain, from var0 = K(x, x) of the inputs: for each step the
    vectors an arc-cosine step needs (None for dense steps), and the output's variances (``Kernel.cov``)."""
    grow = 1.0 / (1.0 - 8.0 * torch.finfo(var0.dtype).eps)
    out: list[_Variances | None] = []
    var = var0
    for step in steps:
        if isinstance(step, DenseStep):
            var = (var * step.W_var).add_(0.0 if step.b_var is None else step.b_var)
            out.append(None)
        else:
            sd = torch.sqrt(var)
            inv = sd.reciprocal()
            new = var * (step.p / 2)
            scaled = sd * (math.sqrt(2) * (step.p - step.q) / _TWO_PI)
            out.append(_Variances(inv, inv * grow, scaled, sd, new, bool((var == 0).any())))
            var = new
    return out, var


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a 0-dim tensor (as the first operand of add/sub: value + alpha·t in one pass), cached."""
    return _BUFFERS.scalar(value, like.dtype, like.device)


class _Buffers(threading.local):
    """Per-thread scratch: four flat tensors reused by every tile of this thread, and 0-dim constants."""

    def get(self, n: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        if device.type != "cpu":  # GPU blocks are large; the caching allocator reuses freed memory without pinning it
            return [torch.empty(n, dtype=dtype, device=device) for _ in range(4)]
        bufs = getattr(self, "bufs", None)
        if bufs is None or bufs[0].numel() < n or bufs[0].dtype != dtype or bufs[0].device != device:
            bufs = [torch.empty(n, dtype=dtype, device=device) for _ in range(4)]
            self.bufs = bufs
        return bufs

    def scalar(self, value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        cache: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = self.__dict__.setdefault("scalars", {})
        key = (value, dtype, device)
        if key not in cache:
            if len(cache) > 64:
                cache.clear()
            cache[key] = torch.tensor(value, dtype=dtype, device=device)
        return cache[key]


_BUFFERS = _Buffers()


def run_chain_tile(
    steps: tuple[Step, ...],
    variances: list[_Variances | None],
    a: torch.Tensor,
    b: torch.Tensor,
    i1: slice,
    i2: slice,
    diagonal: bool,
    need_ntk: bool,
    equal: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(K, Θ) of the chain's output for inputs a (b1, D) and b (b2, D), in this thread's buffers (valid until its
    next tile). ``i1``, ``i2`` index a's and b's examples in the per-example vectors; ``diagonal``: a is b (the
    batch diagonal then holds each example's own variance exactly, as ``transforms.elementwise`` makes it).
    ``equal``: (i, j, var) for the pairs with a[i] equal to b[j] (:mod:`.duplicates`), whose input kernel is set
    to the example's own variance var, as ``Kernel.from_inputs`` does.

    An activation leaves Θ·Ṫ pending (Ṫ in its buffer) so that the dense layer after it forms
    Θ' = K' + W_var·Θ·Ṫ in one pass."""
    b1, b2 = a.shape[0], b.shape[0]
    n = b1 * b2
    k_buf, t_buf, r_buf, a_buf = (t[:n].view(b1, b2) for t in _BUFFERS.get(n, a.dtype, a.device))
    K = torch.mm(a, b.T, out=k_buf).div_(a.shape[1])  # the input's kernel x·x' / D
    if equal is not None:
        K[equal[0], equal[1]] = equal[2]
    theta, dot = None, None  # Θ = 0 at the input; Θ·dot is the NTK when dot is not None
    for step, v in zip(steps, variances, strict=True):
        if isinstance(step, DenseStep):
            bias = 0.0 if step.b_var is None else step.b_var
            if need_ntk and step.parameterization == "standard":  # Θ' = in_channels·K + [bias] + W_var·Θ
                theta = (
                    torch.mul(K, step.in_channels, out=t_buf)
                    if theta is None
                    else (theta if dot is None else theta.mul_(dot)).mul_(step.W_var).add_(K, alpha=step.in_channels)
                ).add_(0.0 if step.b_var is None else 1.0)
            K = torch.add(_scalar(bias, K), K, alpha=step.W_var, out=K)  # K' = b_var + W_var·K, one pass
            if need_ntk and step.parameterization == "ntk":  # Θ' = K' + W_var·Θ
                if theta is None:
                    theta = t_buf.copy_(K)
                elif dot is None:
                    theta = torch.add(K, theta, alpha=step.W_var, out=theta)
                else:
                    theta = torch.addcmul(K, theta, dot, value=step.W_var, out=theta)
            dot = None
        else:
            assert v is not None  # chain_variances gives every arc-cosine step its vectors
            r, dot = _arc_cosine(step, v, K, r_buf, a_buf, i1, i2)
            if diagonal:
                r.diagonal().copy_(v.out[i1])
            K, r_buf = r, K
    if dot is not None and theta is not None:
        theta.mul_(dot)
    return K, theta


def _arc_cosine(
    step: ArcCosineStep,
    v: _Variances,
    K: torch.Tensor,
    r_buf: torch.Tensor,
    a_buf: torch.Tensor,
    i1: slice,
    i2: slice,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, Ṫ) = (E[φ(u) φ(v)], E[φ'(u) φ'(v)]) into ``r_buf`` and ``a_buf`` (``activations._arc_cosine_fast``):

    ρ = clamp(K / √(v1 v2) / (1 − 8ε), ±1),  Ṫ = p/2 + (q − p)·arccos ρ / 2π,
    T = √2 (p − q)/2π · √v1 √v2 · √(D − D²/2) + Ṫ·K,  D = 1 − |ρ|  (so D − D²/2 = (1 − ρ²)/2, exact near |ρ| = 1).
    """
    rho = torch.mul(K, v.inv_sd[i1, None], out=r_buf).mul_(v.inv_sd_grown[i2])
    if v.any_zero:  # 0/0 at a zero variance: ρ = 1 (ϑ = 0, the ρ → 1 limit)
        rho.nan_to_num_(nan=1.0)
    rho.clamp_(-1.0, 1.0)
    angle = torch.acos(rho, out=a_buf)
    dot = torch.add(_scalar(step.p / 2, K), angle, alpha=(step.q - step.p) / _TWO_PI, out=angle)
    t = torch.sub(_scalar(1.0, K), rho.abs_(), out=rho).addcmul_(rho, rho, value=-0.5).sqrt_()
    return t.mul_(v.sd_scaled[i1, None]).mul_(v.sd[i2]).addcmul_(dot, K), dot
