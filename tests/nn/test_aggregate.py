"""``Aggregate``: graph aggregation y_j = Σ_i A[i, j] x_i over a fixed adjacency or each example's own graph
(issue 13, item 6).

References: neural-tangents 0.6.5's Aggregate (float64 values in tests/nt_reference) with the same dense pattern
for every input (rtol 1e-8 as the other cases) and with per-example dense and sparse patterns (rtol 1e-10:
float64 round-off of a few einsums), Monte Carlo over the finite graph network (tolerance 4 standard errors +
3/width, tests/nn/test_layer_kernels_mc.py), and the finite layer against a dense matrix product.
"""

import pytest
import torch

import ntkit as nk
from kernel_mc import assert_matches, assert_network_matches, mc_nngp, mc_ntk
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N
from ntkit.errors import InvalidArgumentError, ShapeError

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


# Per-example graphs (neural-tangents' per-input ``pattern``): dense (N, n, n) and sparse (N, n_edges, 2).


def per_example_net(width=4, out=1, layers=("Erf", "avg")):
    act, pool = layers
    return N.Sequential(
        N.Conv1d(2, width, 1, W_std=1.3, b_std=0.2),
        N.Aggregate(),
        N.ReLU(),
        N.Aggregate(),
        N.Conv1d(width, width, 1, b_std=0.1),
        getattr(N, act)(),
        N.GlobalAvgPool() if pool == "avg" else N.GlobalSumPool(),
        N.Linear(width, out),
    )


def test_per_example_dense_graphs_match_neural_tangents():
    """Each example its own weighted graph, x1's and x2's different (neural-tangents' pattern=(p1, p2))."""
    assert_matches_neural_tangents("aggregate_per_example_dense", per_example_net(), rtol=1e-10)


def test_per_example_sparse_graphs_match_neural_tangents():
    """Edge lists (N, 7, 2) with repeated edges and (-1, -1) padding (neural-tangents' SPARSE implementation)."""
    net = N.Sequential(
        N.Conv1d(2, 4, 1, W_std=1.2, b_std=0.3),
        N.Aggregate(),
        N.ReLU(),
        N.Conv1d(4, 4, 1, W_std=1.4),
        N.Aggregate(),
        N.ReLU(),
        N.GlobalSumPool(),
        N.Linear(4, 1),
    )
    assert_matches_neural_tangents("aggregate_per_example_sparse", net, rtol=1e-10)


def test_per_example_graphs_on_a_second_spatial_axis_match_neural_tangents():
    """(N, C, 3, 5) inputs, the 5 nodes on dim 3, a convolution mixing the other axis in between; x2 = None."""
    net = N.Sequential(
        N.Conv2d(2, 4, 1, W_std=1.3, b_std=0.2),
        N.Aggregate(dim=3),
        N.ReLU(),
        N.Conv2d(4, 4, (2, 1), padding="same", b_std=0.1),
        N.Aggregate(dim=3),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(4, 1),
    )
    assert_matches_neural_tangents("aggregate_per_example_rows", net, rtol=1e-10)


@pytest.mark.parametrize("name", ["aggregate_pixels_dense", "aggregate_pixels_sparse"])
def test_graphs_over_two_node_axes_match_neural_tangents(name):
    """The 3 x 4 pixels of each image are the nodes (dim=(2, 3), neural-tangents' aggregate_axis=(1, 2)):
    dense (N, 3, 4, 3, 4) adjacencies (x1 and x2 given), or (N, 9, 2, 2) edges with (row, column) coordinates and
    -1 padding (x2 = None; neural-tangents' DENSE kernel on the edges counted by a plain loop, its ``to_dense``
    route: after a convolution neural-tangents 0.6.5's SPARSE kernel over several axes disagrees with its own
    DENSE one on the same graphs)."""
    net = N.Sequential(
        N.Conv2d(2, 4, 1, W_std=1.3, b_std=0.2),
        N.Aggregate(dim=(2, 3)),
        N.ReLU(),
        N.Conv2d(4, 4, 2, padding="same", b_std=0.1),
        N.Aggregate(dim=(2, 3)),
        N.Erf(),
        N.GlobalSumPool(),
        N.Linear(4, 1),
    )
    assert_matches_neural_tangents(name, net, rtol=1e-10)


