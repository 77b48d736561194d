"""Chunked computation equals the unchunked one, and memory budgets are respected.

Chunking only regroups the same exact arithmetic, so chunked and unchunked float64 results agree to
round-off (the tolerance 1e-12 allows for different summation order in the blocks).
"""

from __future__ import annotations

import pytest
import torch
from empirical_reference import case

import ntkit as nk
from ntkit.errors import MemoryBudgetError
from reference import rel_err

METHODS = ["jacobian", "ntvp", "structured"]


@pytest.mark.parametrize("method", METHODS)
def test_chunked_equals_unchunked(method):
    model, _, _, _, _ = case("residual")
    x1, x2 = torch.randn(7, 5, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64)
    for other in (None, x2):  # symmetric (upper block triangle, mirrored) and general
        for trace_outputs in (True, False):
            whole = nk.empirical_ntk(model, x1, other, method=method, trace_outputs=trace_outputs)
            for size in (1, 2, 3, 6):  # odd sizes leave a ragged last block
                part = nk.empirical_ntk(model, x1, other, method=method, trace_outputs=trace_outputs, chunk_size=size)
                assert rel_err(part, whole) < 1e-12, (other is None, trace_outputs, size)


@pytest.mark.parametrize("method", METHODS)
def test_chunked_diagonal(method):
    model, _, _, _, _ = case("cnn1d")
    x = torch.randn(5, 2, 8, dtype=torch.float64)
    whole = nk.empirical_ntk(model, x, method=method, diagonal=True, trace_outputs=False)
    assert (
        rel_err(nk.empirical_ntk(model, x, method=method, diagonal=True, trace_outputs=False, chunk_size=2), whole)
        < 1e-12
    )


def test_symmetric_result_is_exactly_symmetric_when_chunked():
    model, _, _, _, _ = case("mlp")
    x = torch.randn(9, 5, dtype=torch.float64)
    full = nk.empirical_ntk(model, x, trace_outputs=False, chunk_size=4)
    assert torch.equal(full, full.permute(1, 0, 3, 2))


def test_small_budget_chunks_automatically():
    """A budget too small for one block of all examples, but enough for smaller blocks."""
    model, _, _, _, _ = case("mlp")
    x = torch.randn(64, 5, dtype=torch.float64)
    whole = nk.empirical_ntk(model, x, method="jacobian")
    small = nk.empirical_ntk(model, x, method="jacobian", memory_budget=200_000)
    assert rel_err(small, whole) < 1e-12


def test_result_over_budget_raises_before_allocating():
    model, _, _, _, _ = case("mlp")
    x = torch.randn(200, 5, dtype=torch.float64)
    with pytest.raises(MemoryBudgetError, match=r"kernel of shape \(200, 200, 3, 3\).*2.7 MiB"):
        nk.empirical_ntk(model, x, trace_outputs=False, memory_budget="1M")


def test_forced_chunk_over_budget_raises():
    model, _, _, _, _ = case("mlp")
    x = torch.randn(64, 5, dtype=torch.float64)
    with pytest.raises(MemoryBudgetError, match="chunk_size=64"):
        nk.empirical_ntk(model, x, method="jacobian", chunk_size=64, memory_budget=200_000)


def test_budget_too_small_for_one_example_raises():
    model, _, _, _, _ = case("mlp")
    with pytest.raises(MemoryBudgetError, match="one example"):
        nk.empirical_ntk(model, torch.randn(4, 5, dtype=torch.float64), memory_budget=1000)


@pytest.mark.parametrize("method", METHODS)
def test_one_block_result_is_a_fresh_contiguous_tensor(method):
    """A problem of one block is returned as its block was computed (no kernel-sized copy): the result must still be
    contiguous, exactly symmetric for x2 = x1, and the caller's own (writing into it changes no later result)."""
    model, _, _, _, _ = case("cnn1d")
    x1, x2 = torch.randn(4, 2, 8, dtype=torch.float64), torch.randn(3, 2, 8, dtype=torch.float64)
    for other in (None, x2):
        for kw in ({"trace_outputs": True}, {"trace_outputs": False}, {"diagonal": True, "trace_outputs": False}):
            if kw.get("diagonal") and other is not None:
                continue
            first = nk.empirical_ntk(model, x1, other, method=method, **kw)
            assert first.is_contiguous()
            if other is None and not kw.get("diagonal"):
                assert torch.equal(first, first.T if first.ndim == 2 else first.permute(1, 0, 3, 2))
            kept = first.clone()
            first.fill_(float("nan"))
            assert torch.equal(nk.empirical_ntk(model, x1, other, method=method, **kw), kept)
