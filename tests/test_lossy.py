"""The lossy codec: round trips, rates that are the bytes written, a finer grid that never
costs quality, one clear error for every stream it cannot decode; and the RD helpers."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException

from mnist_vae.compression import rate_distortion as rd
from mnist_vae.compression.container import HEADER_BYTES
from mnist_vae.compression.curves import COLUMNS, point
from mnist_vae.compression.distortion import distortion, psnr
from mnist_vae.compression.lossy import (
    STREAM_HEADER,
    FactorizedCoder,
    LossyCodec,
    is_image_stream,
    step,
)
from mnist_vae.compression.near_lossless import Bins
from mnist_vae.data import to_float
from mnist_vae.errors import CodecError
from mnist_vae.model.sampler import fit_sampler
from mnist_vae.model.vae import VAEConfig, save_model
from mnist_vae.params import MAX_RATE, Params, TrainParams
from mnist_vae.tracking.serving import VAEPyfunc
from mnist_vae.training.loop import fit, seeded_model


@pytest.fixture(scope="module")
def digits(mnist_mirror) -> np.ndarray:
    raw = gzip.decompress((mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:600].copy()


def _trained(folder, digits, seed: int = 0):
    """A small model trained for a moment on 500 digits, with its sampling mixture."""
    train = TrainParams(epochs=2, batch_size=50, loss="beta_binomial", device="cpu")
    params = Params(latent_dim=4, seed=seed, train=train)
    model = seeded_model(
        VAEConfig(latent_dim=4, likelihood="beta_binomial", sampler_components=3), seed
    )
    images = to_float(torch.from_numpy(digits[:500]))
    fit(model, images, images[:100], params, progress=False)
    fit_sampler(model, images, seed)
    save_model(model, folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory, digits):
    return _trained(tmp_path_factory.mktemp("lossy-model"), digits)


@pytest.fixture(scope="module")
def codec(folder) -> LossyCodec:
    return LossyCodec.from_folder(folder)


@pytest.fixture(scope="module")
def test_digits(digits) -> np.ndarray:
    return digits[500:]


@pytest.mark.parametrize("rate", [0, 6])  # level 0 decodes an average of 16 images
def test_both_layouts_give_the_same_8_bit_images(codec, test_digits, rate):
    whole = codec.decompress(codec.compress(test_digits, rate))
    each = codec.decompress_each(codec.compress_each(test_digits, rate))
    assert whole.shape == test_digits.shape and whole.dtype == np.uint8
    assert np.array_equal(whole, each)
    setting = codec.setting(rate)
    assert np.array_equal(whole, codec.images(codec.codes(test_digits, setting), setting))


def test_a_sweep_encodes_once_and_decodes_each_code_once_with_the_same_result(folder, test_digits):
    """The codec remembers the last images' posterior means and the last codes' pictures:
    a hit gives what a fresh codec computes, and other images or codes are never served
    from the memo."""
    fresh = LossyCodec.from_folder(folder)
    sweeping = LossyCodec.from_folder(folder)
    for rate in (0, 6, 12):
        setting = sweeping.setting(rate)
        codes = sweeping.codes(test_digits, setting)
        assert np.array_equal(codes, fresh.codes(test_digits, fresh.setting(rate)))
        pictures = sweeping.images(codes, setting)
        pictures[0] = 0  # the caller's copy: the memo is not touched
        again = sweeping.images(codes, setting)
        assert np.array_equal(again, LossyCodec.from_folder(folder).images(codes, setting))
        assert np.array_equal(sweeping.decompress(sweeping.compress(test_digits, rate)), again)
    other = test_digits[::-1].copy()
    assert np.array_equal(sweeping.codes(other, setting), fresh.codes(other, setting))
    prior = sweeping.setting(12, "prior")
    assert np.array_equal(
        sweeping.images(codes, prior), LossyCodec.from_folder(folder).images(codes, prior)
    )


def test_the_points_of_a_cell_lie_in_it_and_average_to_its_conditional_mean():
    """The points a coarse code decodes: inside its cell, the same every time, and their
    mean is the mixture's mean in the cell (components independent per dimension)."""
    weights, step_ = np.array([0.3, 0.7]), 1.5
    means = np.array([[-1.0, 0.5, 0.0], [0.8, -0.4, 2.0]])
    stds = np.array([[0.6, 1.0, 0.5], [0.9, 0.3, 1.2]])
    coder = FactorizedCoder.gaussian_mixture(weights, means, stds, step_, 8.0)
    codes = np.array([[0, 0, 0], [-1, 1, 2], [1, -1, 1], [-2, 0, 3]])
    points = coder.points(codes, 64)
    assert points.shape == (4, 64, 3)
    assert np.array_equal(points, coder.points(codes, 64))
    assert np.all(np.abs(points / step_ - codes[:, None, :]) <= 0.5 + 1e-9)
    # exactly: each component's share of the cell, times its truncated mean per dimension
    edges = (codes[None] + np.array([-0.5, 0.5])[:, None, None]) * step_  # [2, n, dims]
    t = (edges[:, None] - means[None, :, None]) / stds[None, :, None]  # [2, K, n, dims]
    cdf = torch.special.ndtr(torch.from_numpy(t)).numpy()
    pdf = np.exp(-0.5 * t**2) / np.sqrt(2 * np.pi)
    inside = cdf[1] - cdf[0]
    truncated = means[:, None] - stds[:, None] * (pdf[1] - pdf[0]) / inside  # [K, n, dims]
    share = weights[:, None] * inside.prod(-1)
    share /= share.sum(0)
    expected = np.einsum("kn,knd->nd", share, truncated)
    assert np.allclose(points.mean(1), expected, atol=0.03 * step_)


