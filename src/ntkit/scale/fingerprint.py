"""Fingerprints of everything that determines a stored kernel's values, compared part by part on resume.

A fingerprint is a dict of short digests (SHA-256, hex): ``architecture`` (each submodule's class and its
configuration attributes: widths, strides, ``W_std``/``b_std``, declared initialisations, train/eval mode),
``parameters`` (the values of parameters and buffers; only for finite-width kernels, which depend on them),
``x1``, ``x2`` (shape, dtype and bytes of the inputs), plus ``dtype``, ``kernels``, ``method`` and
``ntkit_version`` as plain text. Two calls whose fingerprints are equal compute the same values.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

__all__ = ["architecture_digest", "describe_value", "differences", "parameters_digest", "tensor_digest"]

#: Attributes every nn.Module has (parameter and buffer dicts, hooks, ...): not configuration.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:32]


def tensor_digest(t: torch.Tensor | None) -> str:
    """Digest of a tensor's shape, dtype and values ("none" for None)."""
    if t is None:
        return "none"
    data = t.detach().cpu().contiguous()
    raw = data.reshape(-1).view(torch.uint8).numpy().tobytes()
    return _digest([repr((tuple(data.shape), str(data.dtype))).encode(), raw])


def describe_value(value: Any) -> str:
    """A stable text for a configuration attribute (tensors by digest, functions by qualified name)."""
    if isinstance(value, torch.Tensor):
        return "tensor:" + tensor_digest(value)
    if isinstance(value, list | tuple):
        return type(value).__name__ + "(" + ",".join(describe_value(v) for v in value) + ")"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return "{" + ",".join(f"{k!r}:{describe_value(v)}" for k, v in items) + "}"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return repr(value)


def architecture_digest(model: nn.Module) -> str:
    """Digest of every submodule's class and configuration attributes (not its parameter values)."""
    lines = []
    for name, module in model.named_modules():
        config = {k: v for k, v in vars(module).items() if k not in _MODULE_INTERNALS and not isinstance(v, nn.Module)}
        lines.append(
            f"{name}:{type(module).__module__}.{type(module).__qualname__}:{module.training}:{describe_value(config)}"
        )
    return _digest([line.encode() for line in lines])


def parameters_digest(model: nn.Module) -> str:
    """Digest of the names and values of every parameter and buffer."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return _digest([f"{name}:{tensor_digest(t)}".encode() for name, t in named])


def differences(stored: dict[str, str], wanted: dict[str, str]) -> list[str]:
    """The fingerprint parts that differ, e.g. ``["x1", "dtype (float32 stored, float64 now)"]``."""
    out = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if a != b:
            digest = key in ("architecture", "parameters", "x1", "x2")
            out.append(key if digest else f"{key} ({a} stored, {b} now)")
    return out
