"""The standard codecs measured beside ours: every one lossless, sized by its real output."""

import numpy as np
import pytest

from mnist_vae.compression import baselines


def test_a_mosaic_tiles_row_by_row_and_pads_with_black():
    images = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3) + 1
    tiled = baselines.mosaic(images)
    assert tiled.shape == (2 * 2, 3 * 3)  # 3 columns, 2 rows
    assert np.array_equal(tiled[:2, 3:6], images[1])
    assert np.array_equal(tiled[2:4, :3], images[3])
    assert not tiled[2:4, 6:9].any()  # the unused sixth tile


def test_every_baseline_is_measured_on_its_real_bytes(mnist_mirror):
    import gzip

    raw = gzip.decompress((mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:25].copy()
    results = baselines.measure(images)
    layouts = {(r.codec, r.layout) for r in results}
    assert len(results) == len(layouts) == 4 + 4 + 4
    assert ("JPEG-LS", "per image") in layouts and ("JPEG-LS", "mosaic") in layouts
    assert ("xz -9e", "raw bytes") in layouts and ("JPEG XL lossless", "mosaic") in layouts
    for r in results:
        assert r.bits_per_pixel == pytest.approx(8 * r.bytes / images.size)
        assert 0 < r.bits_per_pixel < 8, r  # digits compress
    per_image = {r.codec: r.bytes for r in results if r.layout == "per image"}
    mosaic = {r.codec: r.bytes for r in results if r.layout == "mosaic"}
    assert all(mosaic[name] < per_image[name] for name in mosaic)  # headers paid once


def test_a_codec_that_loses_pixels_is_an_error(monkeypatch):
    lossy = (lambda b: b, lambda b: bytes(len(b)))  # "decodes" to zeros
    monkeypatch.setattr(baselines, "RAW_CODECS", {"broken": lossy})
    with pytest.raises(AssertionError, match="broken did not give every pixel back"):
        baselines.measure(np.ones((2, 28, 28), np.uint8))


def test_jpeg_ls_near_lossless_keeps_every_pixel_within_its_bound(mnist_mirror):
    import gzip

    raw = gzip.decompress((mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:25].copy()
    rows = baselines.measure_near_lossless(images, (1, 4, 16))
    assert [(r["setting"], r["layout"]) for r in rows[:2]] == [
        ("max error 1", "per image"),
        ("max error 1", "mosaic"),
    ]
    for row, k in zip(rows, (1, 1, 4, 4, 16, 16), strict=True):
        assert 0 < row["largest_error"] <= k and row["psnr"] > 20
    per_image = [r["bytes"] for r in rows if r["layout"] == "per image"]
    assert per_image == sorted(per_image, reverse=True)  # a looser bound, fewer bytes
    _, decoded = baselines.near_lossless_round_trip(images, 4, "mosaic")
    assert decoded.shape == images.shape and np.abs(decoded.astype(int) - images).max() <= 4
