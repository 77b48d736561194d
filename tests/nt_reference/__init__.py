"""neural-tangents 0.6.5's float64 kernels, stored as data (values.json, written by generate.py)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from torch import nn

import ntkit as nk

__all__ = ["assert_matches_neural_tangents", "load"]


@functools.cache
def _values() -> dict:
    return json.loads(Path(__file__).with_name("values.json").read_text())


def load(name: str) -> dict[str, torch.Tensor | None]:
    """Case ``name``: x1, x2 (None for x1), and neural-tangents' nngp and ntk, float64 tensors (and the masked
    cases' mask_constant; the graph cases' pattern1 and pattern2, int64 for edge lists)."""
    case = _values()[name]
    return {key: None if value is None else torch.tensor(value, dtype=_dtype(value)) for key, value in case.items()}


def _dtype(value: object) -> torch.dtype:
    """int64 for (nested lists of) ints, else float64."""
    while isinstance(value, list) and value:
        value = value[0]
    return torch.int64 if isinstance(value, int) else torch.float64


def assert_matches_neural_tangents(name: str, net: nn.Module, rtol: float = 1e-10) -> None:
    """nk.kernel of ``net`` on case ``name``'s inputs equals neural-tangents' NNGP and NTK (its standard NTK
    unnormalised: ``Kernel.neural_tangents_ntk``) within ``rtol`` (default: float64 round-off)."""
    case = load(name)
    mask = case.get("mask_constant")
    pattern = case.get("pattern1")
    if pattern is not None and case["x2"] is not None:
        pattern = (pattern, case["pattern2"])
    k = nk.kernel(net, case["x1"], case["x2"], mask_constant=None if mask is None else float(mask), pattern=pattern)
    torch.testing.assert_close(k.nngp, case["nngp"], rtol=rtol, atol=1e-12)
    torch.testing.assert_close(k.neural_tangents_ntk(), case["ntk"], rtol=rtol, atol=1e-12)
