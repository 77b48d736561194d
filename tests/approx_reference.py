"""Statistics of nk.approx.features against the exact nk.kernel, shared by tests/approx: z-scores of the mean
over seeds, RMS relative Frobenius errors and their log-log slope."""

from __future__ import annotations

import math

import numpy as np
import torch

import ntkit as nk


def z_scores(net, x, get, method, n_features, n_seeds, **kw):
    """(z, exact, mean): the mean of ``n_seeds`` draws of φ(x)φ(x)ᵀ minus the exact kernel, in standard errors
    (sample standard deviation / √S), upper triangle; the exact kernel and the mean."""
    exact = getattr(nk.kernel(net, x), get)
    draws = []
    for seed in range(n_seeds):
        phi = nk.approx.features(net, n_features, get=get, method=method, seed=seed, **kw)(x)
        draws.append(phi @ phi.T)
    stack = torch.stack(draws)
    mean, stderr = stack.mean(0), stack.std(0) / math.sqrt(n_seeds)
    z = (mean - exact) / stderr.clamp_min(1e-12 * exact.abs().max())
    return z.triu(), exact, mean


def rms_errors(net, get, method, sizes, n_seeds, x):
    """For each F in ``sizes``, the RMS over seeds 0..n_seeds-1 of ‖φ(x)φ(x)ᵀ − K‖_F / ‖K‖_F."""
    exact = getattr(nk.kernel(net, x), get)
    out = []
    for f in sizes:
        sq = []
        for seed in range(n_seeds):
            phi = nk.approx.features(net, f, get=get, method=method, seed=seed)(x)
            sq.append(float(((phi @ phi.T - exact).norm() / exact.norm()) ** 2))
        out.append(math.sqrt(np.mean(sq)))
    return out


def slope(sizes, errors):
    """The least-squares slope of log(error) against log(F)."""
    return float(np.polyfit(np.log(sizes), np.log(errors), 1)[0])
