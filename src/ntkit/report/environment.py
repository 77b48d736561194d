"""The environment a run happened in: versions, device, threads, platform (for the report's last section)."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

import torch

__all__ = ["collect_environment", "device_description"]

_PACKAGES = ("ntkit", "torch", "numpy", "scipy", "matplotlib", "scikit-learn", "tqdm")


def device_description(device: str | torch.device) -> str:
    """'cpu (N threads, <processor>)' or 'cuda:0 (<GPU name>)'."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    cpu = platform.processor() or platform.machine()
    return f"cpu ({torch.get_num_threads()} threads, {cpu})"


def collect_environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Python and package versions, platform and device, as a flat dict of strings."""
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = "not installed"
    if env["ntkit"] == "not installed":
        import ntkit

        env["ntkit"] = f"{ntkit.__version__} (source tree)"
    env["device"] = device_description(device)
    return env
