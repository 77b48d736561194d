"""The run loop: each selected experiment in turn, timed; one that raises becomes a failed result."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass

from ..report import ExperimentResult
from .context import RunContext
from .registry import Experiment

__all__ = ["run_experiments", "run_one"]


def run_one(exp: Experiment, ctx: RunContext) -> ExperimentResult:
    """Run ``exp`` with the configuration ``ctx.quick`` selects; never raises (except KeyboardInterrupt)."""
    config = exp.config(ctx.quick)
    start = time.perf_counter()
    try:
        result = exp.fn(config, ctx)
    except Exception as exc:
        result = ExperimentResult(
            id=exp.id,
            title=exp.title,
            claim=exp.claim,
            supported=None,
            verdict=f"The experiment failed: {type(exc).__name__}: {exc}",
            status="failed",
            error=traceback.format_exc(),
        )
    result.runtime_s = time.perf_counter() - start
    if not result.config:
        result.config = asdict(config) if is_dataclass(config) else dict(config or {})
    return result


def run_experiments(
    experiments: Sequence[Experiment],
    ctx: RunContext,
    *,
    on_start: Callable[[int, Experiment], None] | None = None,
    on_end: Callable[[int, ExperimentResult], None] | None = None,
) -> list[ExperimentResult]:
    """Run ``experiments`` in order with ``ctx``; ``on_start(i, exp)`` / ``on_end(i, result)`` report progress."""
    results = []
    for i, exp in enumerate(experiments):
        if on_start is not None:
            on_start(i, exp)
        result = run_one(exp, ctx)
        if on_end is not None:
            on_end(i, result)
        results.append(result)
    return results
