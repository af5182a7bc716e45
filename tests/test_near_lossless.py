"""Near-lossless files: every pixel within k grey levels of the original, by construction,
and exactly the pixels the encoder meant, wherever they are decoded."""

from __future__ import annotations

import dataclasses
import gzip

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mnist_vae.compression import exact_likelihoods
from mnist_vae.compression.container import HEADER_BYTES, NEAR_LOSSLESS, Header
from mnist_vae.compression.lossless import BitsBackCodec
from mnist_vae.compression.near_lossless import MAX_ERROR, Bins
from mnist_vae.errors import CodecError
from mnist_vae.model.likelihoods import MIXTURE
from mnist_vae.model.vae import VAEConfig, save_model
from mnist_vae.training.loop import seeded_model

FACTORIZED = VAEConfig(latent_dim=4, likelihood="logistic_mixture")
PASSES = dataclasses.replace(FACTORIZED, decoder="autoregressive", pass_schedule="passes-4")


@pytest.fixture(scope="module")
def digits(mnist_mirror) -> np.ndarray:
    raw = gzip.decompress((mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:60].copy()


def _codec(tmp_path_factory, config: VAEConfig) -> tuple[BitsBackCodec, object]:
    folder = tmp_path_factory.mktemp("near-lossless")
    save_model(seeded_model(config, 0), folder)
    return BitsBackCodec.from_folder(folder), folder


@pytest.fixture(scope="module")
def factorized(tmp_path_factory):
    return _codec(tmp_path_factory, FACTORIZED)


@pytest.fixture(scope="module")
def passes(tmp_path_factory):
    return _codec(tmp_path_factory, PASSES)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 7, 8, 50, 64, 126, 127])
def test_every_level_is_in_one_bin_within_k_of_its_centre(k):
    bins = Bins(k)
    levels = np.arange(256, dtype=np.uint8)
    symbols = bins.symbols(levels)
    assert symbols[0] == 0 and symbols[-1] == bins.count - 1
    assert np.all(np.diff(symbols) >= 0) and set(symbols) == set(range(bins.count))
    assert np.abs(bins.quantize(levels).astype(int) - levels).max() == k
    assert bins.quantize(np.array([0, 255], np.uint8)).tolist() == [0, 255]  # black and white
    assert bins.widths.max() <= 2 * k + 1
    for symbol, edge in enumerate(bins.edges):  # the edge above a bin is its top level
        assert levels[symbols == symbol].max() == edge
    assert np.array_equal(bins.quantize(bins.quantize(levels)), bins.quantize(levels))


def test_lossless_is_each_level_its_own_bin():
    assert Bins(0).count == 256 and np.array_equal(Bins(0).edges, exact_likelihoods.LOSSLESS_EDGES)


@pytest.mark.parametrize("loss", ["logistic_mixture", "beta_binomial"])
def test_the_staged_tables_are_the_likelihood_summed_over_each_bin(loss):
    """P(not bin 0) P(group | not 0) P(bin | group) is the likelihood's mass over the bin's
    levels, integer for integer, for any k (the coder's normalisation aside)."""
    rows = torch.randint(-3 << 16, 3 << 16, (7, 3 * MIXTURE if loss == "logistic_mixture" else 2))
    full = exact_likelihoods.frequencies(loss, rows)
    for k in (0, 1, 5, 64):
        bins = Bins(k)
        mass = torch.stack(
            [full[:, np.flatnonzero(bins.symbols(np.arange(256)) == s)].sum(1)
             for s in range(bins.count)], dim=1,
        )  # fmt: skip
        zero = exact_likelihoods.zero_frequencies(loss, rows, bins.edges)
        assert torch.equal(zero[:, 1], mass[:, 0])
        assert torch.equal(zero[:, 0], mass[:, 1:].sum(1))
        groups = exact_likelihoods.bin_frequencies(loss, rows, bins.edges)
        for group in range(groups.shape[1]):
            inside = mass[:, 1 + 16 * group : 17 + 16 * group]
            assert torch.equal(groups[:, group], inside.sum(1))
            place = exact_likelihoods.in_bin_frequencies(
                loss, rows, torch.full((7,), group), bins.edges
            )
            assert torch.equal(place[:, : inside.shape[1]], inside)
            assert (place[:, inside.shape[1] :] == 0).all()  # the places past the last bin


