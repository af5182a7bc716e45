import gzip

import pytest
import torch

from mnist_vae import data


def test_idx_files_parse_to_tensors(tmp_path, tiny_mnist):
    for name, payload in tiny_mnist.items():
        (tmp_path / name).write_bytes(payload)
    images, labels = data.load_split(tmp_path, "train")
    assert images.shape == (12, 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == [i % 10 for i in range(12)]
    x, _y = data.load_images(tmp_path, "test")
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(x[0, 0], data.load_split(tmp_path, "test")[0][0].float() / 255)


def test_limits_take_a_seeded_subset_or_the_first_images(tmp_path, tiny_mnist):
    for name, payload in tiny_mnist.items():
        (tmp_path / name).write_bytes(payload)
    a, la = data.load_images(tmp_path, "train", limit=4, seed=0)
    b, lb = data.load_images(tmp_path, "train", limit=4, seed=0)
    _c, lc = data.load_images(tmp_path, "train", limit=4, seed=1)
    assert len(a) == 4 and torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(la, lc)
    _first, labels = data.load_images(tmp_path, "test", limit=3, random_subset=False)
    assert labels.tolist() == [0, 1, 2]
    assert len(data.load_images(tmp_path, "train", limit=0)[0]) == 12


def test_payload_verification(tiny_mnist):
    name = "train-labels-idx1-ubyte"
    good = gzip.compress(tiny_mnist[name])
    assert data.verified_payload(good, name) == tiny_mnist[name]
    with pytest.raises(data.ChecksumError, match="sha256"):
        data.verified_payload(gzip.compress(tiny_mnist[name] + b"x"), name)
    with pytest.raises(data.ChecksumError, match="gzip"):
        data.verified_payload(good[: len(good) // 2], name)
    with pytest.raises(data.ChecksumError, match="gzip"):
        data.verified_payload(b"<html>not found</html>", name)


def test_mirror_env_comes_first(monkeypatch):
    monkeypatch.setenv(data.MIRROR_ENV, "/srv/mnist")
    assert data.default_sources() == ["/srv/mnist", *data.OFFICIAL_MIRRORS]
    monkeypatch.delenv(data.MIRROR_ENV)
    assert data.default_sources() == list(data.OFFICIAL_MIRRORS)


def test_official_mirrors_are_torchvisions():
    from torchvision.datasets import MNIST

    assert list(data.OFFICIAL_MIRRORS) == list(MNIST.mirrors)


def test_real_files_verify(mnist_mirror, tmp_path):
    """The offline mirror's files pass the official checksums (a real, full-size run)."""
    out = data.download_mnist(tmp_path / "mnist", [str(mnist_mirror)], progress=False)
    images, labels = data.load_split(out, "train")
    assert images.shape == (60000, 28, 28)
    assert torch.bincount(labels).tolist()[:3] == [5923, 6742, 5958]
    assert len(data.load_split(out, "test")[0]) == 10000