def test_a_finer_grid_never_moves_a_code_further_than_its_step(codec, test_digits):
    """Each code decodes to within one step of the posterior mean, so the error of the code
    shrinks with the step (the images' distortion, on the trained default model, is printed
    level by level by bench/lossy.py)."""
    x = torch.from_numpy(test_digits.astype(np.float32) / 255).unsqueeze(1)
    with torch.no_grad():
        means = codec.model.encode(x)[0].double().numpy()
    worst = []
    for rate in range(MAX_RATE + 1):
        setting = codec.setting(rate)
        values = codec.coder(setting).values(codec.codes(test_digits, setting))
        worst.append(float(np.abs(values - means).max()))
        assert worst[-1] <= step(rate) + 1e-6
    assert worst[-1] < worst[0] / 10


def test_the_rate_is_the_bytes_written(codec, test_digits):
    curve = rd.ours(codec, test_digits)
    whole = curve[(curve.layout == "whole set") & (curve.setting == "rate 6")].iloc[0]
    assert whole["bytes"] == len(codec.compress(test_digits, 6))
    each = curve[(curve.layout == "per image") & (curve.setting == "rate 6")].iloc[0]
    assert each["bytes"] == sum(map(len, codec.compress_each(test_digits, 6)))
    assert whole["bits_per_image"] == 8 * whole["bytes"] / len(test_digits)


def test_the_mixture_costs_fewer_bytes_than_the_prior(codec, test_digits):
    mixture = len(codec.compress(test_digits, 6, "mixture"))
    prior = len(codec.compress(test_digits, 6, "prior"))
    assert mixture < prior


def test_another_model_is_one_clear_error(codec, test_digits, tmp_path, digits):
    other = LossyCodec.from_folder(_trained(tmp_path, digits, seed=1))
    with pytest.raises(CodecError, match="compressed with another model"):
        other.decompress(codec.compress(test_digits[:5]))
    with pytest.raises(CodecError, match="stream 0: the stream was compressed with another model"):
        other.decompress_each(codec.compress_each(test_digits[:1]))


def test_damaged_streams_are_one_clear_error(codec, test_digits):
    data = codec.compress(test_digits[:50])
    flipped = bytearray(data)
    flipped[HEADER_BYTES + 5] ^= 0x40
    for damaged in (data[: HEADER_BYTES + 4], bytes(flipped), b"JPEG" + data):
        with pytest.raises(CodecError):
            codec.decompress(damaged)
    stream = codec.compress_each(test_digits[:1])[0]
    assert is_image_stream(stream) and not is_image_stream(data)
    for damaged in (stream[:2], b"\x00" + stream[1:], stream + b"\x07\x00\x00\x01"):
        with pytest.raises(CodecError):
            codec.decompress_each([damaged])


