"""Full-batch training loops that record the network's outputs at chosen steps.

Conventions (DESIGN.md): time counts optimizer steps; the learning rate, momentum and loss reduction are those
of ``torch.optim.SGD(lr, momentum)`` on ``torch.nn.MSELoss(reduction=...)`` (or cross-entropy), so the closed-form
predictions of ``ntkit.predict`` for the same settings describe the linearized model of this very loop.
With ``reduction="mean"`` and outputs of shape (N, k), one step of the linearized network is
f ← f − η (2 / (N k)) Θ̂ (f − y) (theory.md §2.3 with the loop units of §0.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgumentError

__all__ = ["SideBySideHistory", "TrainHistory", "log_spaced_steps", "train_full_batch", "train_side_by_side"]


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
    ``loss_curve[t]`` is the training loss before the update of step t, for every step t = 0 … ``steps`` (the
    loop computes it anyway). ``diverged`` is True when the loss became non-finite (training stopped
    there, so ``loss_curve`` ends with that non-finite value).
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    loss_curve: list[float] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    eval_outputs: list[torch.Tensor] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    diverged: bool = False


def _loss_fn(
    loss: str | Callable[..., torch.Tensor], reduction: str
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if callable(loss):
        return loss
    if loss == "mse":
        return nn.MSELoss(reduction=reduction)
    if loss == "cross_entropy":
        return nn.CrossEntropyLoss(reduction=reduction)
    raise InvalidArgumentError(f"loss={loss!r} is not 'mse', 'cross_entropy' or a callable.")


def _check_steps(steps: int, record_steps: Iterable[int]) -> set[int]:
    if steps < 0:
        raise InvalidArgumentError(f"steps must be >= 0, got {steps}.")
    record = {int(s) for s in record_steps}
    if any(s < 0 or s > steps for s in record):
        raise InvalidArgumentError(f"record_steps must lie in 0..{steps}, got {sorted(record)}.")
    return record


def _param_groups(model: nn.Module, param_lr: Mapping[str, float]) -> list[dict[str, Any]]:
    """SGD parameter groups: one per entry of ``param_lr`` (name → lr), then the rest with the default lr."""
    named = dict(model.named_parameters())
    unknown = sorted(set(param_lr) - set(named))
    if unknown:
        raise InvalidArgumentError(f"param_lr names unknown parameters {unknown}; the model has {sorted(named)}.")
    groups: list[dict[str, Any]] = [{"params": [named[n]], "lr": float(v)} for n, v in param_lr.items()]
    rest = [p for n, p in named.items() if n not in param_lr]
    return groups + ([{"params": rest}] if rest else [])


def train_full_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    steps: int,
    record_steps: Sequence[int] = (),
    loss: str | Callable[..., torch.Tensor] = "mse",
    reduction: str = "mean",
    momentum: float = 0.0,
    x_eval: torch.Tensor | None = None,
    on_record: Callable[[int, nn.Module], Any] | None = None,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
    param_lr: Mapping[str, float] | None = None,
) -> TrainHistory:
    """Train ``model`` in place for ``steps`` steps of full-batch ``torch.optim.SGD(lr, momentum)`` on ``loss``.

    At each step in ``record_steps`` (0 = initialization, ``steps`` = the end), records the train outputs (N, k),
    the loss, the outputs on ``x_eval`` and ``on_record(step, model)``. ``progress`` wraps the step range (e.g. a
    tqdm bar). ``y``: (N, k) float targets for MSE, (N,) int64 labels or (N, k) probabilities for cross-entropy.
    ``param_lr``: learning rates of single parameters by name (``"0.weight"``), one SGD parameter group each
    (e.g. the per-layer rates of SM eq. S37); the other parameters use ``lr``.
    """
    record = _check_steps(steps, record_steps)
    criterion = _loss_fn(loss, reduction)
    opt = torch.optim.SGD(_param_groups(model, param_lr or {}), lr=lr, momentum=momentum)
    history = TrainHistory()
    step_range: Iterable[int] = range(steps + 1)
    if progress is not None:
        step_range = progress(step_range)
    for step in step_range:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        value = criterion(out, y)
        history.loss_curve.append(float(value.detach()))
        if step in record:
            history.steps.append(step)
            history.loss.append(history.loss_curve[-1])
            history.outputs.append(out.detach().clone())
            if x_eval is not None:
                with torch.no_grad():
                    history.eval_outputs.append(model(x_eval).detach().clone())
            if on_record is not None:
                history.records.append(on_record(step, model))
        if not math.isfinite(history.loss_curve[-1]):
            history.diverged = True
            break
        if step == steps:
            break
        value.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        opt.step()
    return history


@dataclass
class SideBySideHistory:
    """What :func:`train_side_by_side` recorded: ``records[i]`` is what ``on_record`` returned at ``steps[i]``
    (before that step's update)."""

    steps: list[int] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)


def train_side_by_side(
    models: Mapping[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    steps: int,
    batch_size: int | None = None,
    momentum: float = 0.0,
    loss: str | Callable[..., torch.Tensor] = "cross_entropy",
    reduction: str = "mean",
    record_steps: Sequence[int] = (),
    on_record: Callable[[int, Mapping[str, nn.Module]], Any] | None = None,
    seed: int = 0,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> SideBySideHistory:
    """Train each of ``models`` in place by its own ``torch.optim.SGD(lr, momentum)`` on ``loss``, all on the same
    minibatches: the way the paper trains a network and its linearization side by side (Figs. 4, S2, S3).

    Each step draws ``batch_size`` indices of ``x`` uniformly with replacement (``torch.randint`` from a CPU
    generator seeded with ``seed``, so the batches do not depend on the device); ``batch_size=None`` uses the full
    batch at every step. At each step in ``record_steps`` it calls ``on_record(step, models)`` before the update and
    keeps the result. ``y``: (N,) int64 labels for cross-entropy, (N, k) float targets for MSE.
    """
    record = _check_steps(steps, record_steps)
    if batch_size is not None and batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer or None, got {batch_size}.")
    criterion = _loss_fn(loss, reduction)
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum) for name, m in models.items()}
    generator = torch.Generator().manual_seed(seed)
    history = SideBySideHistory()
    step_range: Iterable[int] = range(steps + 1)
    if progress is not None:
        step_range = progress(step_range)
    for step in step_range:
        if step in record:
            history.steps.append(step)
            history.records.append(on_record(step, models) if on_record is not None else None)
        if step == steps:
            break
        if batch_size is None:
            xb, yb = x, y
        else:
            idx = torch.randint(0, x.shape[0], (batch_size,), generator=generator).to(x.device)
            xb, yb = x[idx], y[idx]
        for name, model in models.items():
            optimizers[name].zero_grad(set_to_none=True)
            criterion(model(xb), yb).backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            optimizers[name].step()
    return history
