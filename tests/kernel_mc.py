"""Monte Carlo reference for infinite-width kernels: averages over random initialisations of finite networks.

NNGP: E[f(x1) f(x2)] estimated by f(x1) f(x2)ᵀ / O over draws; a wide readout (O outputs, each an independent
sample given the hidden layers) averages many samples per draw. NTK: the mean of empirical NTKs Θ̂ = J Jᵀ
(mean over outputs).

- :func:`library_mc`: ``nk.monte_carlo_kernel`` (empirical kernels of independently initialised networks).
- :func:`mc_nngp`, :func:`mc_ntk`: for networks with train-mode dropout, which the empirical kernels reject
  (masks tie a batch together). Draws are evaluated together, ``torch.func.vmap`` over the stacked parameters
  of the networks, with the Jacobian of the whole batch [x1; x2] at once, so the random masks drawn in a
  forward pass are shared by an example's value and its gradient. ``test_mc_reference_matches_empirical_ntk``
  ties this to ``nk.empirical_ntk``.

Networks run in their own dtype (float32 is much faster for convolutions, and its round-off is far below the
Monte Carlo error); estimates are returned in float64. Each estimate comes with its elementwise standard error,
and ``assert_matches`` bounds the difference by a few standard errors plus the finite-width bias, which is
O(1/width): the expected kernels of a finite network differ from the limit by O(1/n) (theory.md §5.2).

A private test helper (until ``nk.monte_carlo_kernel``); it uses only torch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.func import functional_call, jacrev, stack_module_state, vmap

import ntkit as nk


def library_mc(
    make_net: Callable[[], nn.Module], x: torch.Tensor, n_samples: int, get: str, *, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, standard error) of ``get`` ("nngp" or "ntk", times ``scale``) at x2 = x from nk.monte_carlo_kernel,
    the networks in float32 (fast; its round-off is far below the Monte Carlo error), returned in float64."""
    est = nk.monte_carlo_kernel(make_net, x.float(), None, n_samples, get=get, seed=0)
    return scale * getattr(est, get).double(), scale * getattr(est, f"{get}_stderr").double()