def test_a_count_the_codes_cannot_hold_is_refused_before_decoding(codec, test_digits):
    data = codec.compress(test_digits[:50])
    lying = data[:38] + (10**9).to_bytes(4, "little") + data[42:]  # the image count
    with pytest.raises(CodecError, match="claims 1,000,000,000 images, more than"):
        codec.decompress(lying)
    assert np.array_equal(
        codec.decompress(data), codec.decompress(codec.compress(test_digits[:50]))
    )


def test_streams_of_format_version_1_are_refused_with_one_line(codec, test_digits):
    """Written before portable decoding (the entropy model was floating point then): the
    whole-set header says version 1, a one-image stream starts with the bits 101."""
    data = bytearray(codec.compress(test_digits[:5]))
    data[4] = 1
    with pytest.raises(CodecError, match=r"^format version 1 \(before portable decoding"):
        codec.decompress(bytes(data))
    stream = bytearray(codec.compress_each(test_digits[:1])[0])
    stream[0] = 0xA0 | (stream[0] & 0x1F)  # the version-1 bits, the same level and model
    with pytest.raises(CodecError, match="one-image stream of format version 1"):
        codec.decompress_each([bytes(stream)])


@pytest.mark.parametrize("version", [2, 3, 4])
def test_a_lossy_file_of_an_older_version_still_decodes(codec, test_digits, version):
    """Versions 4 and 5 changed the lossless files; a lossy file was laid out and bounded
    (its count by the words, its codes checked before any picture) as now."""
    written = codec.compress(test_digits[:5])
    assert written[4] == 5
    older = written[:4] + bytes([version]) + written[5:]
    assert np.array_equal(codec.decompress(older), codec.decompress(written))


def test_bad_images_and_rates_are_refused(codec, test_digits):
    with pytest.raises(CodecError, match="N x 28 x 28"):
        codec.compress(test_digits[:, :27])
    with pytest.raises(CodecError, match="uint8"):
        codec.compress(test_digits.astype(np.float32))
    with pytest.raises(CodecError, match="from 0 to 12"):
        codec.compress(test_digits, 13)


def test_the_served_modes_answer_and_refuse(folder, test_digits):
    served = VAEPyfunc().load_folder(folder)
    x = test_digits[:4].astype(np.float32) / 255
    streams = served.predict(None, x, {"mode": "compress", "rate": 8})
    assert len(streams) == 4 and all(isinstance(s, str) for s in streams)
    images = served.predict(None, np.array(streams), {"mode": "decompress"})
    assert images.shape == (4, 28, 28) and images.min() >= 0 and images.max() <= 1
    near = served.predict(None, x[:2], {"mode": "compress", "max_error": 5})
    assert len(near) == 2 and all(isinstance(s, str) for s in near)
    mixed = served.predict(None, np.array([near[0], streams[0], near[1]]), {"mode": "decompress"})
    back = np.round(mixed * 255).astype(np.uint8)
    assert np.array_equal(back[[0, 2]], Bins(5).quantize(test_digits[:2]))
    assert np.array_equal(back[1], np.round(images[0] * 255).astype(np.uint8))

    for inputs, params, message in (
        (np.array(["%%%"]), {"mode": "decompress"}, "not base64"),
        (np.array(["AAAA"]), {"mode": "decompress"}, "not an mnist-vae image stream"),
        (x, {"mode": "compress", "rate": 99}, "from 0 to 12"),
        (x, {"mode": "compress", "max_error": 128}, r"largest error must be 1\.\.127"),
        (x, {"mode": "compress", "max_error": "two"}, "largest error must be an integer"),
        (x * 2, {"mode": "compress"}, "values in"),
    ):
        with pytest.raises(MlflowException, match=message):
            served.predict(None, inputs, params)


