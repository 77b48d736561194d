"""nk.approx.features for CNNs with pooling (the CNTK sketch / convolutional random features) against the exact
nk.kernel of the same network (the independent reference: its spatial covariance recursion, transforms.py).

Unbiasedness: with one hidden (convolutional) layer every step is unbiased given the exact input features, so the
mean of S draws of φ(x)·φ(y) is the kernel up to its standard error; |z| < 5 on every entry (about 20 entries per
case: a false alarm has probability ~1e-5, while a wrong patch, padding, pooling divisor or scale shifts the mean by
many standard errors; for instance a padding that wraps instead of zero-filling changes the border kernel by 10-40%).
Consistency: the RMS relative Frobenius error over seeds falls like F^-1/2 (docs/approx.md, "Error rate").
"""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from approx_reference import rms_errors, slope, z_scores
from ntkit import nn as N
from ntkit.approx.activation_features import HermiteSketchFeatures
from ntkit.approx.sketches import CountSketch, PolySketch
from ntkit.errors import ShapeError, UnsupportedError


def _images(n=6, channels=2, size=(5, 5)):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, channels, *size, generator=g, dtype=torch.float64)
    x[1] = 0.5 * x[0] + 0.1 * x[1]  # a correlated pair
    x[2] = 0.0  # a zero input
    return x


def _z_scores(net, x, get, method, n_features, n_seeds, **kw):
    return z_scores(net, x, get, method, n_features, n_seeds, **kw)[0]


# one hidden layer: (network, input shape); every spatial layer's options are exercised somewhere
ONE_LAYER = {
    "conv2d-same-avgpool-flatten": (
        lambda p: N.Sequential(
            N.Conv2d(2, 8, 3, W_std=1.3, b_std=0.2, parameterization=p),
            N.ReLU(),
            N.AvgPool2d(2, padding=1, count_include_pad=False),
            N.Flatten(),
            N.Linear(8 * 9, 1, W_std=0.9, b_std=0.1, parameterization=p),
        ),
        (2, 5, 5),
    ),
    "conv2d-stride-circular-gap": (
        lambda p: N.Sequential(
            N.Conv2d(2, 8, (3, 2), stride=2, padding_mode="circular", W_std=1.4, b_std=0.1, parameterization=p),
            N.Erf(),
            N.GlobalAvgPool(),
            N.Linear(8, 1, W_std=1.1, b_std=0.3, parameterization=p),
        ),
        (2, 5, 5),
    ),
    "conv2d-valid-dilated-sumpool-gap": (
        lambda p: N.Sequential(
            N.Conv2d(2, 8, 2, padding="valid", dilation=2, W_std=1.2, b_std=None, parameterization=p),
            N.LeakyReLU(0.2),
            N.SumPool2d(2, stride=1),
            N.GlobalSumPool(),
            N.Linear(8, 1, W_std=0.8, b_std=0.1, parameterization=p),
        ),
        (2, 5, 5),
    ),
    "conv1d-gelu-gap": (
        lambda p: N.Sequential(
            N.Conv1d(2, 8, 3, W_std=1.3, b_std=0.2, parameterization=p),
            N.GELU(),
            N.AvgPool1d(2),
            N.GlobalAvgPool(),
            N.Linear(8, 1, W_std=0.9, b_std=0.1, parameterization=p),
        ),
        (2, 7),
    ),
}


@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("case", list(ONE_LAYER))
def test_random_features_unbiased_one_conv_layer(case, parameterization, get):
    build, shape = ONE_LAYER[case]
    x = _images(channels=shape[0], size=shape[1:])
    z = _z_scores(build(parameterization), x, get, "random_features", 64, 200)
    assert z.abs().max() < 5


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_sketch_unbiased_for_a_polynomial_activation_cnn(get):
    """A polynomial of degree <= q has a finite Hermite series: the CNTK sketch is then exactly unbiased."""
    net = N.Sequential(
        N.Conv2d(2, 8, 3, W_std=1.2, b_std=0.2),
        N.Polynomial([0.3, 1.0, 0.5, -0.2]),
        N.AvgPool2d(2),
        N.GlobalAvgPool(),
        N.Linear(8, 1, W_std=0.9, b_std=0.1),
    )
    z = _z_scores(net, _images(), get, "sketch", 128, 200, degree=3)
    assert z.abs().max() < 5


