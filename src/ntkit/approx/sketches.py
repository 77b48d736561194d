"""Linear sketches of vectors and of their tensor products, all unbiased for inner products (docs/approx.md).

- :class:`CountSketch` (Charikar et al. 2002): C(x)_k = Σ_{i: h(i)=k} s(i) x_i with a random hash h and random
  signs s, so E[C(x)·C(y)] = x·y.
- :class:`TensorSketch` (Pham & Pagh 2013): T(a, b) = IFFT(FFT(C₁(a)) ⊙ FFT(C₂(b))), the count sketch of a ⊗ b
  under the hash h₁(i) + h₂(j) mod m and sign s₁(i)s₂(j), so E[T(a, b)·T(c, d)] = (a·c)(b·d) without forming
  a ⊗ b: O(nnz + m log m) per example.
- :class:`PolySketch`: S_j(x) for j = 1..p with E[S_j(x)·S_j(y)] = (x·y)^j, by the chain S_1 = C(x),
  S_j = T_j(S_{j-1}, x) of degree-2 tensor sketches with independent hashes at every step (each step is
  unbiased given its inputs and independent of the others, so the expectation factorises by induction; Ahle et
  al. 2020 use a tree of such steps; the chain gives every degree up to p with p - 1 of them, and its variance
  grows linearly in p where one degree-p TensorSketch's grows like 3^p).

Randomness is drawn once, at construction, from the given ``torch.Generator`` (CPU), and moved to the inputs'
device on use.
"""

from __future__ import annotations

import torch

__all__ = ["CountSketch", "PolySketch", "TensorSketch"]


class CountSketch:
    """A count sketch from ``in_dim`` to ``out_dim`` coordinates: (B, in_dim) -> (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, generator: torch.Generator) -> None:
        self.in_dim, self.out_dim = in_dim, out_dim
        self.hash = torch.randint(0, out_dim, (in_dim,), generator=generator)
        self.sign = torch.randint(0, 2, (in_dim,), generator=generator).mul_(2).sub_(1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((x.shape[0], self.out_dim))
        signs = self.sign.to(device=x.device, dtype=x.dtype)
        return out.index_add_(1, self.hash.to(x.device), x * signs)


class TensorSketch:
    """The degree-2 tensor sketch T(a, b) of a ⊗ b: (B, dim_a), (B, dim_b) -> (B, out_dim)."""

    def __init__(self, dim_a: int, dim_b: int, out_dim: int, generator: torch.Generator) -> None:
        self.out_dim = out_dim
        self.first = CountSketch(dim_a, out_dim, generator)
        self.second = CountSketch(dim_b, out_dim, generator)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft(self.first(a), dim=1) * torch.fft.rfft(self.second(b), dim=1)
        out: torch.Tensor = torch.fft.irfft(spectrum, n=self.out_dim, dim=1)
        return out


class PolySketch:
    """S_1(x), ..., S_p(x), each (B, out_dim), with E[S_j(x)·S_j(y)] = (x·y)^j (the chain in the module doc)."""

    def __init__(self, in_dim: int, out_dim: int, degree: int, generator: torch.Generator) -> None:
        self.degree = degree
        self.first = CountSketch(in_dim, out_dim, generator)
        self.steps = [TensorSketch(out_dim, in_dim, out_dim, generator) for _ in range(degree - 1)]

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        powers = [self.first(x)]
        for step in self.steps:
            powers.append(step(powers[-1], x))
        return powers
