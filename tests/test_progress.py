"""Opt-in progress bars (issue 10 item 10): ``progress=True`` on nk.kernel, nk.empirical_ntk and
nk.predict.gradient_descent draws a tqdm bar on stderr over all the work (tiles, blocks, steps) and changes no
number; without tqdm it is a clear MissingDependencyError; the default draws nothing."""

import sys

import pytest
import torch
import tqdm.auto as tqdm_auto
from torch import nn

import ntkit as nk
import ntkit.nn as N
from ntkit.errors import InvalidArgumentError, MissingDependencyError

X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _kernel(**kw):
    net = N.Sequential(N.Linear(3, 8), N.ReLU(), N.Linear(8, 1))
    return nk.kernel(net, X, block_size=4, **kw).ntk  # 15 tiles (the upper triangle of 5 x 5)


def _empirical(**kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    return nk.empirical_ntk(model, X, X[:7], chunk_size=5, **kw)  # 4 x 2 blocks


def _descent(**kw):
    k = X @ X.T / 3 + 0.1
    p = nk.predict.gradient_descent(torch.nn.MSELoss(), k, torch.ones(20, 1, dtype=torch.float64), 0.1)
    return p(9, **kw)


CALLS = {"kernel": (_kernel, 15), "empirical_ntk": (_empirical, 8), "gradient_descent": (_descent, 9)}


@pytest.mark.parametrize("name", CALLS)
def test_progress_bar_covers_the_work_and_changes_nothing(name, capsys, monkeypatch):
    call, total = CALLS[name]
    closed = {}

    class Recorder(tqdm_auto.tqdm):
        def close(self):
            closed.setdefault(id(self), (self.n, self.total))  # tqdm may close twice
            super().close()

    monkeypatch.setattr(tqdm_auto, "tqdm", Recorder)
    quiet = call()
    assert capsys.readouterr().err == "" and not closed  # off by default
    shown = call(progress=True)
    assert "%|" in capsys.readouterr().err  # a bar was drawn on stderr
    assert list(closed.values()) == [(total, total)]  # every unit of work was counted, and the total was right
    assert torch.equal(quiet, shown)


@pytest.mark.parametrize("name", CALLS)
def test_progress_needs_tqdm_and_a_bool(name, monkeypatch):
    call, _ = CALLS[name]
    with pytest.raises(InvalidArgumentError, match="progress must be True or False"):
        call(progress="yes")
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    with pytest.raises(MissingDependencyError, match="tqdm is not installed: pip install tqdm"):
        call(progress=True)
    call()  # the default never imports tqdm
