"""``Aggregate``: graph aggregation y_j = Σ_i A[i, j] x_i over a fixed adjacency (issue 13, item 6).

References: neural-tangents 0.6.5's Aggregate with the same dense pattern for every input (float64 values in
tests/nt_reference; rtol 1e-8 as the other cases), Monte Carlo over the finite graph network (tolerance 4
standard errors + 3/width, tests/nn/test_layer_kernels_mc.py), and the finite layer against a dense matrix
product.
"""

import torch

from kernel_mc import assert_network_matches
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N

ADJACENCY = torch.tensor(
    [[0.0, 1.0, 0.5, 0.0], [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.3, 0.0, 1.0, 1.0]], dtype=torch.float64
)


def test_matches_neural_tangents():
    net = N.Sequential(
        N.Conv1d(2, 4, 1, W_std=1.3, b_std=0.2),
        N.Aggregate(ADJACENCY),
        N.ReLU(),
        N.Conv1d(4, 4, 1, b_std=0.1),
        N.Aggregate(ADJACENCY),
        N.Erf(),
        N.GlobalSumPool(),
        N.Linear(4, 1, b_std=None),
    )
    assert_matches_neural_tangents("aggregate_graph", net, rtol=1e-8)


def test_finite_layer_sums_predecessors():
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    y = N.Aggregate(ADJACENCY, dim=2)(x)
    torch.testing.assert_close(y, torch.einsum("ncis,ij->ncjs", x, ADJACENCY))


WIDTH = 96


def graph_net(width, out):
    a = ADJACENCY.float()
    return N.Sequential(
        N.Conv1d(2, width, 1, W_std=1.4, b_std=0.3),
        N.Aggregate(a),
        N.ReLU(),
        N.Conv1d(width, width, 1, W_std=1.4),
        N.Aggregate(a),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(width, out),
    )


def test_matches_monte_carlo():
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    assert_network_matches(lambda out: graph_net(WIDTH, out), x, WIDTH)
