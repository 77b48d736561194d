"""MNIST / Fashion-MNIST / CIFAR-10 loaders on small files in the real formats (written by tests/datafiles.py),
checksums, the cache folder and downloads (through a file:// URL or a replaced fetch; nothing touches the network).
"""

import os
import pickle
import struct
from dataclasses import replace

import numpy as np
import pytest
import torch

import ntkit.data as nd
from datafiles import MNIST_NAMES, cifar_batches, idx_labels, md5, patch_md5s, write_cifar_tar, write_mnist
from ntkit.data import files, mnist
from ntkit.data.idx import read_idx, write_idx
from ntkit.errors import ChecksumError, DataFormatError, DataNotFoundError


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files(tmp_path, gz):
    xtr, ytr, xte, yte = write_mnist(tmp_path, gz=gz)
    ds = nd.load_mnist(tmp_path, verify=False, standardize=None, flatten=False)
    assert ds.x_train.shape == (40, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    np.testing.assert_allclose(ds.x_train[:, 0].numpy() * 255, xtr, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ds.x_test[:, 0].numpy() * 255, xte, rtol=0, atol=1e-9)
    assert ds.y_train.tolist() == ytr.tolist() and ds.y_test.tolist() == yte.tolist()
    flat = nd.load("mnist", data_dir=tmp_path, verify=False, classes=(1, 2, 3), n_train=3)
    assert flat.x_train.shape == (3, 784) and flat.n_classes == 3


def test_fashion_mnist_in_torchvision_layout(tmp_path):
    xtr, *_ = write_mnist(tmp_path / "FashionMNIST" / "raw", seed=4)
    ds = nd.load("fashion-mnist", data_dir=tmp_path, verify=False, standardize=None)
    np.testing.assert_allclose(ds.x_train.numpy() * 255, xtr.reshape(40, -1), atol=1e-9)
    assert ds.class_names[0] == "T-shirt/top"


def test_local_gz_files_are_verified_against_officialmd5(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    with pytest.raises(ChecksumError, match="official mnist file"):
        nd.load_mnist(tmp_path)  # the test files are not the official ones
    patch_md5s(monkeypatch, mnist, "MNIST", tmp_path)
    assert nd.load_mnist(tmp_path).n_train == 40


def test_missing_files_say_where_to_put_them(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataNotFoundError) as err:
        nd.load_mnist(tmp_path, verify=False)
    msg = str(err.value)
    assert "train-labels-idx1-ubyte.gz" in msg and "t10k-images-idx3-ubyte.gz" in msg
    assert "train-images-idx3-ubyte.gz," not in msg  # the file that is there is not listed as missing
    assert str(tmp_path) in msg and "download=True" in msg
    with pytest.raises(DataNotFoundError, match="cifar10"):
        nd.ensure_available("cifar10", tmp_path)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\x00\x00\x08", "magic"),
        (struct.pack(">II", 0x0A01, 3) + b"\x01\x02\x03", "magic"),
        (struct.pack(">II", 0x0801, 5) + b"\x01\x02", "truncated"),
        (b"\x1f\x8b\x08\x00garbage", "damaged"),
    ],
)
def test_malformed_idx_files(tmp_path, payload, match):
    path = tmp_path / "bad"
    path.write_bytes(payload)
    with pytest.raises(DataFormatError, match=match):
        read_idx(path)


def test_mnist_inconsistent_files(tmp_path):
    write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_labels(np.zeros(9)))
    with pytest.raises(DataFormatError, match="10 images but"):
        nd.load_mnist(tmp_path, verify=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_labels(np.full(10, 12)))
    with pytest.raises(DataFormatError, match=r"0\.\.9"):
        nd.load_mnist(tmp_path, verify=False)


def test_idx_writer_round_trip(tmp_path):
    for arr in (np.arange(24, dtype=np.int32).reshape(2, 3, 4), np.linspace(0, 1, 5)):
        write_idx(tmp_path / "a.gz", arr)
        np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    write_idx(tmp_path / "b", np.arange(6, dtype=np.uint8))
    assert (tmp_path / "b").read_bytes()[:8] == struct.pack(">II", 0x0801, 6)


# ----------------------------------------------------------------------------------------------- CIFAR-10


