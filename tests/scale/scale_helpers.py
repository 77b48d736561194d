"""Networks, inputs and references shared by the ntkit.scale tests (importable by Dask workers and subprocesses)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import ntkit as nk
from ntkit import nn as N


def mlp() -> torch.nn.Module:
    return N.Sequential(
        N.Linear(5, 64, W_std=1.5, b_std=0.1),
        N.ReLU(),
        N.Linear(64, 64, W_std=1.3, b_std=0.2),
        N.Erf(),
        N.Linear(64, 1, W_std=1.5, b_std=0.1),
    )


def pooled_cnn() -> torch.nn.Module:
    return N.Sequential(
        N.Conv2d(2, 16, 3, padding="same", W_std=1.4, b_std=0.1),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(16, 1, W_std=1.4),
    )


def finite_model() -> torch.nn.Module:
    g = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / 3)
    return model


def inputs(n: int, *shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def files(root: Path) -> dict[str, bytes]:
    """Every file under a store with its bytes: 'nothing overwritten' compares these before and after."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass(frozen=True)
class SlowTiles:
    """A tile function that waits before each tile, so that a run can be interrupted half way."""

    inner: object
    seconds: float

    def __call__(self, a, b):
        time.sleep(self.seconds)
        return self.inner(a, b)

    def to(self, device):
        return SlowTiles(self.inner.to(device), self.seconds)


def reference(net, x1, x2=None):
    k = nk.kernel(net, x1, x2)
    return {"nngp": k.nngp, "ntk": k.ntk}


def start_until_done(run: Callable[[], None], path: Path, done: int, timeout: float) -> threading.Thread:
    """Start ``run`` in a thread; return it once the store at ``path`` has ``done`` tiles done (or at timeout)."""
    driver = threading.Thread(target=run)
    driver.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (path / "zarr.json").exists() and nk.scale.KernelStore.open(path).tiles_done >= done:
            break
        time.sleep(0.05)
    return driver