def _mean_se(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return stack.mean(0), stack.std(0) / stack.shape[0] ** 0.5


def _ensembles(make_net: Callable[[], nn.Module], n_samples: int, chunk: int):
    """Yields (meta module, stacked parameters, stacked buffers) for chunks of independently built networks."""
    done = 0
    while done < n_samples:
        nets = [make_net() for _ in range(min(chunk, n_samples - done))]
        done += len(nets)
        params, buffers = stack_module_state(nets)
        yield copy.deepcopy(nets[0]).to("meta"), params, buffers


def _batch_for(make_net, x1: torch.Tensor, x2: torch.Tensor | None) -> tuple[torch.Tensor, slice, slice]:
    """:func:`_batch` in the networks' dtype."""
    x, rows, cols = _batch(x1, x2)
    return x.to(next(make_net().parameters()).dtype), rows, cols


def _batch(x1: torch.Tensor, x2: torch.Tensor | None) -> tuple[torch.Tensor, slice, slice]:
    """The batch evaluated in one pass and the rows of x1 and x2 in it (x2=None: x1 once, so that an
    example's own entries share its random masks, as the x1-is-x2 kernel assumes)."""
    if x2 is None:
        return x1, slice(None), slice(None)
    return torch.cat([x1, x2]), slice(0, x1.shape[0]), slice(x1.shape[0], None)


def _forward(base: nn.Module, x: torch.Tensor, params: dict, buffers: dict) -> torch.Tensor:
    return functional_call(base, (params, buffers), (x,))


def _empirical_ntk(base: nn.Module, x: torch.Tensor, rows: slice, cols: slice, params: dict, buffers: dict):
    """Θ̂ = J(x[rows]) J(x[cols])ᵀ, mean over outputs, from the Jacobian of one pass over the batch x."""
    jac = jacrev(partial(_forward, base, x), argnums=0)(params, buffers)
    j = torch.cat([v.reshape(x.shape[0], -1, v[0, 0].numel()) for v in jac.values()], dim=-1)
    return torch.einsum("nop,mop->nm", j[rows], j[cols]) / j.shape[1]


def mc_nngp(
    make_net: Callable[[], nn.Module],
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    n_samples: int,
    chunk: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, standard error) of f(x1) f(x2)ᵀ / O over ``n_samples`` fresh networks, shape (N1, N2)."""
    x, rows, cols = _batch_for(make_net, x1, x2)
    samples = []
    with torch.no_grad():
        for base, params, buffers in _ensembles(make_net, n_samples, chunk):
            f = vmap(partial(_forward, base, x), randomness="different")(params, buffers)
            f = f.reshape(f.shape[0], x.shape[0], -1)
            samples.append(torch.einsum("snk,smk->snm", f[:, rows], f[:, cols]) / f.shape[-1])
    return _mean_se(torch.cat(samples).double())


def mc_ntk(
    make_net: Callable[[], nn.Module],
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    n_samples: int,
    *,
    scale: float = 1.0,
    chunk: int = 25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, standard error) of scale · Θ̂(x1, x2) over ``n_samples`` fresh networks, shape (N1, N2).

    Θ̂ = J(x1) J(x2)ᵀ averaged over outputs; ``scale`` = 1/n for the normalised standard-parameterization NTK.
    """
    x, rows, cols = _batch_for(make_net, x1, x2)
    samples = []
    for base, params, buffers in _ensembles(make_net, n_samples, chunk):
        ntk = partial(_empirical_ntk, base, x, rows, cols)
        samples.append(scale * vmap(ntk, randomness="different")(params, buffers).detach())
    return _mean_se(torch.cat(samples).double())


def assert_matches(
    analytic: torch.Tensor, mc: tuple[torch.Tensor, torch.Tensor], *, n_se: float = 4.0, bias: float = 0.0
) -> None:
    """|analytic − mean| <= n_se · se + bias · scale elementwise, with scale = the mean |analytic|.

    ``bias`` is the allowed relative finite-width bias (a few / width).
    """
    mean, se = mc
    analytic = analytic.detach()
    scale = analytic.abs().mean()
    allowed = n_se * se + bias * scale
    excess = float(((analytic - mean).abs() - allowed).max())
    assert excess <= 0, (
        f"analytic and Monte Carlo differ by up to {float((analytic - mean).abs().max()):.4g} "
        f"(allowed {float(allowed.min()):.3g}..{float(allowed.max()):.3g}, scale {float(scale):.3g})\n"
        f"analytic:\n{analytic}\nMC mean:\n{mean}\nMC standard error:\n{se}"
    )


def assert_network_matches(
    make_net: Callable[[int], nn.Module], x: torch.Tensor, width: int, *, nngp_samples: int = 60, ntk_samples: int = 40
) -> None:
    """nk.kernel of ``make_net(1)`` (one output) at x2 = x against Monte Carlo over fresh finite networks: the
    NNGP from ``make_net(16)`` (16 outputs, each a sample) with :func:`mc_nngp`, the NTK with :func:`mc_ntk`;
    tolerance as :func:`assert_matches` with the finite-width bias 3/width of the kernel's scale."""
    k = nk.kernel(make_net(1), x)
    assert_matches(k.nngp, mc_nngp(lambda: make_net(16), x, None, nngp_samples), bias=3 / width)
    assert_matches(k.ntk, mc_ntk(lambda: make_net(1), x, None, ntk_samples), bias=3 / width)


def mc_outputs(
    make_net: Callable[[], nn.Module], xs: torch.Tensor | tuple[torch.Tensor, ...], n_samples: int, *, ntk: bool
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mean, standard error) of the NNGP f f^T / O (``ntk=False``) or the NTK J J^T / O (``ntk=True``) at
    x2 = x1, one pair per output of networks that may take a tuple of inputs ``xs`` (``net(xs)``) and return a
    tuple of outputs (several outputs, e.g. a FanOut not joined again); each (N, N). Draws as :func:`mc_ntk`."""
    xs = tuple(x.float() for x in xs) if isinstance(xs, tuple) else xs.float()
    n = (xs[0] if isinstance(xs, tuple) else xs).shape[0]

    def outputs(base: nn.Module, params: dict, buffers: dict) -> tuple[torch.Tensor, ...]:
        out = functional_call(base, (params, buffers), (xs,))
        return tuple(f.reshape(n, -1) for f in (out if isinstance(out, tuple) else (out,)))

    def one(base: nn.Module, params: dict, buffers: dict) -> torch.Tensor:
        if not ntk:
            return torch.stack([f @ f.T / f.shape[1] for f in outputs(base, params, buffers)])
        jac = jacrev(lambda p: outputs(base, p, buffers))(params)  # per output: {name: (N, O, *param shape)}
        kernels = []
        for per_output in jac:
            j = torch.cat([v.reshape(n, v.shape[1], -1) for v in per_output.values()], dim=-1)
            kernels.append(torch.einsum("nop,mop->nm", j, j) / j.shape[1])
        return torch.stack(kernels)

    samples = [
        vmap(partial(one, base), randomness="different")(params, buffers)
        for base, params, buffers in _ensembles(make_net, n_samples, 25)
    ]
    stack = torch.cat(samples).detach().double()  # (S, outputs, N, N)
    return [_mean_se(stack[:, i]) for i in range(stack.shape[1])]
