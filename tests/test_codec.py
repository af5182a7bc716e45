"""The bits-back codec: exact round trips, a rate close to the negative ELBO, one clear
error for every stream it cannot decode."""

from __future__ import annotations

import gzip
import math

import constriction
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_vae.compression.container import HEADER_BYTES, Header
from mnist_vae.compression.lossless import BitsBackCodec, _pad, _unpad, coding_groups
from mnist_vae.compression.near_lossless import Bins
from mnist_vae.errors import CodecError
from mnist_vae.model.vae import VAEConfig, save_model
from mnist_vae.training.loop import seeded_model
from mnist_vae.training.losses import kl_to_standard_normal, reconstruction_error


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
    return _folder(tmp_path_factory, "logistic_mixture")


@pytest.fixture(scope="module")
def codec(folder) -> BitsBackCodec:
    return BitsBackCodec.from_folder(folder)


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


def test_a_beta_binomial_model_codes_grey_digits(tmp_path_factory, digits):
    codec = BitsBackCodec.from_folder(_folder(tmp_path_factory, "beta_binomial"))
    assert np.array_equal(codec.decompress(codec.compress(digits[:20])), digits[:20])


def test_binarized_digits_code_with_a_bernoulli_model(tmp_path_factory, digits):
    codec = BitsBackCodec.from_folder(_folder(tmp_path_factory, "bce"))
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
            rec = reconstruction_error(codec.model.decode(z, images), images, codec.loss)
            nelbo.append((rec + kl_to_standard_normal(mean, logvar)).sum().item())
    expected_bits = sum(nelbo) / len(nelbo) / math.log(2)
    actual_bits = 8 * len(codec.compress(digits))
    assert actual_bits == pytest.approx(expected_bits, rel=0.02)


def test_a_stream_decodes_in_another_process(codec, folder, digits, decoded_elsewhere):
    assert np.array_equal(decoded_elsewhere(folder, codec.compress(digits[:40])), digits[:40])


def test_another_model_is_one_clear_error(codec, tmp_path_factory, digits):
    other = BitsBackCodec.from_folder(_folder(tmp_path_factory, "logistic_mixture", seed=1))
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


def test_a_group_the_model_codes_in_fewer_words_than_its_floor_is_padded(folder, digits):
    """Where a group's images cost fewer words than min_words each, the encoder pads the
    group up to its floor (here a floor above what any digit costs, so every group is)."""
    codec = BitsBackCodec.from_folder(folder)
    codec.min_words = 2 * len(codec.compress(digits[:40])) // 4 // 40  # twice what they cost
    data = codec.compress(digits[:40])
    groups = list(coding_groups(40, codec.batch))
    sizes = np.frombuffer(data[HEADER_BYTES:], "<u4")[: len(groups)]
    floors = [(g.stop - g.start) * codec.min_words for g in groups]
    assert all(floor <= size <= floor + 1 for size, floor in zip(sizes, floors, strict=True))
    assert np.array_equal(codec.decompress(data), digits[:40])


@settings(max_examples=60, deadline=None)
@given(
    stack=st.lists(st.integers(1, 2**32 - 1), min_size=2, max_size=40),  # no zero word ends one
    short=st.integers(-5, 3000),
    group=st.integers(0, 100),
)
def test_padding_reaches_its_target_and_pops_off_to_the_same_stack(stack, short, group):
    coder = constriction.stream.stack.AnsCoder(np.array(stack, np.uint32))
    before = coder.get_compressed().copy()
    target = coder.num_words() + short
    _pad(coder, target, group)
    assert target <= coder.num_words() <= max(target + 1, len(before) + 1)
    _unpad(coder, group)
    assert np.array_equal(coder.get_compressed(), before)


def test_padding_is_checked_when_popped():
    """Another group's padding (or damaged words where padding should be) is refused."""
    coder = constriction.stream.stack.AnsCoder(np.arange(1, 9, dtype=np.uint32))
    _pad(coder, coder.num_words() + 50, 3)
    with pytest.raises(ValueError, match="padding is not padding"):
        _unpad(coder.clone(), 4)
    _unpad(coder, 3)


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


