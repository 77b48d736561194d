"""The experiments by id: each is a function ``fn(config, ctx) -> ExperimentResult`` with a quick and a full
configuration object, registered with :func:`register`."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError
from ..report import ExperimentResult
from .context import RunContext

__all__ = ["EXPERIMENTS", "Experiment", "known_ids", "register", "select"]

#: An experiment's function: ``fn(config, ctx) -> ExperimentResult``.
ExperimentFn = Callable[[Any, RunContext], ExperimentResult]


@dataclass(frozen=True)
class Experiment:
    """An experiment: ``id`` ("E3"), ``title``, the paper's ``claim``, the function, and its two configurations
    (``quick``: a few seconds on 2 CPU cores; ``full``: the larger run of the report)."""

    id: str
    title: str
    claim: str
    fn: Callable[[Any, RunContext], ExperimentResult]
    quick: Any
    full: Any

    def config(self, quick: bool) -> Any:
        return self.quick if quick else self.full

    def identify(self, result: ExperimentResult) -> ExperimentResult:
        """``result`` with this experiment's id, title and claim (the functions leave those to the registry)."""
        return dataclasses.replace(result, id=self.id, title=self.title, claim=self.claim)

    def run(self, ctx: RunContext, config: Any | None = None) -> ExperimentResult:
        """Run with ``config`` (default: the quick or full one, as ``ctx.quick`` says)."""
        return self.fn(self.config(ctx.quick) if config is None else config, ctx)


EXPERIMENTS: dict[str, Experiment] = {}


def _order(eid: str) -> tuple[int, str]:
    m = re.fullmatch(r"E(\d+)", eid)
    return (int(m.group(1)) if m else 10**6, eid)


def register(id: str, *, title: str, claim: str, quick: Any, full: Any) -> Callable[[ExperimentFn], ExperimentFn]:
    """Decorator: register ``fn(config, ctx) -> ExperimentResult`` under ``id``.

    ``fn`` leaves the result's id, title and claim out; the decorated function (the one registered and the one
    the module exports) fills them in from here (:meth:`Experiment.identify`).
    """

    def deco(fn: Callable[[Any, RunContext], ExperimentResult]) -> Callable[[Any, RunContext], ExperimentResult]:
        if id in EXPERIMENTS:
            raise InvalidArgumentError(f"experiment {id} is registered twice")

        @functools.wraps(fn)
        def identified(config: Any, ctx: RunContext) -> ExperimentResult:
            return experiment.identify(fn(config, ctx))

        experiment = Experiment(id, title, claim, identified, quick, full)
        EXPERIMENTS[id] = experiment
        return identified

    return deco


def known_ids() -> list[str]:
    """The registered ids in order (E1, E2, …)."""
    return sorted(EXPERIMENTS, key=_order)


def select(only: str | None) -> list[Experiment]:
    """The experiments named in ``only`` ("E1,E3", case-insensitive, in run order), or all when ``None``.

    Raises :class:`~ntkit.errors.InvalidArgumentError` naming the unknown ids and listing the known ones.
    """
    if only is None:
        return [EXPERIMENTS[i] for i in known_ids()]
    wanted = [s.strip().upper() for s in only.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in EXPERIMENTS]
    if unknown or not wanted:
        what = f"unknown experiment {', '.join(unknown)}" if unknown else "no experiment selected"
        raise InvalidArgumentError(f"{what}; known experiments: {', '.join(known_ids())}.")
    return [EXPERIMENTS[i] for i in sorted(set(wanted), key=_order)]
