"""The run loop: each selected experiment in turn, timed; one that raises becomes a failed result. With a
:class:`~.checkpoints.CheckpointStore`, each finished experiment is saved as it finishes and one already finished
with the same configuration is reused instead of run."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass

from ..report import ExperimentResult
from .checkpoints import CheckpointStore
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
        result = exp.identify(
            ExperimentResult(
                supported=None,
                verdict=f"The experiment failed: {type(exc).__name__}: {exc}",
                status="failed",
                error=traceback.format_exc(),
            )
        )
    result.runtime_s = time.perf_counter() - start
    if not result.config:
        result.config = asdict(config) if is_dataclass(config) and not isinstance(config, type) else dict(config or {})
    return result


def run_experiments(
    experiments: Sequence[Experiment],
    ctx: RunContext,
    *,
    on_start: Callable[[int, Experiment], None] | None = None,
    on_end: Callable[[int, ExperimentResult], None] | None = None,
    store: CheckpointStore | None = None,
) -> list[ExperimentResult]:
    """Run ``experiments`` in order with ``ctx``; ``on_start(i, exp)`` / ``on_end(i, result)`` report progress.

    ``store``: reuse the checkpoint of an experiment that finished ok with the same fingerprint, and save each
    experiment that runs as soon as it finishes (an interruption then keeps every finished experiment).
    """
    results = []
    for i, exp in enumerate(experiments):
        if on_start is not None:
            on_start(i, exp)
        result = store.load(exp, ctx) if store is not None else None
        if result is None:
            result = run_one(exp, ctx)
            if store is not None:
                store.save(exp, ctx, result)
        if on_end is not None:
            on_end(i, result)
        results.append(result)
    return results
