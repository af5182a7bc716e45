"""The autoregressive decoder under every pass schedule: a pixel reads only pixels of
earlier passes, the same parameters whether an image is done at once or a pass at a time
(in floats and in integers), and a lossless codec whose streams decode in another process
with another thread count."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from mnist_vae.compression.container import HEADER_BYTES, Header
from mnist_vae.compression.fixed_point import ExactNetwork
from mnist_vae.compression.lossless import BitsBackCodec
from mnist_vae.errors import CodecError
from mnist_vae.model import autoregressive
from mnist_vae.model.autoregressive import PASS_SCHEDULES, causal_offsets, pass_of_pixels
from mnist_vae.model.vae import VAEConfig, load_model, save_model
from mnist_vae.training.loop import seeded_model

CONFIG = VAEConfig(latent_dim=4, likelihood="logistic_mixture", decoder="autoregressive")


@pytest.fixture(scope="module", params=["raster", "passes-4"])
def model(request):
    """The small untrained model, with the raster head and with a pass schedule."""
    return _schedule_model(request.param)


@pytest.fixture(scope="module")
def digits(mnist_mirror) -> np.ndarray:
    raw = gzip.decompress((mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:60].copy()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("autoregressive")
    save_model(model, folder)
    return folder


def test_the_context_is_the_pixels_before_in_raster_order():
    assert causal_offsets(1) == [(-1, -1), (-1, 0), (-1, 1), (0, -1)]
    assert len(causal_offsets(3)) == 24


def test_the_pass_schedules_nest_coarse_to_fine():
    """Each schedule's passes split the passes of the one with half as many: the checkerboard
    is 2 passes of 392 pixels, the 2 x 2 lattice's first pass its even rows and columns."""
    assert pass_of_pixels("raster", 28).tolist() == list(range(784))
    previous = torch.zeros(784, dtype=torch.int64)
    for passes in (2, 4, 8, 16):
        pass_of = pass_of_pixels(f"passes-{passes}", 28)
        assert torch.bincount(pass_of).tolist() == [784 // passes] * passes
        assert torch.equal(pass_of // 2, previous)
        previous = pass_of
    grid = pass_of_pixels("passes-2", 28).view(28, 28)
    assert torch.equal(grid, (torch.arange(28)[:, None] + torch.arange(28)) % 2)
    assert (pass_of_pixels("passes-4", 28).view(28, 28)[::2, ::2] == 0).all()
    with pytest.raises(ValueError, match="unknown pass schedule"):
        pass_of_pixels("passes-3", 28)


def _schedule_model(schedule: str):
    import dataclasses

    return seeded_model(dataclasses.replace(CONFIG, pass_schedule=schedule), 0).eval()


@pytest.mark.parametrize("schedule", PASS_SCHEDULES)
def test_a_pixel_sees_no_pixel_of_its_own_pass_or_a_later_one(schedule):
    """Changing the pixels of pass k and later leaves the parameters of every pixel of
    passes 0..k as they were, and changes some after."""
    model = _schedule_model(schedule)
    pass_of = pass_of_pixels(schedule, 28)
    x = torch.rand(2, 1, 28, 28).mul(255).round().div(255)
    z = torch.randn(2, 4)
    k = int(pass_of.max()) // 2
    y = x.flatten(1).clone()
    later = pass_of >= k
    y[:, later] = torch.rand_like(y[:, later]).mul(255).round().div(255)
    with torch.no_grad():
        before = model.decode(z, x).flatten(2)
        after = model.decode(z, y.view_as(x)).flatten(2)
    same = pass_of <= k
    assert torch.equal(before[:, :, same], after[:, :, same])
    assert not torch.equal(before[:, :, ~same], after[:, :, ~same])


@pytest.mark.parametrize("schedule", ["raster", "passes-4"])
def test_the_picture_is_each_pixels_expected_value_given_the_earlier_passes(schedule):
    """The picture is built a pass at a time; the parameters the whole-image pass gives for
    that picture have it as their means."""
    model = _schedule_model(schedule)
    z = torch.randn(3, 4)
    with torch.no_grad():
        picture = model.mean_image(z, exact=False)
        means = model.likelihood.mean(model.decode(z, picture), exact=False)
    assert torch.allclose(means, picture, atol=1e-5)


def test_a_large_batch_of_pictures_is_drawn_in_chunks_as_drawn_at_once(monkeypatch):
    """Under a pass schedule, pictures are drawn in chunks whose passes hold at most
    ``PASS_ROWS`` pixels (a pass of a million rows left the cache): the same pictures."""
    model = _schedule_model("passes-4")
    z = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    calls = []
    run_passes = model.pixel_head.run_passes
    monkeypatch.setattr(
        model.pixel_head, "run_passes", lambda f, *a: calls.append(len(f)) or run_passes(f, *a)
    )
    with torch.no_grad():
        whole = model.mean_image(z)
        monkeypatch.setattr(autoregressive, "PASS_ROWS", 2 * model.pixel_head.passes.shape[1])
        chunked = model.mean_image(z)
    assert calls == [7, 2, 2, 2, 1]
    assert torch.allclose(chunked, whole, atol=1e-6)


@pytest.mark.parametrize("decoder", ["autoregressive", "factorized"])
def test_many_codes_score_against_one_image_as_each_decoded_alone(decoder, digits):
    """``log_likelihood`` reads each image's context once for all its codes; every code's
    likelihood is the one ``decode`` gives it, up to rounding."""
    import dataclasses

    model = seeded_model(dataclasses.replace(CONFIG, decoder=decoder), 0).eval()
    x = torch.from_numpy(digits[:3]).float().div(255).unsqueeze(1)
    z = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        shared = model.log_likelihood(z, x)
        alone = torch.stack(
            [-model.likelihood.nll(model.decode(z[:, j], x), x) for j in range(5)], dim=1
        )
    assert shared.shape == (3, 5)
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-3)
    assert not torch.equal(shared[:, 0], shared[:, 1])  # the codes do matter


def test_the_autoregressive_decoder_needs_the_image_for_its_likelihood():
    model = _schedule_model("raster")
    with pytest.raises(ValueError, match="depend on the image: pass x"):
        model.decode(torch.zeros(1, 4))


def test_the_config_travels_with_the_weights(model, folder):
    loaded = load_model(folder)
    assert loaded.config == model.config and loaded.pixel_head is not None
    assert loaded.pixel_head.schedule == model.config.pass_schedule


@pytest.mark.parametrize("schedule", PASS_SCHEDULES)
def test_the_integer_head_gives_the_same_parameters_a_pass_at_a_time(schedule, digits):
    """The codec's two sides: every pixel's parameters at once from the whole image, or a
    few passes at a time from ``pass_rows`` (what compression computes), and pass by pass
    through ``run_passes`` with the pixels fed back (what decompression does): the same
    integers."""
    model = _schedule_model(schedule)
    network = ExactNetwork(model)
    head = model.pixel_head
    one = 1 << 16
    pixels = torch.from_numpy(digits[:5].astype(np.int64)).unsqueeze(1)
    features = network.decode(torch.randint(-512, 512, (5, 4)), 8).flatten(2)
    context = head.context(head.canvas(pixels * 256), one)
    whole = torch.cat([features.transpose(1, 2), context], 2)
    at_once = network.pixel_parameters(whole.flatten(0, 1)).view(5, 784, -1)
    truth = pixels.flatten(1)

    def step(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels_of_pass = head.passes[step.k]
        expected = at_once[:, pixels_of_pass].flatten(0, 1)
        assert torch.equal(network.pixel_parameters(rows), expected)
        step.k += 1
        return truth[:, pixels_of_pass].flatten(), truth[:, pixels_of_pass].flatten()

    step.k = 0
    assert torch.equal(head.run_passes(features, step, one), truth)
    assert step.k == len(head.passes)
    canvas = head.canvas((pixels * 256).double())  # compression: a few passes at a time
    some = min(3, len(head.passes))
    for part in (slice(0, 1), slice(1, some), slice(some - 1, None)):
        rows = head.pass_rows(features.double(), canvas, part, one)  # [k, n, m, inputs]
        expected = at_once[:, head.passes[part]].transpose(0, 1)  # [k, n, m, channels]
        assert torch.equal(network.pixel_parameters(rows.flatten(0, 2)), expected.flatten(0, 2))


@pytest.fixture(scope="module")
def codec(folder) -> BitsBackCodec:
    return BitsBackCodec.from_folder(folder)


def test_real_digits_come_back_exactly(codec, digits):
    data = codec.compress(digits)
    assert Header.unpack(data)[0].batch == 500
    assert np.array_equal(codec.decompress(data), digits)


def test_binarized_digits_code_with_an_autoregressive_bernoulli_model(tmp_path, digits):
    config = VAEConfig(latent_dim=4, likelihood="bce", decoder="autoregressive")
    save_model(seeded_model(config, 0), tmp_path)
    codec = BitsBackCodec.from_folder(tmp_path)
    binary = (digits[:20] > 127).astype(np.uint8)
    assert np.array_equal(codec.decompress(codec.compress(binary)), binary)


def test_a_stream_decodes_in_another_process_with_another_thread_count(
    codec, folder, digits, decoded_elsewhere
):
    """Written here with this process's threads, read by a fresh interpreter on another
    count: every pass of every group sees the same integers, under either schedule."""
    assert np.array_equal(decoded_elsewhere(folder, codec.compress(digits[:25])), digits[:25])


def test_damage_is_one_clear_error(codec, digits):
    data = bytearray(codec.compress(digits[:10]))
    data[HEADER_BYTES + 12] ^= 0x04
    with pytest.raises(CodecError):
        codec.decompress(bytes(data))