def test_the_envelope_and_the_bytes_to_match():
    sweep = pd.DataFrame({"bits_per_image": [80.0, 160.0, 240.0, 200.0],
                          "psnr": [20.0, 24.0, 30.0, 22.0]})  # fmt: skip
    assert list(rd.envelope(sweep)["bits_per_image"]) == [80.0, 160.0, 240.0]
    assert rd.bytes_for(sweep, 22.0) == pytest.approx(15.0)  # halfway from 10 to 20 bytes
    assert rd.bytes_for(sweep, 18.0) == pytest.approx(10.0) and not rd.goes_as_low(sweep, 18.0)
    assert rd.bytes_for(sweep, 31.0) is None


def test_pca_round_trips_through_the_same_coder(digits):
    pca = rd.PCA.fit(digits[:500], 10)
    size, decoded = pca.round_trip(digits[500:], 10, 0.5)
    coarse, _ = pca.round_trip(digits[500:], 10, 2.0)
    assert decoded.shape == digits[500:].shape and decoded.dtype == np.uint8
    assert coarse < size
    assert STREAM_HEADER == 3


def test_pca_measures_ssim_only_on_its_envelope_with_the_values_of_a_full_measure(digits):
    train, images = digits[:500], digits[500:700]
    curve = rd.pca_curve(train, images)
    pca = rd.PCA.fit(train, max(rd.PCA_COMPONENTS))
    everything = []
    for k in rd.PCA_COMPONENTS:
        for grid in rd.PCA_STEPS:
            size, decoded = pca.round_trip(images, k, grid)
            setting = f"{k} components, step {grid:.4g}"
            everything.append(point("PCA", "whole set", setting, size, len(images),
                                    distortion(images, decoded)))  # fmt: skip
    full = rd.envelope(pd.DataFrame(everything, columns=COLUMNS))
    assert len(full) < len(everything)  # points off the envelope: SSIM never measured
    pd.testing.assert_frame_equal(curve, full)  # the same points, the same SSIM, bit for bit


def test_psnr_alone_is_the_psnr_of_the_full_measure(test_digits):
    noisy = np.clip(test_digits.astype(int) + 40, 0, 255).astype(np.uint8)
    assert psnr(test_digits, noisy) == distortion(test_digits, noisy)["psnr"]
    assert psnr(test_digits, test_digits) == 100.0  # no error: MAX_PSNR


def test_curves_are_compared_where_both_reach_and_the_nearest_learned_point_is_shown():
    ours = pd.DataFrame({"bits_per_image": [10.0, 40.0, 70.0], "psnr": [14.0, 17.0, 18.0]})
    theirs = pd.DataFrame({"bits_per_image": [64.0, 100.0], "psnr": [15.0, 19.0]})
    shared = rd.shared_rate_comparison(ours, theirs)
    assert list(shared["bits_per_image"]) == [64.0, 70.0]  # theirs from 64, ours up to 70
    assert shared["psnr"].tolist() == pytest.approx([17.8, 18.0])
    assert shared["other_psnr"].tolist() == pytest.approx([15.0, 15 + 4 * 6 / 36])
    assert rd.shared_rate_comparison(ours, theirs.assign(bits_per_image=[80.0, 90.0])).empty

    learned = pd.DataFrame({
        "codec": ["a", "a", "a", "b", "b"],
        "setting": ["lambda 1", "lambda 2", "lambda 3", "lambda 1", "lambda 2"],
        "bits_per_image": [40.0, 100.0, 400.0, 80.0, 800.0],
        "psnr": [12.0, 16.0, 25.0, 17.0, 27.0],
    })  # fmt: skip
    # for 16 dB, a needs 12.5 bytes and b cannot go that low (its smallest file: 10 bytes)
    chosen = rd.nearest_learned(learned, bytes_per_image=6.0, psnr=16.0)
    assert (chosen["codec"], chosen["setting"]) == ("b", "lambda 1")
    # for 20 dB, a needs 29.2 bytes and b 37: a, at its point nearest 6 bytes
    chosen = rd.nearest_learned(learned, bytes_per_image=6.0, psnr=20.0)
    assert (chosen["codec"], chosen["setting"]) == ("a", "lambda 1")


