"""Equal examples in two batches of inputs, so that the input kernel gives each such pair the diagonal's value.

The input kernel K(x, x') = x·x'/C is a matrix product for pairs and a sum of squares per example; the two round
differently, so two copies of one input got K(x, x') a few ulp (up to ~C·ε) off K(x, x), and deep networks in the
chaotic phase amplify that until the copies look independent. Here equal examples (the same bits) are found
exactly and their pair entries set to the per-example value, so their correlation is exactly 1; the activations
then keep it 1 (``gaussian.quadrature._clamped``).

Finding them costs O((N1 + N2)·C) integer operations and an (N1, N2) comparison of hashes, next to the O(N1·N2·C)
matrix product: each example's bits are hashed exactly (integer arithmetic modulo a prime, order-free), and pairs
whose hashes agree are compared entry by entry.
"""

from __future__ import annotations

import torch

__all__ = ["equal_pairs", "row_hashes"]

_PRIME = 2**31 - 1
_INT_VIEW = {8: torch.int32, 4: torch.int32, 2: torch.int16}


def row_hashes(x: torch.Tensor) -> torch.Tensor:
    """(N,) int64: a hash of the bits of each example x[n] (any shape after the batch axis); equal bits, equal hash.

    Σ_k (bits_k mod P)·m_k mod P over the example's words, with fixed multipliers m_k = k·2654435761 mod P
    (Knuth's multiplicative hash; no random draw, so it runs under torch.func transforms too): every product is
    below 2^62 and the sum of up to 2^32 terms fits int64, so the result is exact in any order.
    """
    flat = x.detach().reshape(x.shape[0], -1).contiguous()
    words = flat.view(_INT_VIEW[flat.element_size()]).to(torch.int64).remainder_(_PRIME)
    positions = torch.arange(1, words.shape[1] + 1, dtype=torch.int64, device=words.device)
    return words.mul_(positions.mul_(2654435761).remainder_(_PRIME)).remainder_(_PRIME).sum(1)


def equal_pairs(
    a: torch.Tensor, b: torch.Tensor, hash_a: torch.Tensor | None = None, hash_b: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j), each (P,), of the pairs with a[i] equal to b[j] (bit for bit), i ≠ j when b is a.

    ``hash_a``, ``hash_b``: :func:`row_hashes` of a and b if already computed.
    """
    hash_a = row_hashes(a) if hash_a is None else hash_a
    hash_b = hash_a if b is a else (row_hashes(b) if hash_b is None else hash_b)
    candidates = hash_a[:, None] == hash_b[None, :]
    if b is a:
        candidates.fill_diagonal_(False)
    i, j = candidates.nonzero(as_tuple=True)
    if i.numel():
        same = (a[i].reshape(i.numel(), -1) == b[j].reshape(j.numel(), -1)).all(1)
        i, j = i[same], j[same]
    return i, j
