import torch
from torch import nn

import ntkit as nk
from reference import dense_ntk, rel_err


def test_jacobian_mlp_matches_dense_float64():
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x1, x2 = torch.randn(4, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    for tr in (True, False):
        ref = dense_ntk(model, x1, x2, trace_outputs=tr)
        got = nk.empirical_ntk(model, x1, x2, trace_outputs=tr)
        assert rel_err(got, ref) < 1e-12
