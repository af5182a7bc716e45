"""CompressAI's learned codecs as lossy baselines: grey models, padding counted only in the
stream, real streams that decode to the pictures the encoder meant, the sweep's order."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_vae.compression import learned as lc
from mnist_vae.errors import CodecError
from mnist_vae.params import LEARNED_CODECS, LearnedBaselinesParams

TINY = {"channels": 8, "latent_channels": 8}
SETTLE = 300
"""the quantiles' steps after training: after a few steps of training they would take all
of the default 5,000 (10 s each time) to settle; what these tests check does not depend on
them settling"""


@pytest.mark.parametrize(
    ("name", "side"),
    [("bmshj2018-factorized", 32), ("bmshj2018-hyperprior", 64), ("mbt2018-mean", 64)],
)
def test_each_model_reads_and_writes_one_grey_channel_padded_to_its_factor(name, side):
    model = lc.build(name, **TINY)
    assert lc.padded_side(model) == side
    x = torch.rand(3, 1, 28, 28)
    out = model(lc.pad(x, side))
    assert out["x_hat"].shape == (3, 1, side, side)
    assert torch.equal(lc.crop(lc.pad(x, side)), x)
    border = lc.pad(x, side).clone()
    border[
        ..., (side - 28) // 2 : (side - 28) // 2 + 28, (side - 28) // 2 : (side - 28) // 2 + 28
    ] = 0
    assert not border.any()  # the padding is black


def test_the_loss_counts_the_digit_pixels_only():
    x = torch.rand(2, 1, 28, 28)
    far_off = lc.pad(x, 32) + 0.5 - 0.5 * lc.pad(torch.ones_like(x), 32)  # wrong padding only
    half = torch.full((2, 1, 1, 1), 0.5)
    output = {"x_hat": far_off, "likelihoods": {"y": half}}
    loss, bpp, mse = lc.rate_distortion_loss(output, x, lmbda=1.0)
    assert mse == pytest.approx(0, abs=1e-12) and bpp == pytest.approx(
        1 / 784
    )  # one bit per digit over 784 pixels
    assert loss == pytest.approx(bpp)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=3))
def test_a_packed_stream_unpacks_to_its_strings(strings):
    assert lc.unpack(lc.pack(strings), len(strings)) == strings


def test_a_stream_cut_inside_a_length_or_a_string_is_refused():
    stream = lc.pack([b"x" * 200, b"zz"])
    with pytest.raises(CodecError, match="inside a length"):
        lc.unpack(stream[:1], 2)
    with pytest.raises(CodecError, match="shorter than its lengths"):
        lc.unpack(stream[:50], 2)


@pytest.fixture(scope="module")
def digits(mnist_mirror):
    """96 digits to train on, 64 others to code."""
    raw = gzip.decompress((mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    return images[:96].copy(), images[96:160].copy()


@pytest.mark.parametrize("name", LEARNED_CODECS)
def test_streams_decode_to_the_pictures_the_encoder_meant(name, digits):
    train, test = digits
    torch.manual_seed(0)
    model = lc.build(name, **TINY)
    untrained = model.aux_loss().item()
    training = lc.train(model, train, 0.01, epochs=2, batch_size=32, lr=3e-3, seed=0,
                        settle_steps=SETTLE)  # fmt: skip
    assert training.steps == 6 and len(training.epoch_losses) == 2
    assert training.aux_loss < untrained  # the quantiles moved before the tables were built
    streams = lc.compress(model, test)
    assert len(streams) == len(test)
    decoded = lc.decompress(model, streams)
    assert decoded.dtype == np.uint8 and decoded.shape == test.shape
    assert np.array_equal(decoded, lc.intended(model, test))
    assert np.array_equal(lc.decompress(model, streams[::-1]), decoded[::-1])  # no batch effect


def test_the_quantiles_settle_for_at_most_settle_steps_after_training(digits):
    train = digits[0]
    aux_losses = []
    for settle_steps in (0, 10, 40):
        torch.manual_seed(0)
        model = lc.build("bmshj2018-factorized", **TINY)
        training = lc.train(model, train, 0.01, epochs=1, batch_size=32, lr=3e-3, seed=0,
                            settle_steps=settle_steps)  # fmt: skip
        aux_losses.append(training.aux_loss)
    assert aux_losses[0] > aux_losses[1] > aux_losses[2] > lc.SETTLED  # not settled: all used


def test_a_damaged_stream_does_not_pass_as_the_meant_picture(digits):
    train, test = digits
    torch.manual_seed(0)
    model = lc.build("bmshj2018-factorized", **TINY)
    lc.train(model, train, 0.01, epochs=1, batch_size=32, lr=3e-3, seed=0, settle_steps=SETTLE)
    streams = lc.compress(model, test)
    damaged = [bytes(b ^ 0xFF for b in s) for s in streams]
    assert not np.array_equal(lc.decompress(model, damaged), lc.intended(model, test))


def test_the_sweep_trains_the_largest_lambda_first_then_fine_tunes_each_next(digits):
    train, test = digits
    params = LearnedBaselinesParams(
        models=("bmshj2018-factorized",), lambdas=(0.001, 0.1, 0.01), epochs=2,
        fine_tune_epochs=1, batch_size=48, settle_steps=SETTLE, **TINY,
    )  # fmt: skip
    points = list(lc.sweep("bmshj2018-factorized", params, train, test))
    assert [p.lmbda for p in points] == [0.1, 0.01, 0.001]
    assert [p.training.epochs for p in points] == [2, 1, 1]
    assert all(p.decoded.shape == test.shape for p in points)