def test_the_lossy_decoder_lowers_the_squared_error_and_travels_with_the_weights(
    folder, digits, test_digits, tmp_path
):
    """Trained for squared error on the codes at every level, it decodes closer to the
    digits than the model's mean image, at coarse and fine levels, and a saved copy of the
    model decodes the very same pictures."""
    from mnist_vae.compression.lossy import fit_lossy_decoder
    from mnist_vae.model.vae import load_model

    plain = LossyCodec.from_folder(folder)
    model = load_model(folder)
    images = to_float(torch.from_numpy(digits[:500]))
    errors = fit_lossy_decoder(model, images, epochs=10, seed=0, batch_size=50, lr=3e-3)
    assert len(errors) == 10 and errors[-1] < errors[0]
    save_model(model, tmp_path / "with-decoder")
    tuned = LossyCodec.from_folder(tmp_path / "with-decoder")
    assert tuned.model.config.lossy_decoder and not plain.model.config.lossy_decoder
    for rate in (0, 12):
        data, plain_data = tuned.compress(test_digits, rate), plain.compress(test_digits, rate)
        assert len(data) == len(plain_data)  # the same codes, the same bytes
        decoded = tuned.decompress(data)
        before = distortion(test_digits, plain.decompress(plain_data))["psnr"]
        assert distortion(test_digits, decoded)["psnr"] > before
        setting = tuned.setting(rate)
        with torch.no_grad():
            direct = model.lossy_decoder(
                torch.from_numpy(
                    tuned.coder(setting).values(tuned.codes(test_digits, setting))
                ).float(),
                torch.full((len(test_digits),), rate),
            )
        expected = torch.round(direct.squeeze(1) * 255).clamp(0, 255).to(torch.uint8).numpy()
        assert np.array_equal(decoded, expected)


