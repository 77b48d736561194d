"""Memory budgets: the default budget, sizes in words, and the check that raises before allocating."""

from __future__ import annotations

import math
import os

import torch

from .errors import InvalidArgumentError, MemoryBudgetError

__all__ = [
    "DEFAULT_MEMORY_FRACTION",
    "MEMINFO_PATH",
    "SMALL_BYTES",
    "check_fits",
    "default_memory_budget",
    "format_bytes",
    "resolve_budget",
]

#: Share of the available memory that ntkit lets one call's intermediates use by default.
DEFAULT_MEMORY_FRACTION = 0.25
_FALLBACK_BUDGET = 2 * 2**30
#: Linux's memory report: its MemAvailable counts the page cache the kernel can reclaim as available.
MEMINFO_PATH = "/proc/meminfo"
#: Intermediates up to this size are taken to fit the default budget without reading the free memory (a read of
#: MEMINFO_PATH costs 0.1-0.2 ms inside a call, several percent of a small kernel's time, benchmarks/empirical.py
#: case tinycnn); a machine with less than four times this free (128 MiB) is not one ntkit computes on.
SMALL_BYTES = 2**25


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open(MEMINFO_PATH) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere: the free pages only (the page cache counts as used, so this budget errs on the small side).
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_budget(device: torch.device | str = "cpu") -> int:
    """Bytes one call may use for intermediates: a quarter of the available memory of ``device`` (on Linux
    MemAvailable, which counts reclaimable page cache, so the budget does not shrink as files are written).

    Override per call with ``memory_budget=`` or globally with the environment variable
    ``NTKIT_MEMORY_BUDGET`` (bytes, or with a suffix K, M, G: ``NTKIT_MEMORY_BUDGET=4G``).
    """
    env = os.environ.get("NTKIT_MEMORY_BUDGET")
    if env:
        return parse_bytes(env, "the environment variable NTKIT_MEMORY_BUDGET")
    avail = _available_bytes(torch.device(device))
    return int(avail * DEFAULT_MEMORY_FRACTION) if avail else _FALLBACK_BUDGET


def parse_bytes(text: str, name: str = "memory_budget") -> int:
    """``'4G' -> 4 * 2**30``; plain integers are bytes. Anything but a finite positive size raises
    :class:`InvalidArgumentError` naming ``name``."""
    clean = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(clean[-1:], 1)
    number = clean[:-1] if scale != 1 else clean
    try:
        value = float(number) * scale
    except ValueError:
        value = math.nan
    return _positive_bytes(value, text, name)


def _positive_bytes(value: float, shown: object, name: str) -> int:
    if not math.isfinite(value) or value < 1:
        raise InvalidArgumentError(
            f"{name} must be a positive, finite number of bytes or a size such as '512M' or '4G', got {shown!r}. "
            "Leave it None for the default (a quarter of the free memory)."
        )
    return int(value)


def resolve_budget(
    memory_budget: int | str | None, device: torch.device | str = "cpu", need: float | None = None
) -> int:
    """The budget in bytes from a per-call argument (bytes, a string like '4G', or None for the default).

    ``need``: the most bytes the call can use whatever the budget (its whole problem in one piece). With the
    default budget and ``need`` at most :data:`SMALL_BYTES` the free memory is not read and the budget is
    ``SMALL_BYTES``: a caller that plans within it does exactly what any larger budget would have it do."""
    if memory_budget is None:
        if need is not None and need <= SMALL_BYTES and not os.environ.get("NTKIT_MEMORY_BUDGET"):
            return SMALL_BYTES
        return default_memory_budget(device)
    if isinstance(memory_budget, str):
        return parse_bytes(memory_budget)
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int | float):
        raise InvalidArgumentError(
            "memory_budget must be a number of bytes, a string such as '4G', or None; got "
            f"{type(memory_budget).__name__}."
        )
    return _positive_bytes(float(memory_budget), memory_budget, "memory_budget")


def check_fits(nbytes: int, budget: int, what: str, hint: str = "") -> None:
    """Raise :class:`MemoryBudgetError` naming ``what`` and its size if ``nbytes`` exceeds ``budget``."""
    if nbytes > budget:
        msg = f"{what} needs {format_bytes(nbytes)}, over the memory budget of {format_bytes(budget)}."
        raise MemoryBudgetError(msg + (" " + hint if hint else ""))
