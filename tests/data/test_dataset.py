"""The Dataset value, the shared preprocessing, digits, the circle set and the target encodings.

References: scikit-learn's own digits arrays, numpy statistics computed here, closed-form targets.
"""

import numpy as np
import pytest
import torch

import ntkit.data as nd
from ntkit.errors import InvalidArgumentError, ShapeError


def _raw(n_train=30, n_test=12, n_classes=3, seed=1):
    rng = np.random.default_rng(seed)
    xtr = rng.integers(0, 256, size=(n_train, 1, 4, 4)).astype(np.uint8)
    xte = rng.integers(0, 256, size=(n_test, 1, 4, 4)).astype(np.uint8)
    return xtr, np.arange(n_train) % n_classes, xte, np.arange(n_test) % n_classes


def test_digits_split_is_fixed_disjoint_and_covers_sklearn_data():
    from sklearn.datasets import load_digits

    ref = load_digits().data
    ds = nd.load("digits", standardize=None)
    assert (ds.n_train, ds.n_test, ds.input_shape, ds.n_classes) == (1348, 449, (64,), 10)
    raw = torch.cat([ds.x_train, ds.x_test]) * 16  # pixels were scaled by 1/16 only
    assert torch.equal(raw, raw.round())
    # every sklearn row appears exactly once across the two splits
    got = sorted(map(tuple, raw.numpy().astype(int).tolist()))
    assert got == sorted(map(tuple, ref.astype(int).tolist()))
    again = nd.load("digits", standardize=None, seed=5)  # seed chooses subsets only, not the split
    assert torch.equal(again.x_test, ds.x_test)


def test_digits_subset_classes_sizes_images_and_nesting():
    ds = nd.load_digits(classes=(3, 5), n_train=40, n_test=20, flatten=False, seed=3)
    assert ds.x_train.shape == (40, 1, 8, 8) and ds.x_test.shape == (20, 1, 8, 8)
    assert ds.image_shape == (1, 8, 8) and ds.class_names == ("3", "5") and ds.n_classes == 2
    assert set(ds.y_train.tolist()) == {0, 1} and ds.y_train.dtype == torch.int64
    small = nd.load_digits(classes=(3, 5), n_train=10, n_test=5, flatten=False, seed=3, standardize=None)
    big = nd.load_digits(classes=(3, 5), n_train=40, n_test=20, flatten=False, seed=3, standardize=None)
    assert torch.equal(small.x_train, big.x_train[:10]) and torch.equal(small.y_test, big.y_test[:5])
    assert ds.flatten().x_train.shape == (40, 64)


@pytest.mark.parametrize("standardize", ["global", "feature"])
def test_standardisation_uses_train_statistics(standardize):
    xtr, ytr, xte, yte = _raw()
    ds = nd.prepare("toy", xtr, ytr, xte, yte, n_classes=3, scale=1 / 255, standardize=standardize)
    a, b = xtr.reshape(len(xtr), -1) / 255, xte.reshape(len(xte), -1) / 255
    if standardize == "global":
        mean, std = a.mean(), a.std(ddof=1)
    else:
        mean, std = a.mean(0), a.std(0, ddof=1)
    np.testing.assert_allclose(ds.x_train.numpy(), (a - mean) / std, rtol=1e-12)
    np.testing.assert_allclose(ds.x_test.numpy(), (b - mean) / std, rtol=1e-12)


def test_feature_standardisation_leaves_constant_features_centred_not_nan():
    xtr, ytr, xte, yte = _raw()
    xtr[:, 0, 0, 0] = 7
    ds = nd.prepare("toy", xtr, ytr, xte, yte, n_classes=3, standardize="feature")
    assert torch.isfinite(ds.x_train).all() and torch.all(ds.x_train[:, 0] == 0)


@pytest.mark.parametrize(("normalize", "norm"), [("unit", 1.0), ("sqrt_dim", 4.0)])
def test_row_normalisation(normalize, norm):
    xtr, ytr, xte, yte = _raw()
    xtr[0] = 0
    ds = nd.prepare("toy", xtr, ytr, xte, yte, n_classes=3, standardize=None, normalize=normalize)
    norms = ds.x_train.norm(dim=1)
    assert norms[0] == 0  # a zero row stays zero
    torch.testing.assert_close(norms[1:], torch.full_like(norms[1:], norm), rtol=1e-12, atol=0)
    torch.testing.assert_close(ds.x_test.norm(dim=1), torch.full((12,), norm, dtype=torch.float64))


