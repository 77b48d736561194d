"""The pieces an empirical NTK is summed from, and their pairwise contractions.

Θ̂(x, x') = Σ_θ J_θ(x) J_θ(x')ᵀ is a sum over parameter tensors θ (theory.md §1.3, eq. 4). Each term of the
sum is held, for a batch of examples, in one of three forms:

- :class:`JacobianTerm`: the per-example Jacobian J, shape (N, O, P). Contraction costs N1·N2·O·P (traced)
  or N1·N2·O²·P (full).
- :class:`GramTerm`: a weight used as ``y_l = W a_l`` at positions l (a linear layer on sequences, the
  unfolded patches of a convolution), stored as its inputs A (N, K, L, d_in) and output cotangents
  G (N, O, K, L, d_out) for K independent blocks (convolution groups). Then J(x) = Σ_l g_l a_lᵀ and

      Θ̂_W(x, x')_{oo'} = Σ_k Σ_{l,l'} (a_{kl} · a'_{kl'}) (g_{okl} · g'_{o'kl'}),

  which for one position is (A1 A2ᵀ) ⊙ (G1 G2ᵀ) and costs N1·N2·L1·L2·(d_in + O·d_out) instead of
  N1·N2·O·d_in·d_out.
- :class:`FactoredJacobianTerm`: the same factors, contracted through J(x) = Σ_l g_l a_lᵀ, which is formed
  one parameter at a time when a block is contracted, in a reused buffer (:class:`Workspace`), so the
  Jacobians of all parameters never coexist. Cheaper than the Gram form when L is large (convolutions).
- :class:`IndexTerm`: an embedding table looked up at indices i_l with output cotangents g_l: the input
  Gram is the index equality [i_l = i'_{l'}], so no one-hot Jacobian is ever formed.

Every ``pair`` returns the block (N1, N2) summed over the O outputs (the caller divides by O for the traced
kernel), or the full block (N1, N2, O, O); every ``diag`` returns the same for matching rows of two
batches: (N,) or (N, O, O). Both take an optional :class:`Workspace` for scratch buffers; a ``pair`` may return
a view of them, valid until the workspace's next contraction (:func:`contract` adds it to a fresh total at once).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

__all__ = [
    "FactoredJacobianTerm",
    "GramTerm",
    "IndexTerm",
    "JacobianTerm",
    "Term",
    "Workspace",
    "contract",
    "contract_diagonal",
]


class Workspace:
    """Scratch buffers reused from one contraction to the next. A fresh large tensor costs page faults on
    first touch, about as long as the matrix product that fills it; a reused one does not."""

    def __init__(self) -> None:
        self._buffers: dict[Hashable, torch.Tensor] = {}

    def take(self, slot: Hashable, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` with ``like``'s dtype and device, from buffer ``slot``."""
        size = math.prod(shape)
        buf = self._buffers.get(slot)
        if buf is None or buf.numel() < size or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.empty(size, dtype=like.dtype, device=like.device)
            self._buffers[slot] = buf
        return buf[:size].view(shape)


@dataclass
class JacobianTerm:
    """J of shape (N, O, P): d f_o(x_n) / d θ_p for one parameter tensor (or several, concatenated)."""

    J: torch.Tensor

    def pair(self, other: JacobianTerm, full: bool, workspace: Workspace | None = None) -> torch.Tensor:
        (n1, o, p), n2 = self.J.shape, other.J.shape[0]
        if not full:
            return self.J.reshape(n1, o * p) @ other.J.reshape(n2, o * p).T
        block = self.J.reshape(n1 * o, p) @ other.J.reshape(n2 * o, p).T
        return block.reshape(n1, o, n2, o).permute(0, 2, 1, 3)

    def diag(self, other: JacobianTerm, full: bool, workspace: Workspace | None = None) -> torch.Tensor:
        if not full:
            return (self.J * other.J).sum((1, 2))
        return torch.einsum("nap,nbp->nab", self.J, other.J)


#: Examples per block row of the symmetric block x2 = x1 of the traced kernel, computed on and above its diagonal
#: blocks only (:func:`_gram`, :func:`contract`): from 2 block rows of this many on (256 examples), the Gram products
#: skip the blocks below the diagonal. Smaller blocks run too far below the matrix-product rate to gain (one core,
#: 512 features: 256 rows 0.35 -> 0.30 ms, 512 rows 1.33 -> 0.99 ms; 128 rows no gain).
BLOCK_ROWS = 128