def test_two_node_axes_match_monte_carlo():
    """Edge lists over the 3 x 4 pixels, aggregating the input first, against Monte Carlo over the finite network
    (4 standard errors + 3/width, as above)."""
    x = torch.randn(3, 2, 3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    edges = torch.stack([torch.randint(0, n, (3, 9, 2), generator=torch.Generator().manual_seed(n)) for n in (3, 4)], 2)
    edges[1, 7:] = -1

    def net(width, out):
        return N.Sequential(
            N.Aggregate(dim=(2, 3)),
            N.Conv2d(2, width, 1, W_std=1.3, b_std=0.2),
            N.ReLU(),
            N.Conv2d(width, width, 1, b_std=0.1),
            N.Aggregate(dim=(2, 3)),
            N.Erf(),
            N.Flatten(),  # keeps where each pixel's value came from: the transposed graph fails the test
            N.Linear(12 * width, out),
        )

    k = nk.kernel(net(4, 1), x, pattern=edges)
    with N.graph_patterns(edges):
        nngp = mc_nngp(lambda: net(WIDTH, 16), x, None, 60)
        ntk = mc_ntk(lambda: net(WIDTH, 1), x, None, 40)
    assert_matches(k.nngp, nngp, bias=3 / WIDTH)
    assert_matches(k.ntk, ntk, bias=3 / WIDTH)


def test_two_node_axes_finite_layer_is_the_flattened_graph():
    """Aggregate(dim=(2, 3)) on (N, C, H, W) is the one-axis aggregation of the H·W pixels numbered row-major,
    for a fixed (H, W, H, W) adjacency and for per-example edge lists."""
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    a = torch.rand(3, 4, 3, 4, dtype=torch.float64)
    flat = torch.einsum("nci,ij->ncj", x.reshape(2, 3, 12), a.reshape(12, 12)).reshape(2, 3, 3, 4)
    torch.testing.assert_close(N.Aggregate(a, dim=(2, 3))(x), flat, rtol=1e-12, atol=0)
    edges = torch.tensor([[[[0, 2], [1, 3]], [[2, 0], [3, 1]]], [[[1, 1], [1, 1]], [[-1, -1], [-1, -1]]]])
    dense = torch.zeros(2, 12, 12, dtype=torch.float64)
    dense[0, 0 * 4 + 1, 2 * 4 + 3] = 1.0  # tail (row 0, column 1) -> head (row 2, column 3)
    dense[0, 2 * 4 + 3, 0 * 4 + 1] = 1.0
    dense[1, 1 * 4 + 1, 1 * 4 + 1] = 1.0
    expected = torch.einsum("nci,nij->ncj", x.reshape(2, 3, 12), dense).reshape(2, 3, 3, 4)
    torch.testing.assert_close(N.Aggregate(dim=(2, 3))(x, edges), expected, rtol=1e-12, atol=0)


def random_edges(n_graphs, nodes, edges, seed):
    """(n_graphs, edges, 2) int64 edges with repeats; example e's last e edges are (-1, -1) padding."""
    p = torch.randint(0, nodes, (n_graphs, edges, 2), generator=torch.Generator().manual_seed(seed))
    for example in range(n_graphs):
        p[example, edges - example :] = -1
    return p


def test_per_example_graphs_match_monte_carlo():
    """Sparse graphs (repeated edges, padding), different per example, against Monte Carlo over the finite
    network fed the same graphs by N.graph_patterns: within 4 standard errors + 3/width of the kernel's scale
    (kernel_mc.assert_matches; O(1/width) is the finite-width bias)."""
    x = torch.randn(4, 2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    edges = random_edges(4, 5, 8, seed=2)
    k = nk.kernel(per_example_net(layers=("ReLU", "sum")), x, pattern=edges)
    with N.graph_patterns(edges):
        nngp = mc_nngp(lambda: per_example_net(WIDTH, 16, ("ReLU", "sum")), x, None, 60)
        ntk = mc_ntk(lambda: per_example_net(WIDTH, 1, ("ReLU", "sum")), x, None, 40)
    assert_matches(k.nngp, nngp, bias=3 / WIDTH)
    assert_matches(k.ntk, ntk, bias=3 / WIDTH)


def test_sparse_and_dense_patterns_give_the_same_kernel_and_outputs():
    """An edge list and its dense count matrix (a repeated edge weighs its count) are the same graph."""
    x = torch.randn(5, 2, 5, dtype=torch.float64)
    edges = random_edges(5, 5, 9, seed=3)
    dense = torch.zeros(5, 5, 5, dtype=torch.float64)
    for example, graph in enumerate(edges):
        for tail, head in graph.tolist():
            if tail >= 0:
                dense[example, tail, head] += 1.0
    net = per_example_net()
    sparse_k, dense_k = nk.kernel(net, x, pattern=edges), nk.kernel(net, x, pattern=dense)
    torch.testing.assert_close(sparse_k.nngp, dense_k.nngp, rtol=1e-12, atol=0)
    torch.testing.assert_close(sparse_k.ntk, dense_k.ntk, rtol=1e-12, atol=0)
    layer = N.Aggregate()
    with N.graph_patterns(edges):
        from_context = layer(x)
    torch.testing.assert_close(from_context, layer(x, dense), rtol=1e-12, atol=0)
    torch.testing.assert_close(from_context, torch.einsum("nci,nij->ncj", x, dense), rtol=1e-12, atol=0)


def test_per_example_graphs_are_tiled_with_their_examples():
    """x1 vs x2 in tiles of 1 example (each tile gets its examples' graphs) equals the symmetric kernel of
    [x1; x2] in one piece; with the same graph everywhere it equals the fixed-adjacency layer."""
    x = torch.randn(5, 2, 5, dtype=torch.float64)
    graphs = torch.rand(5, 5, 5, dtype=torch.float64)
    whole = nk.kernel(per_example_net(), x, pattern=graphs)
    tiled = nk.kernel(per_example_net(), x[:2], x[2:], pattern=(graphs[:2], graphs[2:]), block_size=1)
    torch.testing.assert_close(tiled.nngp, whole.nngp[:2, 2:], rtol=1e-12, atol=0)
    torch.testing.assert_close(tiled.ntk, whole.ntk[:2, 2:], rtol=1e-12, atol=0)
    torch.testing.assert_close(tiled.cov2, whole.cov1[2:], rtol=1e-12, atol=0)
    fixed = N.Sequential(*[N.Aggregate(graphs[0]) if isinstance(m, N.Aggregate) else m for m in per_example_net()])
    same = nk.kernel(per_example_net(), x, pattern=graphs[:1].expand(5, 5, 5))
    torch.testing.assert_close(same.nngp, nk.kernel(fixed, x).nngp, rtol=1e-12, atol=0)


def test_equal_inputs_with_different_graphs_are_different_examples():
    """x2 equal to x1 takes the x2=None path only if the graphs are equal too."""
    x = torch.randn(3, 2, 5, dtype=torch.float64)
    g1, g2 = torch.rand(3, 5, 5, dtype=torch.float64), torch.rand(3, 5, 5, dtype=torch.float64)
    net = per_example_net()
    pair = nk.kernel(net, x, x.clone(), pattern=(g1, g2))
    both = nk.kernel(net, torch.cat([x, x]), pattern=torch.cat([g1, g2]))
    torch.testing.assert_close(pair.nngp, both.nngp[:3, 3:], rtol=1e-12, atol=0)
    same = nk.kernel(net, x, x.clone(), pattern=(g1, g1.clone()))
    torch.testing.assert_close(same.nngp, nk.kernel(net, x, pattern=g1).nngp, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("pattern", "error", "match"),
    [
        (None, InvalidArgumentError, "without an adjacency"),
        (torch.rand(3, 5, 4), ShapeError, r"\(N, n, n\)"),
        (torch.rand(2, 5, 5), ShapeError, "2 graphs for 3 examples"),
        (torch.rand(3, 4, 4), ShapeError, r"nodes of shape \(5,\)"),
        (torch.full((3, 5, 5), float("nan")), InvalidArgumentError, "not finite"),
        (torch.zeros(3, 4, 3, dtype=torch.long), ShapeError, r"\(N, n_edges, 2\)"),
        (torch.tensor([[[0, 5]]] * 3), InvalidArgumentError, "node 5.*5 nodes"),
        (torch.rand(3, 25), InvalidArgumentError, "tensor of graphs"),
        ((torch.rand(3, 5, 5), torch.rand(3, 5, 5)), InvalidArgumentError, "one tensor"),
    ],
)
def test_bad_patterns_are_refused(pattern, error, match):
    x = torch.randn(3, 2, 5)
    with pytest.raises(error, match=match):
        nk.kernel(per_example_net(), x, pattern=pattern)


def test_bad_pattern_pairs_and_finite_layers_are_refused():
    x1, x2 = torch.randn(3, 2, 5), torch.randn(2, 2, 5)
    with pytest.raises(InvalidArgumentError, match="pair"):
        nk.kernel(per_example_net(), x1, x2, pattern=torch.rand(3, 5, 5))
    with pytest.raises(InvalidArgumentError, match="same format"):
        nk.kernel(per_example_net(), x1, x2, pattern=(torch.rand(3, 5, 5), torch.zeros(2, 1, 2, dtype=torch.long)))
    with pytest.raises(InvalidArgumentError, match="without an adjacency"):
        per_example_net()(x1)
    with pytest.raises(InvalidArgumentError, match="fixed adjacency"):
        N.Aggregate(ADJACENCY.float())(torch.randn(2, 2, 4), torch.rand(2, 4, 4))
    with N.graph_patterns(torch.tensor([[[0, 7]]] * 3)), pytest.raises(InvalidArgumentError, match="node 7"):
        per_example_net()(x1)
    pixels = N.Aggregate(dim=(2, 3))
    with pytest.raises(ShapeError, match=r"1 coordinates per node.*2 node axes"):
        pixels(torch.randn(2, 2, 3, 4), torch.zeros(2, 5, 2, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match="node 3 on node axis 0"):
        pixels(torch.randn(1, 2, 3, 4), torch.tensor([[[[3, 0], [0, 0]]]]))
    with pytest.raises(InvalidArgumentError, match="increasing node axes"):
        N.Aggregate(dim=(3, 2))


def test_masked_nodes_are_left_out_of_the_aggregation():
    """With mask_constant, nodes after an example's length are masked: they send nothing (neural-tangents remasks
    after Aggregate), so each example's kernel equals that of its graph cut to the unmasked nodes (round-off)."""
    lengths = [5, 3]
    x = torch.randn(2, 2, 5, dtype=torch.float64)
    graphs = torch.rand(2, 5, 5, dtype=torch.float64)
    for i, length in enumerate(lengths):
        x[i, :, length:] = -7.0
    k = nk.kernel(per_example_net(), x, pattern=graphs, mask_constant=-7.0)
    for i, length in enumerate(lengths):
        cut = nk.kernel(per_example_net(), x[i : i + 1, :, :length], pattern=graphs[i : i + 1, :length, :length])
        torch.testing.assert_close(k.nngp[i, i], cut.nngp[0, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(k.ntk[i, i], cut.ntk[0, 0], rtol=1e-12, atol=1e-12)
