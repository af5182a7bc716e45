"""The bits-back codec: exact round trips, a rate close to the negative ELBO, one clear
error for every stream it cannot decode."""

from __future__ import annotations

import gzip
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from mnist_vae.codec import HEADER_BYTES, BitsBackCodec, Header
from mnist_vae.errors import CodecError
from mnist_vae.losses import kl_to_standard_normal, reconstruction_error
from mnist_vae.model import VAEConfig, save_model
from mnist_vae.training import seeded_model


@pytest.fixture(scope="module")
def digits(mnist_mirror) -> np.ndarray:
    """The first 150 MNIST test images, uint8."""
    raw = gzip.decompress((mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:150].copy()


def _folder(tmp_path_factory, loss: str, seed: int = 0):
    folder = tmp_path_factory.mktemp(f"model-{loss}-{seed}")
    save_model(seeded_model(VAEConfig(latent_dim=4, likelihood=loss), seed), folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory, "beta_binomial")


@pytest.fixture(scope="module")
def codec(folder) -> BitsBackCodec:
    return BitsBackCodec.from_folder(folder, batch=32)


def test_real_digits_come_back_exactly(codec, digits):
    data = codec.compress(digits)
    assert np.array_equal(codec.decompress(data), digits)
    assert len(data) > HEADER_BYTES and (len(data) - HEADER_BYTES) % 4 == 0


@pytest.mark.parametrize("kind", ["all 0", "all 255", "noise"])
def test_adversarial_images_come_back_exactly(codec, digits, kind):
    generator = np.random.default_rng(0)
    images = {
        "all 0": np.zeros((5, 28, 28), np.uint8),
        "all 255": np.full((5, 28, 28), 255, np.uint8),
        "noise": generator.integers(0, 256, (5, 28, 28), dtype=np.uint8),
    }[kind]
    data = codec.compress(images)
    assert np.array_equal(codec.decompress(data), images)
    if kind == "noise":  # lossless still, only larger than digits
        assert len(data) > len(codec.compress(digits[:5]))


def test_binarized_digits_code_with_a_bernoulli_model(tmp_path_factory, digits):
    codec = BitsBackCodec.from_folder(_folder(tmp_path_factory, "bce"), batch=32)
    binary = (digits > 127).astype(np.uint8)
    assert np.array_equal(codec.decompress(codec.compress(binary)), binary)
    with pytest.raises(CodecError, match=r"codes values 0\.\.1"):
        codec.compress(digits)


def test_the_rate_is_the_negative_elbo(codec, digits):
    """The bytes written match the model's expected one-sample negative ELBO within 2%
    (header, start-up words and the latent grid included)."""
    images = torch.from_numpy(digits).float().div(255).unsqueeze(1)
    with torch.no_grad():
        mean, logvar = codec.model.encode(images)
        nelbo = []
        for seed in range(8):
            z = codec.model.reparameterize(mean, logvar, torch.Generator().manual_seed(seed))
            rec = reconstruction_error(codec.model.decode(z), images, "beta_binomial")
            nelbo.append((rec + kl_to_standard_normal(mean, logvar)).sum().item())
    expected_bits = sum(nelbo) / len(nelbo) / math.log(2)
    actual_bits = 8 * len(codec.compress(digits))
    assert actual_bits == pytest.approx(expected_bits, rel=0.02)


def test_a_stream_decodes_in_another_process(codec, folder, digits, tmp_path):
    stream = tmp_path / "digits.mvae"
    stream.write_bytes(codec.compress(digits[:40]))
    code = (
        "import sys, numpy as np\n"
        "from mnist_vae.codec import BitsBackCodec\n"
        "codec = BitsBackCodec.from_folder(sys.argv[1])\n"  # default batch: read from the header
        "images = codec.decompress(open(sys.argv[2], 'rb').read())\n"
        "np.save(sys.argv[3], images)\n"
    )
    out = tmp_path / "out.npy"
    subprocess.run([sys.executable, "-c", code, str(folder), str(stream), str(out)], check=True)
    assert np.array_equal(np.load(out), digits[:40])


def test_another_model_is_one_clear_error(codec, tmp_path_factory, digits):
    other = BitsBackCodec.from_folder(_folder(tmp_path_factory, "beta_binomial", seed=1))
    with pytest.raises(CodecError, match="compressed with another model"):
        other.decompress(codec.compress(digits[:3]))


def test_damaged_streams_are_one_clear_error_never_wrong_images(codec, digits):
    data = codec.compress(digits[:20])
    with pytest.raises(CodecError, match="no MVAE header"):
        codec.decompress(b"PNG" + data)
    with pytest.raises(CodecError, match="truncated"):
        codec.decompress(data[: HEADER_BYTES + 2])
    with pytest.raises(CodecError, match="format version 9"):
        codec.decompress(data[:4] + bytes([9]) + data[5:])
    cut = data[: len(data) - 8]
    flipped = bytearray(data)
    flipped[HEADER_BYTES + 40] ^= 0x10
    checksum = bytearray(data)
    checksum[HEADER_BYTES - 1] ^= 0x01  # the pixels' checksum itself
    for damaged in (cut, bytes(flipped), bytes(checksum)):
        with pytest.raises(CodecError):
            codec.decompress(damaged)


def test_the_header_reads_back():
    header = Header(b"m" * 32, 10_000, 28, 28, 256, 100, 8, b"p" * 8)
    packed = header.pack()
    assert len(packed) == HEADER_BYTES
    assert Header.unpack(packed + b"\x01\x00\x00\x00")[0] == header


def test_images_of_the_wrong_shape_are_refused(codec):
    with pytest.raises(CodecError, match=r"N x H x W; got shape \(28, 28\)"):
        codec.compress(np.zeros((28, 28), np.uint8))
    with pytest.raises(CodecError, match="this model codes 28 x 28 images; got 32 x 32"):
        codec.compress(np.zeros((2, 32, 32), np.uint8))


def test_frequencies_are_positive_even_where_the_model_is_certain():
    """A pixel the model puts entirely on 0 leaves all other values at probability 0 in
    floating point: they still get frequency 1, so any value can be coded."""
    from mnist_vae.codec import frequencies

    weights = torch.tensor([[0.0, -math.inf, -math.inf], [-math.inf, -math.inf, -math.inf]])
    table = frequencies(weights)
    assert table.tolist() == [[float(1 << 22), 1.0, 1.0], [1.0, 1.0, 1.0]]


def test_the_round_trip_reports_the_rate_of_the_bytes_and_its_gap(folder, digits):
    from mnist_vae.codec import round_trip

    trip = round_trip(folder, digits[:20])
    assert trip.bits_per_pixel == 8 * len(trip.data) / digits[:20].size
    metrics = trip.metrics(nelbo_bits_per_pixel=4.0, iwae_bits_per_pixel=3.9)
    assert metrics["gap_to_nelbo"] == pytest.approx(trip.bits_per_pixel / 4.0 - 1)
    assert set(trip.speed()) == {"compress_images_per_second", "decompress_images_per_second"}
    assert not set(trip.speed()) & set(metrics)  # no clock among the reproducible figures


def test_which_models_code_which_pixels():
    from mnist_vae.codec import no_codec_reason

    assert no_codec_reason("logistic_mixture", binary=False) is None
    assert no_codec_reason("bce", binary=True) is None
    assert no_codec_reason("bce", binary=False) == (
        "a model trained with train.loss bce on grey pixels is no codec for them"
    )
    assert "train.loss mse on binary pixels" in no_codec_reason("mse", binary=True)
