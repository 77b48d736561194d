"""nk.kernel in half precision (issue 10 item 7): bfloat16 / float16 inputs are computed in float32 and the
result cast back, so it equals the float64 kernel rounded to that dtype, to one unit in the last place."""

import pytest
import torch

import ntkit as nk
from ntkit import nn as N


def relu_mlp(depth: int) -> tuple[N.Sequential, tuple[int, ...]]:
    layers = [N.Linear(8, 32, W_std=1.4, b_std=0.1)]
    for _ in range(depth - 1):
        layers += [N.ReLU(), N.Linear(32, 32, W_std=1.4, b_std=0.1)]
    return N.Sequential(*layers, N.ReLU(), N.Linear(32, 1, W_std=1.4, b_std=0.1)), (6, 8)


def pooled_cnn() -> tuple[N.Sequential, tuple[int, ...]]:
    net = N.Sequential(
        N.Conv2d(2, 8, 3, W_std=1.4), N.Erf(), N.Conv2d(8, 8, 3), N.ReLU(), N.GlobalAvgPool(), N.Linear(8, 1)
    )
    return net, (6, 2, 5, 5)


CASES = {"relu-20": lambda: relu_mlp(20), "relu-40": lambda: relu_mlp(40), "cnn": pooled_cnn}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", list(CASES))
def test_half_precision_equals_rounded_float64(dtype, case):
    """Before: computed in bfloat16 throughout, 15-31% off at ReLU depth 20-40. Reference: the float64 kernel of
    the same (exactly representable) inputs, rounded to ``dtype``. The float32 computation is within ~1e-6 of it,
    so after rounding the two differ by at most one unit in the last place: 2^-7 (bfloat16) or 2^-10 (float16)
    of the value."""
    torch.manual_seed(0)
    model, shape = CASES[case]()
    x = torch.randn(shape).to(dtype)
    got = nk.kernel(model, x)
    want = nk.kernel(model, x.double())
    ulp = torch.finfo(dtype).eps  # the spacing of numbers in [1, 2): one ulp is at most this of the value
    for name in ("nngp", "ntk"):
        value, ref = getattr(got, name), getattr(want, name)
        assert value.dtype == dtype
        err = ((value.double() - ref.to(dtype).double()).abs() / ref.abs()).max()
        assert float(err) <= ulp, name
    # dtype= asks for the same with float32 inputs
    assert torch.equal(nk.kernel(model, x.float(), dtype=dtype).ntk, got.ntk)
