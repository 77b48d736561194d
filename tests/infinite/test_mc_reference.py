"""The Monte Carlo test reference (tests/kernel_mc.py) against nk.empirical_ntk for single networks."""

import itertools

import torch

import ntkit as nk
from kernel_mc import mc_ntk
from ntkit import nn as N


def test_mc_reference_matches_empirical_ntk():
    # One draw: the vmapped whole-batch Jacobian gives the same Θ̂ as nk.empirical_ntk (float32 round-off).
    torch.manual_seed(1)
    nets = [N.Sequential(N.Conv1d(2, 8, 3), N.ReLU(), N.GlobalAvgPool(), N.Linear(8, 3)) for _ in range(2)]
    draws = itertools.cycle(nets)  # the helper may build one extra network to learn the dtype
    x1, x2 = torch.randn(3, 2, 5), torch.randn(2, 2, 5)
    mean, _ = mc_ntk(lambda: next(draws), x1, x2, 2)
    expected = (nk.empirical_ntk(nets[0], x1, x2) + nk.empirical_ntk(nets[1], x1, x2)) / 2
    torch.testing.assert_close(mean, expected.double(), rtol=1e-5, atol=1e-6)