def test_every_value_can_be_coded_even_where_the_model_is_certain(codec):
    """A pixel the model puts entirely on 0 (logistics far below the range, as narrow as
    they get) leaves the values 1..255 with integer probability 0; the codec still codes
    a 255 there (at a cost), so no image is ever refused."""
    from mnist_vae.compression import exact_likelihoods
    from mnist_vae.compression.fixed_point import ACTIVATION_BITS
    from mnist_vae.model.likelihoods import MIXTURE

    rows = torch.zeros(2, 3 * MIXTURE, dtype=torch.int64)
    rows[:, MIXTURE : 2 * MIXTURE] = -5 << ACTIVATION_BITS  # means far below level 0
    rows[:, 2 * MIXTURE :] = -7 << ACTIVATION_BITS  # the narrowest logistics
    table = exact_likelihoods.frequencies("logistic_mixture", rows)
    assert (table[:, 0] > 0).all() and (table[:, 1:] == 0).all()
    pixels = np.array([255, 0], np.uint8)
    for bins in (Bins(0), Bins(2)):  # lossless, and near-lossless: 255 is in the last bin
        coder = constriction.stream.stack.AnsCoder()
        codec._push_positions(coder, bins.symbols(pixels)[None], rows, bins)
        popped = codec._pop_pixels(coder, rows, bins)
        assert bins.reconstruct(popped).tolist() == bins.quantize(pixels).tolist()


def test_a_posterior_window_is_whole_buckets_of_grid_points_each_with_a_table(codec, digits):
    """The coder may pop a bucket against its zero probability (constriction leaves every
    entry a little): every place of every bucket is then still a grid point, and every
    bucket has a table to pop its place with. On the real test set a bucket 80 from the
    posterior's mass was popped once in 100,000 latents, before the table had a floor."""
    from mnist_vae.compression.lossless import BUCKET, GRID

    for images in (digits[:50], np.zeros((3, 28, 28), np.uint8)):
        window = codec._posterior(images)
        assert window.width % BUCKET == 0
        assert (window.low >= -GRID).all() and (window.low + window.width - 1 <= GRID).all()
        buckets = window.width // BUCKET
        assert window.buckets.shape == (images.shape[0] * 4, buckets)
        for bucket in range(buckets):
            table = window.places(np.full(len(window.low), bucket))
            assert (table >= 1).all()
        assert (window.buckets == 0).any()  # far tails: the case the floor is for


def test_the_coding_groups_are_the_models(codec, digits):
    """Groups of 1, 2, 4, ... up to the model's size, each listed with its words."""
    data = codec.compress(digits)
    header, words = Header.unpack(data)
    assert header.batch == codec.batch == 100  # a factorized model's
    sizes = [g.stop - g.start for g in coding_groups(len(digits), codec.batch)]
    assert sizes == [1, 2, 4, 8, 16, 32, 64, 23]
    assert words[: len(sizes)].sum() + len(codec._startup_words()) == len(words) - len(sizes)


def test_a_file_of_format_version_1_is_refused_with_one_line(codec, digits):
    data = bytearray(codec.compress(digits[:3]))
    data[4] = 1
    with pytest.raises(CodecError, match=r"^format version 1 \(before portable decoding: read it"):
        codec.decompress(bytes(data))


@pytest.mark.parametrize(
    ("version", "why", "release"),
    [
        (2, "a lossless file without a bound on its decoding work", "0.2"),
        (3, "a lossless file without a bound on its decoding work", "0.2"),
        (4, "a lossless file coded one 256-value table per pixel", "0.3"),
    ],
)
def test_a_lossless_file_of_an_older_version_is_refused_naming_its_release(
    codec, digits, version, why, release
):
    """Versions 2 and 3 carry no bound on their decoding work, 4 codes its symbols in one
    stage: one line naming the release that reads it, never decoded."""
    data = bytearray(codec.compress(digits[:6]))
    assert data[4] == 5
    data[4] = version
    with pytest.raises(CodecError) as refusal:
        codec.decompress(bytes(data))
    assert str(refusal.value) == (
        f"format version {version} ({why}: read it with mnist-vae {release}); "
        "this mnist-vae reads lossless version 5"
    )