def test_cifar10_from_archive_and_extracted_folder(tmp_path):
    batches = cifar_batches()
    write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", batches)
    ds = nd.load("cifar10", data_dir=tmp_path, verify=False, standardize=None, flatten=False)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    # rows are R, G, B planes in C order: pixel (c, h, w) is data[c*1024 + h*32 + w]
    first = batches["data_batch_1"][b"data"][0]
    assert ds.x_train[0, 2, 5, 7] * 255 == pytest.approx(first[2 * 1024 + 5 * 32 + 7])
    assert ds.y_train[:6].tolist() == batches["data_batch_1"][b"labels"]
    assert ds.y_test.tolist() == batches["test_batch"][b"labels"]
    assert ds.class_names[7] == "horse"

    extracted = tmp_path / "other" / "cifar-10-batches-py"
    extracted.mkdir(parents=True)
    for name, content in batches.items():
        (extracted / name).write_bytes(pickle.dumps(content))
    ds2 = nd.load_cifar10(tmp_path / "other", verify=False, standardize=None, flatten=False)
    assert torch.equal(ds2.x_train, ds.x_train) and torch.equal(ds2.y_test, ds.y_test)
    with pytest.raises(ChecksumError, match="data_batch_1"):
        nd.load_cifar10(tmp_path / "other")  # verify=True: per-batch official MD5s


def test_cifar10_malformed(tmp_path):
    batches = cifar_batches()
    batches["data_batch_3"] = {b"data": batches["data_batch_3"][b"data"]}
    write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", batches)
    with pytest.raises(DataFormatError, match="b'labels'"):
        nd.load_cifar10(tmp_path, verify=False)

    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DataFormatError, match="tar"):
        nd.load_cifar10(tmp_path, verify=False)

    evil = {name: content for name, content in cifar_batches().items()}
    evil["test_batch"] = {b"data": os.system, b"labels": []}  # a pickle that references a callable
    sub = tmp_path / "evil"
    sub.mkdir()
    write_cifar_tar(sub / "cifar-10-python.tar.gz", evil)
    with pytest.raises(DataFormatError, match="not allowed"):
        nd.load_cifar10(sub, verify=False)


# ----------------------------------------------------------------------------------------------- downloads


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NTKIT_CACHE_DIR", str(tmp_path / "c"))
    assert files.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("NTKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert files.cache_dir() == tmp_path / "x" / "ntkit"


def test_download_into_cache_from_file_url(tmp_path, monkeypatch):
    """The real urllib fetch on a file:// URL; the official MD5s are replaced by those of the test files."""
    server = tmp_path / "server"
    write_mnist(server)
    spec = mnist.MNIST
    res = tuple(
        replace(r, md5=md5(server / r.filename), urls=((server / r.filename).as_uri(),)) for r in spec.resources
    )
    monkeypatch.setattr(mnist, "MNIST", replace(spec, resources=res))
    monkeypatch.setenv("NTKIT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError, match="download=True"):
        nd.load("mnist")
    ds = nd.load("mnist", download=True, standardize=None)
    assert ds.n_train == 40
    cached = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(f"{n}.gz" for n in MNIST_NAMES)
    assert nd.load("mnist", standardize=None).n_test == 10  # now found in the cache without download


def test_download_checksum_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("NTKIT_CACHE_DIR", str(tmp_path / "cache"))

    def fake_fetch(url, dest):
        dest.write_bytes(b"this is not the CIFAR-10 archive")

    monkeypatch.setattr(files, "fetch", fake_fetch)
    with pytest.raises(ChecksumError, match="c58f30108f718f92721af3b95e74349a"):
        nd.load("cifar10", download=True)
    folder = tmp_path / "cache" / "cifar10"
    assert list(folder.iterdir()) == []  # neither the file nor a .part remains


def test_download_tries_mirrors_and_reports_unreachable(tmp_path, monkeypatch):
    calls = []
    good = tmp_path / "good.bin"
    good.write_bytes(b"payload")

    def fake_fetch(url, dest):
        calls.append(url)
        if "bad" in url:
            raise OSError("connection refused")
        dest.write_bytes(good.read_bytes())

    monkeypatch.setattr(files, "fetch", fake_fetch)
    res = files.Resource("f.bin", md5(good), ("http://bad.example/f.bin", "http://ok.example/f.bin"))
    path = files.download(res, tmp_path / "dl", what="test")
    assert path.read_bytes() == b"payload" and calls == list(res.urls)
    with pytest.raises(DataNotFoundError, match="connection refused"):
        files.download(files.Resource("g.bin", "0" * 32, ("http://bad.example/g",)), tmp_path / "dl", what="test")
