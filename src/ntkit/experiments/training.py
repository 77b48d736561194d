"""Full-batch training loops that record the network's outputs at chosen steps.

Conventions (DESIGN.md): time counts optimizer steps; the learning rate, momentum and loss reduction are those
of ``torch.optim.SGD(lr, momentum)`` on ``torch.nn.MSELoss(reduction=...)`` (or cross-entropy), so the closed-form
predictions of ``ntkit.predict`` for the same settings describe the linearized model of this very loop.
With ``reduction="mean"`` and outputs of shape (N, k), one step of the linearized network is
f ← f − η (2 / (N k)) Θ̂ (f − y) (theory.md 2.3 with the mean-loss rescaling).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgumentError

__all__ = ["TrainHistory", "log_spaced_steps", "train_full_batch"]


def log_spaced_steps(total: int, n: int, *, include_zero: bool = True) -> list[int]:
    """About ``n`` distinct integer steps spaced evenly in log between 1 and ``total`` (both included), with 0
    first when ``include_zero``. Sorted; fewer than ``n`` when small steps coincide after rounding."""
    if total < 1 or n < 1:
        raise InvalidArgumentError(f"log_spaced_steps needs total >= 1 and n >= 1, got {total} and {n}.")
    steps = sorted({round(float(s)) for s in np.geomspace(1, total, n)} | {total})
    return ([0] if include_zero else []) + steps


@dataclass
class TrainHistory:
    """What :func:`train_full_batch` recorded, at ``steps`` (ascending).

    ``outputs[i]`` is f(x_train) (N, k) before the update of step ``steps[i]``; ``eval_outputs[i]`` the same on
    ``x_eval`` (if given); ``loss[i]`` the training loss there. ``records[i]`` holds what ``on_record`` returned.
    ``diverged`` is True when the loss became non-finite (training stopped there).
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    eval_outputs: list[torch.Tensor] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    diverged: bool = False


def _loss_fn(loss: str | Callable, reduction: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if callable(loss):
        return loss
    if loss == "mse":
        return nn.MSELoss(reduction=reduction)
    if loss == "cross_entropy":
        return nn.CrossEntropyLoss(reduction=reduction)
    raise InvalidArgumentError(f"loss={loss!r} is not 'mse', 'cross_entropy' or a callable.")


def train_full_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    steps: int,
    record_steps: Sequence[int] = (),
    loss: str | Callable = "mse",
    reduction: str = "mean",
    momentum: float = 0.0,
    x_eval: torch.Tensor | None = None,
    on_record: Callable[[int, nn.Module], Any] | None = None,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> TrainHistory:
    """Train ``model`` in place for ``steps`` steps of full-batch ``torch.optim.SGD(lr, momentum)`` on ``loss``.

    At each step in ``record_steps`` (0 = initialization, ``steps`` = the end), records the train outputs (N, k),
    the loss, the outputs on ``x_eval`` and ``on_record(step, model)``. ``progress`` wraps the step range (e.g. a
    tqdm bar). ``y``: (N, k) float targets for MSE, (N,) int64 labels or (N, k) probabilities for cross-entropy.
    """
    if steps < 0:
        raise InvalidArgumentError(f"steps must be >= 0, got {steps}.")
    record = {int(s) for s in record_steps}
    if any(s < 0 or s > steps for s in record):
        raise InvalidArgumentError(f"record_steps must lie in 0..{steps}, got {sorted(record)}.")
    criterion = _loss_fn(loss, reduction)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    history = TrainHistory()
    step_range: Iterable[int] = range(steps + 1)
    if progress is not None:
        step_range = progress(step_range)
    for step in step_range:
        if step == steps and step not in record:
            break
        opt.zero_grad(set_to_none=True)
        out = model(x)
        value = criterion(out, y)
        if step in record:
            history.steps.append(step)
            history.loss.append(float(value.detach()))
            history.outputs.append(out.detach().clone())
            if x_eval is not None:
                with torch.no_grad():
                    history.eval_outputs.append(model(x_eval).detach().clone())
            if on_record is not None:
                history.records.append(on_record(step, model))
        if not torch.isfinite(value):
            history.diverged = True
            break
        if step == steps:
            break
        value.backward()
        opt.step()
    return history