def _round_trip(codec: BitsBackCodec, images: np.ndarray, k: int) -> np.ndarray:
    data = codec.compress(images, max_error=k)
    header, words = Header.unpack(data)
    assert header.mode == NEAR_LOSSLESS and words[0] == k
    return codec.decompress(data)


@settings(max_examples=25, deadline=None)
@given(
    images=arrays(np.uint8, st.tuples(st.integers(1, 3), st.just(28), st.just(28))),
    k=st.integers(1, MAX_ERROR),
)
def test_any_image_comes_back_within_k_as_the_encoder_meant(factorized, images, k):
    decoded = _round_trip(factorized[0], images, k)
    assert np.abs(decoded.astype(int) - images).max() <= k
    assert np.array_equal(decoded, Bins(k).quantize(images))


@settings(max_examples=8, deadline=None)
@given(
    images=arrays(np.uint8, st.tuples(st.integers(1, 2), st.just(28), st.just(28))),
    k=st.integers(1, MAX_ERROR),
)
def test_a_pass_head_reads_the_reconstruction_on_both_sides(passes, images, k):
    decoded = _round_trip(passes[0], images, k)
    assert np.array_equal(decoded, Bins(k).quantize(images))


@pytest.mark.parametrize("k", [1, 4, 32])
def test_real_digits_cost_fewer_bytes_as_k_grows(factorized, passes, digits, k):
    for codec, _ in (factorized, passes):
        decoded = _round_trip(codec, digits, k)
        assert np.abs(decoded.astype(int) - digits).max() <= k
        assert len(codec.compress(digits, max_error=k)) < len(codec.compress(digits))
    assert len(codec.compress(digits, max_error=2 * k)) < len(codec.compress(digits, max_error=k))


@pytest.mark.parametrize("k", [128, -1, "two", 2.5, True, None])
def test_a_bad_k_is_refused_with_one_line(factorized, digits, k):
    """(0 is lossless here; the command line's ``--max-error 0`` is refused: test_cli.)"""
    with pytest.raises(CodecError, match=r"the largest error must be (an integer )?0\.\.127") as no:
        factorized[0].compress(digits[:2], max_error=k)
    assert "\n" not in str(no.value)


def test_a_binary_model_codes_losslessly_only(tmp_path_factory, digits):
    codec, _ = _codec(tmp_path_factory, dataclasses.replace(FACTORIZED, likelihood="bce"))
    with pytest.raises(CodecError, match="binary pixels codes them losslessly only"):
        codec.compress((digits[:2] > 127).astype(np.uint8), max_error=2)


def test_a_damaged_bound_or_file_is_refused(factorized, digits):
    codec = factorized[0]
    data = codec.compress(digits[:20], max_error=3)
    for bound in (0, 128, 2**31):
        damaged = data[:HEADER_BYTES] + bound.to_bytes(4, "little") + data[HEADER_BYTES + 4 :]
        with pytest.raises(CodecError, match=r"largest error must be 1\.\.127"):
            codec.decompress(damaged)
    other_bound = data[:HEADER_BYTES] + (5).to_bytes(4, "little") + data[HEADER_BYTES + 4 :]
    flipped = bytearray(data)
    flipped[-30] ^= 0x20
    for damaged in (other_bound, bytes(flipped), data[:-8]):
        with pytest.raises(CodecError):
            codec.decompress(damaged)


def test_lossless_files_are_unchanged_by_the_mode(factorized, digits):
    """max_error=0 is the lossless file, byte for byte: no bound word, mode 0."""
    codec = factorized[0]
    assert codec.compress(digits[:10], max_error=0) == codec.compress(digits[:10])
    assert Header.unpack(codec.compress(digits[:10]))[0].mode == 0


def test_a_file_decodes_in_another_process_with_another_thread_count(
    passes, digits, decoded_elsewhere
):
    codec, folder = passes
    decoded = decoded_elsewhere(folder, codec.compress(digits[:25], max_error=6))
    assert np.array_equal(decoded, Bins(6).quantize(digits[:25]))
