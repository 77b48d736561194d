"""neural-tangents 0.6.5's float64 kernels, stored as data (values.json, written by generate.py)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

__all__ = ["load"]


@functools.cache
def _values() -> dict:
    return json.loads(Path(__file__).with_name("values.json").read_text())


def load(name: str) -> dict[str, torch.Tensor | None]:
    """Case ``name``: x1, x2 (None for x1), and neural-tangents' nngp and ntk, float64 tensors."""
    case = _values()[name]
    return {key: None if value is None else torch.tensor(value, dtype=torch.float64) for key, value in case.items()}
