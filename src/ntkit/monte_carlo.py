"""Monte Carlo estimates of the NNGP and NTK: averages of empirical kernels over random initialisations.

For architectures with no closed-form kernel (max pooling, BatchNorm in eval mode, softmax attention, any
torch module), the infinite-width kernels are estimated by drawing finite networks at initialisation:

    K̂ = (1/S) Σ_s f_s(x1) f_s(x2)ᵀ / O,      Θ̂ = (1/S) Σ_s J_s(x1) J_s(x2)ᵀ / O,

each term an :func:`ntkit.empirical_nngp` / :func:`ntkit.empirical_ntk` of a freshly initialised network,
with the per-entry standard error of the mean, √(sample variance / S). As the width grows the average
tends to the infinite-width kernel (theory.md §1.4); at finite width it is the expected finite
kernel, which differs from the limit by O(1/width) (theory.md §5.2).
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ._functional import ParamsArg
from ._validation import check_input_pair
from .empirical import empirical_nngp, empirical_ntk
from .errors import InvalidArgumentError, UnsupportedError

__all__ = ["MonteCarloKernel", "monte_carlo_kernel"]

_KINDS = ("nngp", "ntk")


@dataclass(frozen=True)
class MonteCarloKernel:
    """A running Monte Carlo estimate. Each kernel has shape (N1, N2) (None if not asked for in ``get``).

    ``nngp_stderr`` / ``ntk_stderr``: per-entry standard errors of the means, √(s² / n) with s² the sample
    variance over initialisations (n >= 2). ``n_samples``: networks averaged so far.
    """

    nngp: torch.Tensor | None
    ntk: torch.Tensor | None
    nngp_stderr: torch.Tensor | None
    ntk_stderr: torch.Tensor | None
    n_samples: int


class _Running:
    """Per-entry running mean and sum of squared deviations (Welford), for one kernel."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        self.n += 1
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = x.clone(), torch.zeros_like(x)
            return
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def estimate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, standard error of the mean √(s² / n)), n >= 2 (``_check_counts``)."""
        assert self.mean is not None and self.m2 is not None, "no sample added yet"
        return self.mean.clone(), torch.sqrt(self.m2 / ((self.n - 1) * self.n))


def monte_carlo_kernel(
    model_factory: Callable[..., nn.Module] | nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    n_samples: int | Iterable[int] = 64,
    *,
    get: str | tuple[str, ...] = ("nngp", "ntk"),
    params: ParamsArg = None,
    seed: int | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
    ntk_method: str = "auto",
    chunk_size: int | None = None,
) -> MonteCarloKernel | Iterator[MonteCarloKernel]:
    """Average the empirical NNGP and NTK of ``n_samples`` randomly initialised networks.

    Args:
        model_factory: where the networks come from, one of
            - a callable taking no argument that returns a freshly initialised ``nn.Module``; it runs under a
              seeded, forked global RNG (``torch.random.fork_rng``), so the caller's RNG state is untouched;
            - a callable taking one argument, a seeded CPU ``torch.Generator``, to draw its weights from;
            - an ``nn.Module``: copied once, then re-initialised for each sample by calling
              ``reset_parameters()`` on every submodule that has one (every submodule holding parameters
              must have one).
            The network is moved to ``x1``'s device, and to its dtype when ``x1`` is floating point.
        x1, x2: inputs (N1, ...) and (N2, ...); ``x2=None`` means x1.
        n_samples: number of networks, at least 2 (a standard error needs two), or an increasing iterable of
            such counts (e.g. ``[8, 32, 128]``): then a generator yielding the running estimate after each count
            (the samples accumulate).
        get: ``"nngp"``, ``"ntk"`` or both.
        params: parameters the NTK differentiates (see :func:`ntkit.empirical_ntk`; default all).
        seed: base seed; sample s is initialised from the s-th seed drawn from it, so an estimate with n
            samples is the same whatever larger counts follow. ``None``: a base seed drawn from torch's
            global RNG (reproducible after ``torch.manual_seed``).
        progress: ``True`` for a tqdm bar (needs ``tqdm``), or a callback ``progress(done, total)``.
        ntk_method, chunk_size: passed to :func:`ntkit.empirical_ntk`.

    Returns:
        A :class:`MonteCarloKernel` (``n_samples`` an int), or an iterator of them (an iterable).

    Cost: ``n_samples`` forward passes (NNGP) and Jacobians (NTK) of the finite network; memory two
    (N1, N2) accumulators per kernel on top of one empirical kernel.
    """
    x1, x2 = check_input_pair(x1, x2, allow_integer=True)
    kinds = _check_get(get)
    counts = _check_counts(n_samples)
    draw = _sampler(model_factory, x1)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    run = _estimates(draw, x1, x2, counts, kinds, seed, params, progress, ntk_method, chunk_size)
    return next(run) if isinstance(n_samples, int) else run


def _check_get(get: str | Iterable[str]) -> tuple[str, ...]:
    kinds = (get,) if isinstance(get, str) else tuple(get)
    if not kinds or any(k not in _KINDS for k in kinds):
        raise InvalidArgumentError(f"get must be 'nngp', 'ntk' or both, got {get!r}.")
    return kinds


def _check_counts(n_samples: int | Iterable[int]) -> list[int]:
    if not isinstance(n_samples, int | Iterable) or isinstance(n_samples, str):
        counts: list[int] = []  # not a count: refused below
    else:
        counts = [n_samples] if isinstance(n_samples, int) else list(n_samples)
    if not counts or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in counts):
        raise InvalidArgumentError(
            f"n_samples must be an integer of at least 2 (a standard error needs two networks) or an increasing "
            f"iterable of them, got {n_samples!r}."
        )
    if any(b <= a for a, b in itertools.pairwise(counts)):
        raise InvalidArgumentError(f"n_samples must increase (the samples accumulate), got {counts}.")
    return counts


def _sampler(model_factory: object, x: torch.Tensor) -> Callable[[int], nn.Module]:
    """A function seed -> freshly initialised network on x's device (and dtype, for floating x)."""
    place = {"device": x.device, "dtype": x.dtype} if x.is_floating_point() else {"device": x.device}
    devices = [x.device] if x.device.type == "cuda" else []
    if isinstance(model_factory, nn.Module):
        template = copy.deepcopy(model_factory)
        _check_resettable(template)

        def reset(seed: int) -> nn.Module:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                for module in template.modules():
                    reset_parameters = getattr(module, "reset_parameters", None)
                    if callable(reset_parameters):
                        reset_parameters()
            return template.to(**place)

        return reset
    if not callable(model_factory):
        raise InvalidArgumentError(
            f"model_factory must be an nn.Module or a callable returning one, got {type(model_factory).__name__}."
        )
    takes_generator = _n_positional(model_factory) >= 1

    def build(seed: int) -> nn.Module:
        if takes_generator:
            model = model_factory(torch.Generator().manual_seed(seed))
        else:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                model = model_factory()
        if not isinstance(model, nn.Module):
            raise UnsupportedError(f"model_factory returned {type(model).__name__}, not an nn.Module.")
        return model.to(**place)

    return build


