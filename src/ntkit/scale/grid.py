"""The tiling of an (N1, N2) kernel into square tiles of ``tile`` examples per side (the last ones ragged)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TileGrid"]


@dataclass(frozen=True)
class TileGrid:
    """Tiles (i, j) of rows ``[i·tile, min((i+1)·tile, n1))`` and columns ``[j·tile, min((j+1)·tile, n2))``.

    With ``symmetric`` (x2 is x1) only tiles with i <= j are stored and computed; tile (j, i) is tile (i, j)
    transposed. Any N works: the last row and column of tiles are smaller when ``tile`` does not divide N.
    """

    n1: int
    n2: int
    tile: int
    symmetric: bool

    @property
    def shape(self) -> tuple[int, int]:
        """Tiles per axis, (T1, T2)."""
        return -(-self.n1 // self.tile), -(-self.n2 // self.tile)

    def tiles(self) -> list[tuple[int, int]]:
        """The stored tiles, row by row (upper triangle with the diagonal when ``symmetric``)."""
        t1, t2 = self.shape
        return [(i, j) for i in range(t1) for j in range(i if self.symmetric else 0, t2)]

    @property
    def n_tiles(self) -> int:
        t1, t2 = self.shape
        return t1 * (t1 + 1) // 2 if self.symmetric else t1 * t2

    def rows(self, i: int) -> slice:
        return slice(i * self.tile, min((i + 1) * self.tile, self.n1))

    def cols(self, j: int) -> slice:
        return slice(j * self.tile, min((j + 1) * self.tile, self.n2))