def _block_rows(n: int) -> list[int]:
    """Starts of the block rows of a symmetric block of n examples (at most 8 of at least ``BLOCK_ROWS``; [0]:
    one block row, the whole product)."""
    count = min(8, n // BLOCK_ROWS)
    return [n * i // count for i in range(count)] if count >= 2 else [0]


def _gram(
    a1: torch.Tensor, a2: torch.Tensor, workspace: Workspace, slot: str, starts: Sequence[int] = (0,)
) -> torch.Tensor:
    """a1 a2ᵀ for each block, a1 (K, M1, D), a2 (K, M2, D) -> (K, M1, M2), in the workspace's ``slot``.

    ``starts``: block rows of a symmetric product (a1 a2ᵀ symmetric, M1 = M2) of which only the blocks on and above
    the diagonal are computed, the others left unset (:func:`_mirrored` fills them), for (B + 1) / (2 B) of the
    FLOPs with B block rows.
    """
    out = workspace.take(slot, (a1.shape[0], a1.shape[1], a2.shape[1]), a1)
    ends = [*starts[1:], a1.shape[1]]
    for start, end in zip(starts, ends, strict=True):
        torch.bmm(a1[:, start:end], a2[:, start:].mT, out=out[:, start:end, start:])
    return out


def _mirrored(P: torch.Tensor, starts: Sequence[int]) -> torch.Tensor:
    """The symmetric (M, M) ``P`` whose blocks on and above the diagonal blocks are set (:func:`_gram`), completed."""
    ends = [*starts[1:], P.shape[0]]
    for start, end in zip(starts[:-1], ends[:-1], strict=True):
        P[end:, start:end] = P[start:end, end:].T
    return P


def _gram_pair(
    SA: torch.Tensor,
    G1: torch.Tensor,
    G2: torch.Tensor,
    full: bool,
    workspace: Workspace,
    starts: Sequence[int] = (0,),
) -> torch.Tensor:
    """Σ_k Σ_{l,l'} SA[k, n, l, m, l'] (G1[n, o, k, l] · G2[m, o', k, l']).

    SA: (K, N1, L1, N2, L2) input Gram; G1: (N1, O, K, L1, D); G2: (N2, O, K, L2, D). The cotangent Gram is
    multiplied by SA in place; for one block and position (a dense layer) the result is a view of it (valid until
    the workspace's next Gram), else a fresh sum. ``starts``: the traced kernel of a symmetric pair (G2 is G1), with
    SA and the result set only on and above the diagonal blocks of these block rows of examples (:func:`_gram`).
    """
    K, n1, l1, n2, l2 = SA.shape
    o, d = G1.shape[1], G1.shape[-1]
    single = K * l1 * l2 == 1
    if not full:
        g1 = G1.permute(2, 0, 3, 1, 4).reshape(K, n1 * l1, o * d)
        g2 = g1 if G2 is G1 else G2.permute(2, 0, 3, 1, 4).reshape(K, n2 * l2, o * d)
        SG = _gram(g1, g2, workspace, "cotangent gram", [s * l1 for s in starts]).view(K, n1, l1, n2, l2).mul_(SA)
        return SG.view(n1, n2) if single else SG.sum((0, 2, 4))
    g1 = G1.permute(2, 0, 3, 1, 4).reshape(K, n1 * l1 * o, d)
    g2 = g1 if G2 is G1 else G2.permute(2, 0, 3, 1, 4).reshape(K, n2 * l2 * o, d)
    SG = _gram(g1, g2, workspace, "cotangent gram").view(K, n1, l1, o, n2, l2, o)
    SG.mul_(SA.view(K, n1, l1, 1, n2, l2, 1))
    return (SG.view(n1, o, n2, o) if single else SG.sum((0, 2, 5))).permute(0, 2, 1, 3)


def _gram_diag(SA: torch.Tensor, G1: torch.Tensor, G2: torch.Tensor, full: bool) -> torch.Tensor:
    """Σ_k Σ_{l,l'} SA[n, k, l, l'] (G1[n, o, k, l] · G2[n, o', k, l']); SA: (N, K, L1, L2)."""
    if not full:
        SG = torch.einsum("nokla,nokja->nklj", G1, G2)
        return (SA * SG).sum((1, 2, 3))
    SG = torch.einsum("nokla,npkja->nkljop", G1, G2)
    return torch.einsum("nklj,nkljop->nop", SA, SG)


@dataclass
class GramTerm:
    """A weight applied at positions: inputs A (N, K, L, d_in), output cotangents G (N, O, K, L, d_out)
    (either may be a strided view).

    ``outer``: for a dense layer (K = L = 1) whose cotangents are outer products G[n, o] = D[n] ⊙ w[o], the factors
    (D (N, d_out), w (O, d_out)) (the last hidden layer of an MLP: D = φ'(z), w = the output layer's weight; the
    output layer: D None, meaning 1, and w = I_O). Then the cotangent Gram summed over outputs is
    Σ_o (D1 ⊙ w_o)·(D2 ⊙ w_o) = (D1 ⊙ Σ_o w_o²) D2ᵀ, one product over d_out instead of O·d_out, or the constant
    Σ_o |w_o|² without D (traced kernel only).

    ``bias``: every input a_l carries an implicit constant entry 1, so that the contraction includes the bias of the
    same calls (:mod:`.structured`): the input Gram is A1 A2ᵀ + 1, with no copy of A to append the entry."""

    A: torch.Tensor
    G: torch.Tensor
    outer: tuple[torch.Tensor | None, torch.Tensor] | None = None
    bias: bool = False

    def pair(
        self, other: GramTerm, full: bool, workspace: Workspace | None = None, upper: bool = False
    ) -> torch.Tensor:
        """The block (see module docs); a view of ``workspace``'s buffers, valid until its next Gram product.

        ``upper`` (``other`` is ``self``, traced kernel): the block is symmetric, and only its blocks on and above the
        diagonal blocks of :func:`_block_rows` are set (:func:`contract` completes the sum of all terms)."""
        workspace = workspace or Workspace()
        K, n1, l1, n2, l2 = self.A.shape[1], self.A.shape[0], self.A.shape[2], other.A.shape[0], other.A.shape[2]
        starts = _block_rows(n1) if upper else [0]
        a1 = self.A.transpose(0, 1).reshape(K, n1 * l1, -1)
        a2 = a1 if other is self else other.A.transpose(0, 1).reshape(K, n2 * l2, -1)
        SA = _gram(a1, a2, workspace, "input gram", [s * l1 for s in starts]).view(K, n1, l1, n2, l2)
        if self.bias:
            SA.add_(1)
        if not full and self.outer is not None and other.outer is not None:
            (D1, w), (D2, _) = self.outer, other.outer
            s = (w * w).sum(0)
            if D1 is None or D2 is None:
                return SA.view(n1, n2).mul_(s.sum())
            D1s = torch.mul(D1, s, out=workspace.take("outer", D1.shape, D1))
            SG = _gram(D1s.unsqueeze(0), D2.unsqueeze(0), workspace, "cotangent gram", starts)
            return SA.view(n1, n2).mul_(SG.view(n1, n2))
        return _gram_pair(SA, self.G, other.G, full, workspace, starts)

    def diag(self, other: GramTerm, full: bool, workspace: Workspace | None = None) -> torch.Tensor:
        SA = torch.einsum("nkli,nkji->nklj", self.A, other.A)
        return _gram_diag(SA.add_(1) if self.bias else SA, self.G, other.G, full)

    def inputs(self) -> torch.Tensor:
        """A, with the constant entry appended if ``bias``: (N, K, L, d_in (+ 1))."""
        return torch.cat([self.A, self.A.new_ones(*self.A.shape[:-1], 1)], -1) if self.bias else self.A

    def jacobian(self, out: torch.Tensor | None = None) -> JacobianTerm:
        """Σ_l g_l a_lᵀ per example and output, laid out as the weight (K·d_out, d_in): (N, O, P).

        One batched matrix product (O·d_out, L) @ (L, d_in) per example and block, written into ``out``
        (shape (N·K, O·d_out, d_in)) if given; for one block the views of a convolution's cotangents and
        unfolded patches need no copy.
        """
        n, o, K, L, d_out = self.G.shape
        g = self.G.permute(0, 2, 1, 4, 3).reshape(n * K, o * d_out, L)
        J = torch.bmm(g, self.inputs().reshape(n * K, L, -1), out=out).reshape(n, K, o, -1)
        return JacobianTerm(J.transpose(1, 2).reshape(n, o, -1))


@dataclass
class FactoredJacobianTerm:
    """A weight's Jacobian kept as its factors and formed only while a block is contracted."""

    factors: GramTerm

    def _jacobian(self, workspace: Workspace, slot: int) -> JacobianTerm:
        n, o, K, _, d_out = self.factors.G.shape
        shape = (n * K, o * d_out, self.factors.A.shape[-1] + self.factors.bias)
        return self.factors.jacobian(out=workspace.take(slot, shape, self.factors.G))

    def _both(self, other: FactoredJacobianTerm, workspace: Workspace | None) -> tuple[JacobianTerm, JacobianTerm]:
        workspace = workspace or Workspace()
        J1 = self._jacobian(workspace, 0)
        return J1, J1 if other is self else other._jacobian(workspace, 1)

    def pair(self, other: FactoredJacobianTerm, full: bool, workspace: Workspace | None = None) -> torch.Tensor:
        J1, J2 = self._both(other, workspace)
        return J1.pair(J2, full)

    def diag(self, other: FactoredJacobianTerm, full: bool, workspace: Workspace | None = None) -> torch.Tensor:
        J1, J2 = self._both(other, workspace)
        return J1.diag(J2, full)


@dataclass
class IndexTerm:
    """An embedding table (V, D) read at ``indices`` (N, L) (−1: a position that gets no gradient, e.g. the
    padding index) with output cotangents G (N, O, L, D)."""

    indices: torch.Tensor
    G: torch.Tensor
    num_embeddings: int

    def pair(self, other: IndexTerm, full: bool, workspace: Workspace | None = None) -> torch.Tensor:
        l1, l2 = self.indices.shape[1], other.indices.shape[1]
        rows = torch.unique(torch.cat([self.indices[self.indices >= 0], other.indices[other.indices >= 0]]))
        # The Jacobians restricted to the rows either batch touches cost U·O·D per pair; the index-equality
        # Gram costs L1·L2·O·D per pair. Take the cheaper (both exact).
        if rows.numel() <= l1 * l2:
            return self._compact(rows).pair(other._compact(rows), full)
        i1, i2 = self.indices[:, :, None, None], other.indices[None, None]
        SA = ((i1 == i2) & (i1 >= 0)).to(self.G.dtype)
        return _gram_pair(SA.unsqueeze(0), self.G.unsqueeze(2), other.G.unsqueeze(2), full, workspace or Workspace())

    def diag(self, other: IndexTerm, full: bool, workspace: Workspace | None = None) -> torch.Tensor:
        SA = (self.indices[:, :, None] == other.indices[:, None, :]) & (self.indices >= 0)[:, :, None]
        return _gram_diag(SA.unsqueeze(1).to(self.G.dtype), self.G.unsqueeze(2), other.G.unsqueeze(2), full)

    def _compact(self, rows: torch.Tensor) -> JacobianTerm:
        """The Jacobian on the table rows ``rows`` only: (N, O, U·D), rows in the order given."""
        n, o, _, d = self.G.shape
        u = rows.numel()
        slot = torch.full((self.num_embeddings + 1,), u, dtype=torch.long, device=self.indices.device)
        slot[rows] = torch.arange(u, device=self.indices.device)
        # masked positions go to the spare row u
        index = slot[torch.where(self.indices >= 0, self.indices, self.num_embeddings)]
        J = self.G.new_zeros(n, o, u + 1, d)
        J.scatter_add_(2, index[:, None, :, None].expand(n, o, -1, d), self.G)
        return JacobianTerm(J[:, :, :u].reshape(n, o, u * d))

    def jacobian(self) -> JacobianTerm:
        """The dense Jacobian in the table's layout (V, D): (N, O, V·D)."""
        return self._compact(torch.arange(self.num_embeddings, device=self.indices.device))


class Term(Protocol):
    """One parameter tensor's features for a batch: any of the classes above. Two terms are contracted only with a
    term of their own class, for the same parameter (``other`` is that term)."""

    def pair(self, other: Any, full: bool, workspace: Workspace | None = None) -> torch.Tensor: ...

    def diag(self, other: Any, full: bool, workspace: Workspace | None = None) -> torch.Tensor: ...


def _pair(t1: Term, t2: Term, full: bool, workspace: Workspace | None, upper: bool) -> torch.Tensor:
    """``t1.pair(t2, ...)``, a Gram term's on and above the diagonal blocks only if ``upper`` (see :func:`contract`)."""
    if isinstance(t1, GramTerm) and isinstance(t2, GramTerm):
        return t1.pair(t2, full, workspace, upper)
    return t1.pair(t2, full, workspace)


def contract(
    terms1: Sequence[Term], terms2: Sequence[Term], full: bool, workspace: Workspace | None = None
) -> torch.Tensor:
    """Σ over terms of the block contraction: (N1, N2) summed over outputs, or (N1, N2, O, O).

    For a symmetric block (``terms1`` is ``terms2``, x2 = x1) of the traced kernel, the Gram terms compute only the
    blocks on and above the diagonal blocks (:meth:`GramTerm.pair`), and the total's others are then mirrored."""
    upper = terms1 is terms2 and not full
    total = None
    for t1, t2 in zip(terms1, terms2, strict=True):
        block = _pair(t1, t2, full, workspace, upper)
        # a block may be a view of the workspace: added to a fresh total at once
        total = block.clone(memory_format=torch.contiguous_format) if total is None else total.add_(block)
    assert total is not None, "a model has at least one selected parameter"
    return _mirrored(total, _block_rows(total.shape[0])) if upper else total


def contract_diagonal(
    terms1: Sequence[Term], terms2: Sequence[Term], full: bool, workspace: Workspace | None = None
) -> torch.Tensor:
    """Σ over terms of the row-wise contraction: (N,) summed over outputs, or (N, O, O)."""
    total = None
    for t1, t2 in zip(terms1, terms2, strict=True):
        block = t1.diag(t2, full, workspace)
        total = block if total is None else total.add_(block)
    return total  # type: ignore[return-value]