def _n_positional(fn: Callable[..., object]) -> int:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: call them without arguments
        return 0
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in signature.parameters.values()) + any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in signature.parameters.values()
    )


def _check_resettable(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)) and not hasattr(module, "reset_parameters"):
            raise UnsupportedError(
                f"submodule {name or type(model).__name__!r} ({type(module).__name__}) has parameters but no "
                "reset_parameters(), so it cannot be re-initialised; pass a factory (a function returning a "
                "new network) instead of the network."
            )


def _estimates(
    draw: Callable[[int], nn.Module],
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    counts: list[int],
    kinds: tuple[str, ...],
    seed: int,
    params: ParamsArg,
    progress: object,
    ntk_method: str,
    chunk_size: int | None,
) -> Iterator[MonteCarloKernel]:
    seeds = torch.Generator().manual_seed(seed)
    running = {k: _Running() for k in kinds}
    report = _progress(progress, counts[-1])
    try:
        done = 0
        for target in counts:
            while done < target:
                model = draw(int(torch.randint(0, 2**62, (1,), generator=seeds)))
                if "nngp" in running:
                    running["nngp"].add(empirical_nngp(model, x1, x2, params=params).detach())
                if "ntk" in running:
                    ntk = empirical_ntk(model, x1, x2, params=params, method=ntk_method, chunk_size=chunk_size)
                    running["ntk"].add(ntk.detach())
                done += 1
                report(done)
            nngp_mean, nngp_stderr = running["nngp"].estimate() if "nngp" in running else (None, None)
            ntk_mean, ntk_stderr = running["ntk"].estimate() if "ntk" in running else (None, None)
            yield MonteCarloKernel(nngp_mean, ntk_mean, nngp_stderr, ntk_stderr, n_samples=done)
    finally:
        report(None)


def _progress(progress: object, total: int) -> Callable[[int | None], None]:
    """report(done) after each sample, report(None) at the end."""
    if progress is None or progress is False:
        return lambda done: None
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise UnsupportedError(
                "progress=True needs tqdm (pip install tqdm); or pass a callback progress(done, total)."
            ) from None
        bar = tqdm(total=total, desc="Monte Carlo kernel", unit="net")
        return lambda done: bar.close() if done is None else bar.update(1)
    if callable(progress):
        return lambda done: None if done is None else progress(done, total)
    raise InvalidArgumentError(f"progress must be True, None or a callback progress(done, total), got {progress!r}.")
