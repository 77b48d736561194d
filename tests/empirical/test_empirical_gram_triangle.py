"""Symmetric Gram products computed on and above their diagonal blocks only (``empirical.terms._gram``), used by
every Gram-form contraction of x2 = x1 into the traced kernel. Real problems split only from 256 rows on
(``BLOCK_ROWS``); here the block size is lowered so that the zoo's small batches split into 2 to 8 uneven block
rows, and the kernels are compared with the dense float64 Jacobian to ``TOL`` (both exact: round-off only; a block
left unset or mirrored to the wrong place is off by O(1))."""

from __future__ import annotations

import pytest
import torch
from empirical_reference import TOL, case, kernel_from_jacobians
from empirical_zoo import MODELS

import ntkit as nk
from ntkit.empirical import terms
from reference import dense_jacobian, rel_err


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_upper_blocks_mirrored_equal_the_full_product(monkeypatch, rows):
    """Even and uneven block rows; the buffer is filled with NaN first, so an unset entry cannot pass."""
    monkeypatch.setattr(terms, "BLOCK_ROWS", rows)
    a = torch.randn(1, 11, 4, dtype=torch.float64)
    starts = terms._block_rows(11)
    assert len(starts) == min(8, 11 // rows) and starts[0] == 0
    workspace = terms.Workspace()
    workspace.take("g", (1, 11, 11), a).fill_(torch.nan)
    got = terms._mirrored(terms._gram(a, a, workspace, "g", starts)[0], starts)
    torch.testing.assert_close(got, a[0] @ a[0].T, rtol=1e-14, atol=1e-14)


def test_no_split_below_two_block_rows():
    assert terms._block_rows(terms.BLOCK_ROWS * 2 - 1) == [0]
    assert terms._block_rows(terms.BLOCK_ROWS * 2) == [0, terms.BLOCK_ROWS]
    assert len(terms._block_rows(terms.BLOCK_ROWS * 100)) == 8


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("name", list(MODELS))
def test_symmetric_traced_kernel_of_every_model(monkeypatch, name, rows):
    """Dense layers, convolutions (rows = examples x positions), attention, embeddings, tied weights."""
    monkeypatch.setattr(terms, "BLOCK_ROWS", rows)
    model, x1, _, J1, _ = case(name)
    got = nk.empirical_ntk(model, x1, method="structured")
    assert rel_err(got, kernel_from_jacobians(J1, J1, True)) < TOL
    assert torch.equal(got, got.T)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("outputs", [1, 3])
def test_dense_chain_with_outer_factors(monkeypatch, chunk_size, outputs):
    """An MLP whose last hidden layer and output layer use the outer-factor Grams, one block and blocks of 3; with
    one output the full kernel is computed as the traced one (same shortcuts)."""
    monkeypatch.setattr(terms, "BLOCK_ROWS", 2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, outputs)
    ).double()
    x = torch.randn(9, 4, dtype=torch.float64)
    J = dense_jacobian(model, x)
    for trace_outputs in (True, False):
        got = nk.empirical_ntk(model, x, method="structured", chunk_size=chunk_size, trace_outputs=trace_outputs)
        assert rel_err(got, kernel_from_jacobians(J, J, trace_outputs)) < TOL