def _sweep(codec: str, layout: str, points: list[tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame([
        {"codec": codec, "layout": layout, "setting": f"q {i}", "bits_per_image": bits,
         "psnr": psnr, "ssim": 0.5}
        for i, (bits, psnr) in enumerate(points)
    ])  # fmt: skip


def test_the_summary_compares_ours_with_the_learned_codecs_or_says_none_reaches():
    ours = pd.concat([
        _sweep(rd.OURS, layout, [(8.0 * (1 + extra), 10.0), (40.0 * (1 + extra), 19.0)])
        for layout, extra in (("whole set", 0), ("per image", 1))
    ]).assign(setting=["rate 0", "rate 6"] * 2)  # fmt: skip
    pca = _sweep("PCA", "whole set", [(10.0, 9.0), (80.0, 15.0)])
    classic = pd.concat([_sweep("JPEG", layout, [(800.0, 20.0), (1600.0, 30.0)])
                         for layout in ("per image", "mosaic")])  # fmt: skip
    learned = _sweep("a", "per image", [(32.0, 15.0), (160.0, 23.0)])
    metrics = rd.summary(ours, ours, pca, classic, learned, rate=6)
    t = metrics["targets"]
    assert t["best_learned"] == "a, per image" and t["its_bytes_for_our_psnr_learned"] == 12.0
    assert t["ratio_learned_whole_set"] == pytest.approx(5 / 12)  # 40 bits are 5 bytes
    assert t["above_learned_at_every_shared_rate"] and t["learned_shared_rates"] == 2
    weaker = _sweep("a", "per image", [(64.0, 12.0), (160.0, 18.0)])  # never 19 dB
    t = rd.summary(ours, ours, pca, classic, weaker, rate=6)["targets"]
    assert t["best_learned"] == "none reaches our PSNR" and t["ratio_learned_whole_set"] is None


def test_the_near_lossless_curve_is_the_bytes_written_and_the_bins_quality(folder, test_digits):
    from mnist_vae.compression.lossless import BitsBackCodec

    codec, digits = BitsBackCodec.from_folder(folder), test_digits[:25]
    curve = rd.near_lossless(codec, digits, errors=(2, 16))
    assert list(curve["setting"]) == ["max error 2", "max error 16", "lossless"]
    assert list(curve["largest_error"]) == [2, 16, 0]
    assert curve.loc[0, "bytes"] == len(codec.compress(digits, max_error=2))
    assert curve.loc[1, "bytes"] < curve.loc[0, "bytes"] < curve.loc[2, "bytes"]
    assert curve.loc[0, "psnr"] == pytest.approx(psnr(digits, Bins(2).quantize(digits)))
    assert curve.loc[0, "psnr"] > curve.loc[1, "psnr"] and curve.loc[2, "psnr"] == np.inf


def test_the_near_lossless_summary_sets_ours_against_jpeg_ls_and_every_curve():
    ours = _sweep(rd.OURS, "whole set", [(40.0, 15.0), (80.0, 19.0)])
    near = _sweep(rd.OURS, "near-lossless", [(400.0, 45.0), (200.0, 30.0), (800.0, np.inf)])
    near = near.assign(setting=["max error 2", "max error 16", "lossless"],
                       layout=["near-lossless", "near-lossless", "lossless"],
                       largest_error=[2, 16, 0])  # fmt: skip
    jpegls = pd.concat([
        _sweep("JPEG-LS", layout, [(bits, 40.0), (bits / 2, 28.0)]).assign(
            setting=["max error 2", "max error 16"])
        for layout, bits in (("per image", 2000.0), ("mosaic", 1000.0))
    ])  # fmt: skip
    lossless = pd.DataFrame({"codec": ["PNG"], "layout": ["mosaic"], "bytes": [1500]})
    others = _sweep("JPEG", "mosaic", [(300.0, 20.0), (900.0, 35.0)])
    metrics = rd.near_lossless_summary(near, ours, jpegls, lossless, others, images=10)
    assert metrics["lossless_bytes_per_image"] == 100.0
    at_2 = metrics["by_max_error"][2]
    assert at_2["bytes_per_image"] == 50.0 and at_2["jpegls_mosaic_bytes"] == 125.0
    assert at_2["ratio_to_jpegls_mosaic"] == 0.4 and at_2["fewest_classic_bytes"] == 125.0
    t = metrics["targets"]
    assert t["largest_ratio_to_jpegls_mosaic"] == pytest.approx(25 / 62.5)
    assert t["at_most_half_of_jpegls_mosaic"] and t["below_every_classic_meeting_the_bound"]
    assert t["above_every_curve_19_to_50_db"] and t["shared_points_19_to_50_db"] > 0
    better = _sweep("JPEG", "mosaic", [(300.0, 40.0), (900.0, 48.0)])
    t = rd.near_lossless_summary(near, ours, jpegls, lossless, better, images=10)["targets"]
    assert not t["above_every_curve_19_to_50_db"] and t["curves_reaching_ours"] == ["JPEG, mosaic"]


def test_the_charts_join_our_curves_into_one_and_mark_the_lossless_file(tmp_path):
    from mnist_vae.compression.curves import ONE_CURVE, joined_curve_of_ours
    from mnist_vae.evaluation.overview import save_overview

    lossy = _sweep(rd.OURS, "whole set", [(40.0, 15.0), (80.0, 19.0)])
    per_image = _sweep(rd.OURS, "per image", [(60.0, 15.0)])
    near = _sweep(rd.OURS, "near-lossless", [(200.0, 30.0)])
    lossless = _sweep(rd.OURS, "lossless", [(800.0, np.inf)])
    jpeg = _sweep("JPEG", "per image", [(900.0, 30.0)])
    curves = pd.concat([lossy, per_image, near, lossless, jpeg])  # indices repeat, as read
    joined, bits = joined_curve_of_ours(curves)
    assert bits == 800.0 and len(joined) == len(curves) - 1
    ours = joined[joined["layout"] == ONE_CURVE]
    assert sorted(ours["bits_per_image"]) == [40.0, 80.0, 200.0]
    assert set(joined["layout"]) == {ONE_CURVE, "per image"}
    assert rd.save_curves(curves, tmp_path / "curves.png").stat().st_size > 0
    grid = np.zeros((56, 56), np.uint8)
    assert save_overview(grid, grid, curves, tmp_path / "overview.png").stat().st_size > 0
