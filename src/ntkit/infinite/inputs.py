"""The inputs of ``nk.kernel``: one tensor, or a tuple of tensors for a network with several inputs.

A network with several inputs (``ntkit.nn.Parallel`` of one branch per input, ``FanInConcat`` of two modalities,
...) takes them as a tuple, and its kernel is computed from one input kernel per tensor (``Kernel.from_inputs``
of each): the tensors of one example are its inputs, so every tensor has the same number of examples N, and the
kernel between x1 and x2 pairs example i of x1 (all its tensors) with example j of x2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._validation import check_input_pair, format_shape, same_examples
from ..errors import InvalidArgumentError, ShapeError, UnsupportedError
from .graphs import check_pattern
from .kernel_type import Kernel, Kernels

__all__ = ["Inputs"]

#: What ``nk.kernel`` takes as x1 or x2: one tensor, or one per network input.
InputArg = torch.Tensor | Sequence[torch.Tensor]
#: The graphs of x1's and x2's examples (x2's None when x2 is x1), for ``Aggregate`` (:mod:`.graphs`).
Patterns = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class Inputs:
    """x1 and x2 (None: x2 is x1) as tuples with one tensor (N1, ...) / (N2, ...) per network input; ``several``:
    the caller passed a tuple, so the network receives one (a 1-tuple stays a tuple); ``patterns``: the examples'
    graphs (``nk.kernel(..., pattern=)``, one input only) or None."""

    x1: tuple[torch.Tensor, ...]
    x2: tuple[torch.Tensor, ...] | None
    several: bool
    patterns: Patterns | None = None

    @classmethod
    def check(cls, x1: object, x2: object | None, pattern: object = None) -> Inputs:
        """Validated inputs: each tensor as ``check_input_pair`` wants it (x2's i-th like x1's i-th), at least
        two dimensions, the same number of examples across a side's tensors, one device; x2 equal to x1 (every
        tensor, ``same_examples``, and the graphs) becomes None, so that the symmetric path is taken."""
        several = isinstance(x1, tuple | list)
        if isinstance(x2, tuple | list) != several and x2 is not None:
            raise InvalidArgumentError(
                f"x1 is {'a tuple' if several else 'a tensor'} but x2 is {'a tuple' if not several else 'a tensor'}; "
                "for a network with several inputs pass both as tuples with one tensor per input."
            )
        ones = tuple(x1) if isinstance(x1, tuple | list) else (x1,)
        twos = None if x2 is None else tuple(x2) if isinstance(x2, tuple | list) else (x2,)
        if not ones:
            raise InvalidArgumentError("x1 is an empty tuple; pass one tensor per network input.")
        if twos is not None and len(twos) != len(ones):
            raise ShapeError(f"x1 has {len(ones)} tensors but x2 has {len(twos)}; pass one tensor per network input.")
        pairs = [
            check_input_pair(a, None if twos is None else twos[i], name=_names(i, several)) for i, a in enumerate(ones)
        ]
        checked1 = tuple(a for a, _ in pairs)
        checked2 = None if twos is None else tuple(b for _, b in pairs if b is not None)
        for i, a in enumerate(checked1):
            if a.ndim < 2:
                raise ShapeError(
                    f"inputs must be (N, features) or (N, C, *spatial), got {_names(i, several)[0]} of shape "
                    f"{format_shape(a.shape)}."
                )
        for side in (checked1, checked2):
            if side is not None and len({t.shape[0] for t in side}) > 1:
                raise ShapeError(
                    "the tensors of one set of inputs must have the same number of examples (the first dimension), "
                    f"got shapes {', '.join(format_shape(t.shape) for t in side)}."
                )
        if len({t.device for t in checked1}) > 1:
            raise UnsupportedError(f"the inputs are on {sorted({str(t.device) for t in checked1})}; use one device.")
        if pattern is not None and several:
            raise UnsupportedError("pattern= (graphs for Aggregate) with several inputs is not supported yet.")
        patterns = (
            None
            if pattern is None
            else _check_patterns(pattern, checked1[0], None if checked2 is None else checked2[0])
        )
        same = checked2 is not None and all(
            same_examples(a, b) is None for a, b in zip(checked1, checked2, strict=True)
        )
        p1, p2 = patterns or (None, None)
        if same and p1 is not None and p2 is not None:  # with graphs, only if they are equal too
            same = p1.dtype == p2.dtype and p1.shape == p2.shape and torch.equal(p1, p2)
        if same:  # equal inputs take the x2=None path (docs/infinite.md, "Equal inputs")
            checked2, patterns = None, None if patterns is None else (patterns[0], None)
        return cls(checked1, checked2, several, patterns)

    @property
    def n1(self) -> int:
        return self.x1[0].shape[0]

    @property
    def n2(self) -> int:
        return self.n1 if self.x2 is None else self.x2[0].shape[0]

    @property
    def device(self) -> torch.device:
        return self.x1[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.x1[0].dtype

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Inputs:
        """The tensors on ``device`` in ``dtype`` (the graphs on ``device`` only)."""

        def move(xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return tuple(x.to(device=device, dtype=dtype) for x in xs)

        patterns = None
        if self.patterns is not None:
            p1, p2 = self.patterns
            patterns = (p1.to(device), None if p2 is None else p2.to(device))
        return Inputs(move(self.x1), None if self.x2 is None else move(self.x2), self.several, patterns)

    def tile(self, rows: slice, cols: slice | None) -> Inputs:
        """x1's examples ``rows`` against x2's ``cols`` (None: against themselves, x2 = None), with their graphs."""
        xs2 = self.x1 if self.x2 is None else self.x2
        patterns = None
        if self.patterns is not None:
            p1, p2 = self.patterns
            patterns = (p1[rows], None if cols is None else (p1 if p2 is None else p2)[cols])
        return Inputs(
            tuple(x[rows] for x in self.x1),
            None if cols is None else tuple(x[cols] for x in xs2),
            self.several,
            patterns,
        )

    def kernel(self, *, diagonal_spatial: bool, ntk: bool, mask_constant: float | None) -> Kernels:
        """The input kernel(s): ``Kernel.from_inputs`` of each tensor, a tuple when the network takes a tuple."""
        kernels = tuple(
            Kernel.from_inputs(
                a,
                None if self.x2 is None else b,
                diagonal_spatial=diagonal_spatial,
                ntk=ntk,
                mask_constant=mask_constant,
                pattern=self.patterns,
            )
            for a, b in zip(self.x1, self.x1 if self.x2 is None else self.x2, strict=True)
        )
        return kernels if self.several else kernels[0]


def _check_patterns(pattern: object, x1: torch.Tensor, x2: torch.Tensor | None) -> Patterns:
    """nk.kernel's ``pattern`` checked (:func:`.graphs.check_pattern`) as (x1's graphs, x2's or None)."""
    if x2 is None:
        if isinstance(pattern, tuple | list):
            raise InvalidArgumentError(
                f"pattern must be one tensor of graphs (x1's) when x2 is None, got a {type(pattern).__name__} of "
                f"{len(pattern)}; pass (x1's, x2's) only together with x2."
            )
        return check_pattern(pattern, x1.shape[0], "pattern"), None
    if not (isinstance(pattern, tuple | list) and len(pattern) == 2):
        raise InvalidArgumentError(
            "with x2 given, pattern must be the pair (x1's graphs, x2's graphs) (neural-tangents' (pattern1, "
            f"pattern2)), got {type(pattern).__name__}."
        )
    return check_pattern(pattern[0], x1.shape[0], "pattern[0]"), check_pattern(pattern[1], x2.shape[0], "pattern[1]")


def _names(i: int, several: bool) -> tuple[str, str]:
    """How the i-th tensors of x1 and x2 are named in messages."""
    return (f"x1[{i}]", f"x2[{i}]") if several else ("x1", "x2")