def _cnn(depth):
    layers = [N.Conv2d(2, 8, 3, W_std=1.3, b_std=0.2), N.ReLU()]
    for _ in range(depth - 1):
        layers += [N.AvgPool2d(2, padding=1), N.Conv2d(8, 8, 3, W_std=1.3, b_std=0.1), N.ReLU()]
    return N.Sequential(*layers, N.GlobalAvgPool(), N.Linear(8, 1, W_std=0.9, b_std=0.1))


@pytest.mark.parametrize("method", ["random_features", "sketch"])
def test_cnn_error_falls_like_inverse_sqrt_features(method):
    """One convolutional layer with GAP, NTK: unbiased features (the sketch up to the series tail, far below the
    noise here), E‖error‖² = Σ Var/F, so the RMS error over 16 seeds against F = 2^6..2^11 has slope −1/2 within
    0.1 (measured −0.52 and −0.50)."""
    sizes = [2**k for k in range(6, 12)]
    x = torch.randn(10, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    errors = rms_errors(_cnn(1), "ntk", method, sizes, 16, x)
    assert abs(slope(sizes, errors) + 0.5) < 0.1


DEEP_SIZES = [2**k for k in range(6, 12)]


def _deep_slope(method, get, n_seeds):
    x = torch.randn(8, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return slope(DEEP_SIZES, rms_errors(_cnn(2), get, method, DEEP_SIZES, n_seeds, x))


@pytest.mark.slow
@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize(("method", "n_seeds"), [("random_features", 48), ("sketch", 128)])
def test_cnn_error_falls_like_inverse_sqrt_features_deep(method, n_seeds, get):
    """Two convolutional layers with average pooling between them and GAP: consistent features, fitted slope of
    the RMS error over F = 2^6..2^11 within 0.1 of −1/2, as the issue asks (measured: random features −0.50 NNGP
    and −0.49 NTK, sketch −0.52 NNGP and −0.49 NTK, each ± 0.03 by bootstrap over the seeds).

    Why the RMS and many seeds (docs/approx.md, "Error rate"): the fit of E‖error‖² = a/F + b/F² to the mean squared
    errors gives b/(aF) consistent with 0 (<= 0.2 ± 0.2 at F = 2^6-2^7), so the RMS has slope −1/2 over this range
    (the truncation bias of the sketch's degree-4 series, 2.0e-3 of ‖K‖ for this NTK, matters only beyond
    F ~ 2^19). But the errors have heavy tails: count sketches of the first layer's 19-coordinate patches
    collide with probability ∝ 1/F, so most draws have a small error and a few a large one; the mean squared
    error falls as 1/F while the median falls faster over this range (median slopes −0.55 to −0.70 for the
    sketch: the −0.66/−0.71 that the earlier median statistic measured). The RMS over 16-32 seeds scatters by
    20-30% and its slope by ±0.06-0.08; hence 48 (random features) and 128 (sketch) seeds."""
    fitted = _deep_slope(method, get, n_seeds)
    print(f"fitted slope {fitted:.3f}")  # shown by pytest -rP
    assert abs(fitted + 0.5) < 0.1


def _fixed_size_sketch(self, act, in_dim, out_dim, degree, generator):
    """HermiteSketchFeatures whose count sketches use 16 buckets per degree whatever n_features (the other output
    columns stay zero): a deliberately mis-scaled variant with a fixed-size internal stage."""
    self.act, self.out_dim, self.degree = act, out_dim, degree
    block = min(16, (out_dim - 1) // (degree + 1))
    self.linear = CountSketch(in_dim, out_dim - 1 - degree * block, generator)
    self.linear.hash %= block
    self.powers = PolySketch(in_dim, block, degree + 1, generator)


@pytest.mark.slow
def test_deep_cnn_rate_check_fails_a_fixed_size_stage(monkeypatch):
    """The rate test above can fail: with the activations' sketches held at a fixed size the error has a floor, and
    the fitted slope (same statistic, 32 seeds) is far above −0.4 (measured −0.16)."""
    monkeypatch.setattr(HermiteSketchFeatures, "__init__", _fixed_size_sketch)
    fitted = _deep_slope("sketch", "ntk", 32)
    print(f"fitted slope {fitted:.3f}")  # shown by pytest -rP
    assert fitted > -0.4


def test_flatten_widths_and_zero_columns():
    """Flatten multiplies the widths by the positions (9 here): the NNGP part has 9m + 1 columns, so F = 1001 is
    not reachable; the unused last columns are zero (the unbiasedness of this network is tested above)."""
    build, _ = ONE_LAYER["conv2d-same-avgpool-flatten"]
    net = build("ntk")
    feats = nk.approx.features(net, 1001, get="nngp", seed=0)
    assert feats.used_features == 9 * 111 + 1
    phi = feats(_images())
    assert phi.shape == (6, 1001) and torch.all(phi[:, feats.used_features :] == 0)
    assert nk.approx.features(net, 1000, get="nngp").used_features == 1000


def test_leading_flatten_takes_images():
    """Flatten then Linear: images are flattened first, the same features as the flat data."""
    net = N.Sequential(N.Flatten(), N.Linear(50, 16, W_std=1.3, b_std=0.1), N.ReLU(), N.Linear(16, 1))
    x = _images()
    feats = nk.approx.features(net, 256, seed=0)
    torch.testing.assert_close(feats(x), feats(x.flatten(1)))


def test_cnn_batches_and_float32():
    """A tiny memory budget (many batches) gives the same features; float32 inputs give float32 features."""
    net, x = _cnn(2), torch.randn(12, 2, 6, 6)
    feats = nk.approx.features(net, 512, method="sketch", seed=0)
    small = nk.approx.features(net, 512, method="sketch", seed=0, memory_budget=2_000_000)
    assert len(list(small.batches(x))) > 1
    phi = feats(x)
    assert phi.dtype == torch.float32
    torch.testing.assert_close(small(x), phi, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("net", "message"),
    [
        (N.Sequential(N.ConvLocal2d(2, 4, 3, (5, 5)), N.ReLU(), N.Flatten(), N.Linear(100, 1)), "ConvLocal2d"),
        (N.Sequential(N.Conv3d(2, 4, 3), N.ReLU(), N.GlobalAvgPool(), N.Linear(4, 1)), "Conv3d"),
        (N.Sequential(N.Conv2d(2, 4, 3), N.LayerNorm(4), N.ReLU(), N.GlobalAvgPool(), N.Linear(4, 1)), "LayerNorm"),
        (N.Sequential(N.Conv2d(2, 4, 3), N.ReLU(), N.Linear(4, 1)), "Flatten.*GlobalAvgPool"),
        (N.Sequential(N.Conv2d(2, 4, 3), N.ReLU(), N.Conv2d(4, 4, 3)), r"\(N, outputs\)"),
        (N.Sequential(N.Conv2d(2, 4, 3), N.ReLU(), N.Flatten()), "Linear layer right after a Flatten"),
        (N.Sequential(N.Conv2d(2, 4, 3), N.Flatten(), N.ReLU(), N.Linear(100, 1)), "follows Flatten"),
        (N.Sequential(N.Conv2d(2, 4, 3), N.ReLU(), N.Conv1d(4, 4, 3), N.GlobalAvgPool()), "spatial axes"),
        (N.Sequential(N.GlobalAvgPool(), N.Linear(2, 4), N.ReLU()), "network input"),
        (N.Sequential(N.Linear(2, 4), N.ReLU(), N.AvgPool2d(2), N.Linear(4, 1)), "without spatial axes"),
    ],
)
def test_unsupported_layers_are_named(net, message):
    """Every unsupported layer or arrangement names itself; unsupported layers point to the exact path."""
    with pytest.raises(UnsupportedError, match=message) as info:
        nk.approx.features(net)
    if message in ("ConvLocal2d", "Conv3d", "LayerNorm"):
        assert "nk.kernel" in str(info.value) and "nk.approx.nystrom" in str(info.value)


def test_cnn_input_shape_errors():
    feats = nk.approx.features(_cnn(1), 256)
    with pytest.raises(ShapeError, match=r"\(N, 2, \*, \*\)"):
        feats(torch.randn(3, 2, 5))
    with pytest.raises(ShapeError, match=r"\(N, 2, \*, \*\)"):
        feats(torch.randn(3, 3, 5, 5))
    valid = N.Sequential(N.Conv2d(2, 4, 3, padding="valid"), N.ReLU(), N.GlobalAvgPool(), N.Linear(4, 1))
    with pytest.raises(ShapeError, match="does not fit"):
        nk.approx.features(valid, 256)(torch.randn(3, 2, 2, 2))
    flat = nk.approx.features(ONE_LAYER["conv2d-same-avgpool-flatten"][0]("ntk"), 900)
    with pytest.raises(ShapeError, match="Flatten got 16 positions"):
        flat(torch.randn(3, 2, 7, 7))