def test_prepare_rejects_bad_options():
    xtr, ytr, xte, yte = _raw()
    with pytest.raises(InvalidArgumentError, match="standardize"):
        nd.prepare("toy", xtr, ytr, xte, yte, n_classes=3, standardize="minmax")
    with pytest.raises(InvalidArgumentError, match="normalize"):
        nd.prepare("toy", xtr, ytr, xte, yte, n_classes=3, normalize="l1")
    with pytest.raises(InvalidArgumentError, match="only 30"):
        nd.prepare("toy", xtr, ytr, xte, yte, n_classes=3, n_train=31)
    with pytest.raises(InvalidArgumentError, match="classes"):
        nd.prepare("toy", xtr, ytr, xte, yte, n_classes=3, classes=(0, 3))
    with pytest.raises(InvalidArgumentError, match="dtype"):
        nd.prepare("toy", xtr, ytr, xte, yte, n_classes=3, dtype=torch.int32)
    with pytest.raises(InvalidArgumentError, match="unknown data set 'svhn'"):
        nd.load("svhn")


def test_circle_points_on_sphere_with_sine_target():
    ds = nd.load("circle", n_train=50, n_test=20, frequency=3, seed=2)
    assert ds.n_classes is None and ds.y_train.shape == (50, 1) and ds.y_train.dtype == torch.float64
    torch.testing.assert_close(ds.x_train.norm(dim=1), torch.ones(50, dtype=torch.float64))
    theta = torch.atan2(ds.x_train[:, 1], ds.x_train[:, 0])
    torch.testing.assert_close(ds.y_train[:, 0], torch.sin(3 * theta), rtol=0, atol=1e-12)
    assert torch.equal(nd.load("circle", n_train=50, n_test=20, frequency=3, seed=2).x_train, ds.x_train)
    sphere = nd.load_circle(30, 10, dim=5, noise=0.1)
    assert sphere.x_train.shape == (30, 5)
    torch.testing.assert_close(sphere.x_test.norm(dim=1), torch.ones(10, dtype=torch.float64))
    # the noise goes to the train targets only
    exact = nd.synthetic.circle_target(sphere.x_test.numpy(), 2)
    np.testing.assert_allclose(sphere.y_test.numpy(), exact)
    resid = sphere.y_train.numpy() - nd.synthetic.circle_target(sphere.x_train.numpy(), 2)
    assert 0.03 < resid.std() < 0.3
    with pytest.raises(InvalidArgumentError, match="regression"):
        nd.load("circle", classes=(0, 1))
    with pytest.raises(InvalidArgumentError, match="dim"):
        nd.load("circle", dim=1)


def test_target_encodings():
    y = torch.tensor([0, 2, 1])
    torch.testing.assert_close(nd.one_hot(y, 3), torch.eye(3, dtype=torch.float64)[[0, 2, 1]])
    torch.testing.assert_close(nd.centered_one_hot(y, 3), torch.eye(3, dtype=torch.float64)[[0, 2, 1]] - 0.1)
    torch.testing.assert_close(
        nd.plus_minus_one(torch.tensor([0, 1, 1])), torch.tensor([[-1.0], [1.0], [1.0]]).double()
    )
    assert nd.encode_targets(y, 3).shape == (3, 3)  # auto: centred one-hot
    assert nd.encode_targets(torch.tensor([0, 1]), 2).tolist() == [[-1.0], [1.0]]  # auto: ±1
    reg = torch.randn(4, 1, dtype=torch.float64)
    assert torch.equal(nd.encode_targets(reg, None), reg)
    with pytest.raises(InvalidArgumentError, match="two classes"):
        nd.encode_targets(y, 3, "pm1")
    with pytest.raises(InvalidArgumentError, match="regression"):
        nd.encode_targets(reg, None, "one_hot")
    with pytest.raises(InvalidArgumentError, match=r"0\.\.1"):
        nd.plus_minus_one(torch.tensor([0, 2]))
    with pytest.raises(ShapeError):
        nd.one_hot(torch.tensor([0.0, 1.0]), 2)
    assert nd.predicted_labels(torch.tensor([[0.3], [-0.2]])).tolist() == [1, 0]
    assert nd.predicted_labels(torch.tensor([[0.1, 0.5, 0.2]])).tolist() == [1]


def test_dataset_targets_and_to():
    ds = nd.load_digits(classes=(3, 5, 8), n_train=12, n_test=6)
    ytr, yte = ds.targets("one_hot")
    assert ytr.shape == (12, 3) and yte.shape == (6, 3) and torch.all(ytr.sum(1) == 1)
    f32 = ds.to(dtype=torch.float32)
    assert f32.x_train.dtype == torch.float32 and f32.y_train.dtype == torch.int64
    assert "3 classes" in repr(ds)
