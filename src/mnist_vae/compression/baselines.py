"""The standard lossless codecs, measured on the same images as ours.

General-purpose compressors see the raw bytes of the whole set (``N x H x W`` uint8, row
after row): gzip -9, bz2 -9, xz/LZMA -9e and zstd -22. Image codecs see the images two
ways: one file per image (what a user stores) and one mosaic of the whole set (100 x 100
digits for MNIST's 10,000: the codec's best case, its headers paid once and its context
models trained on everything); PNG (Pillow, optimized), WebP lossless (Pillow), JPEG-LS
(CharLS through imagecodecs) and JPEG XL lossless (imagecodecs). Every codec's output is
decoded again and checked pixel for pixel: a baseline that is not lossless here is an
error, not a figure.

The lossy codecs (``measure_lossy``) run over a sweep of their quality setting, per
image and as the mosaic, and each output is decoded and judged by PSNR and SSIM
(``distortion``): JPEG (Pillow's libjpeg, Huffman tables optimized), the same JPEG
re-packed by mozjpeg (its lossless optimizer: progressive scans and the smallest Huffman
code; the coefficients are Pillow's), WebP (Pillow, method 6), AVIF (Pillow) and JPEG XL
(imagecodecs, its ``level`` setting, 0..100).

JPEG-LS's near-lossless mode (``measure_near_lossless``) is the classic codec that bounds
every pixel's error (its ``NEAR`` parameter, ``level`` in imagecodecs): each output is
decoded and its largest error checked against the bound.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import imagecodecs
import mozjpeg_lossless_optimization
import numpy as np
from PIL import Image

from .distortion import distortion

Encode = Callable[[np.ndarray], bytes]
Decode = Callable[[bytes], np.ndarray]


@dataclass(frozen=True)
class Result:
    codec: str
    layout: str
    """``raw bytes``, ``per image`` or ``mosaic``"""
    bytes: int
    bits_per_pixel: float
    seconds: float
    """encoding time (decoding, for the check, not counted)"""

    def as_dict(self) -> dict[str, object]:
        return {
            "codec": self.codec, "layout": self.layout, "bytes": self.bytes,
            "bits_per_pixel": self.bits_per_pixel, "seconds": self.seconds,
        }  # fmt: skip


def _pillow(fmt: str, **options: object) -> tuple[Encode, Decode]:
    def encode(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("L"))

    return encode, decode


RAW_CODECS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "gzip -9": (lambda b: gzip.compress(b, 9, mtime=0), gzip.decompress),
    "bz2 -9": (lambda b: bz2.compress(b, 9), bz2.decompress),
    "xz -9e": (lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
    "zstd -22": (lambda b: imagecodecs.zstd_encode(b, level=22), imagecodecs.zstd_decode),
}

IMAGE_CODECS: dict[str, tuple[Encode, Decode]] = {
    "PNG": _pillow("PNG", optimize=True),
    "WebP lossless": _pillow("WEBP", lossless=True, quality=100, method=6),
    "JPEG-LS": (imagecodecs.jpegls_encode, imagecodecs.jpegls_decode),
    "JPEG XL lossless": (
        lambda image: imagecodecs.jpegxl_encode(image, lossless=True, effort=9),
        imagecodecs.jpegxl_decode,
    ),
}
PER_IMAGE_OPTIONS: dict[str, tuple[Encode, Decode]] = {
    # one file per image, at each library's default effort (what a user gets)
    "PNG": IMAGE_CODECS["PNG"],
    "WebP lossless": _pillow("WEBP", lossless=True, quality=100),
    "JPEG-LS": IMAGE_CODECS["JPEG-LS"],
    "JPEG XL lossless": (
        lambda image: imagecodecs.jpegxl_encode(image, lossless=True),
        imagecodecs.jpegxl_decode,
    ),
}


def mosaic(images: np.ndarray) -> np.ndarray:
    """The images tiled into one near-square picture, row by row (unused tiles black)."""
    n, h, w = images.shape
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    tiles = np.zeros((rows * columns, h, w), dtype=images.dtype)
    tiles[:n] = images
    return tiles.reshape(rows, columns, h, w).transpose(0, 2, 1, 3).reshape(rows * h, columns * w)


def _check(name: str, decoded: np.ndarray, original: np.ndarray) -> None:
    if not np.array_equal(np.asarray(decoded).reshape(original.shape), original):
        raise AssertionError(f"{name} did not give every pixel back")


def measure(images: np.ndarray) -> list[Result]:
    """Every baseline on ``images`` (uint8 ``N x H x W``), each output checked by decoding it."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    pixels = images.size
    results = []

    def record(codec: str, layout: str, size: int, seconds: float) -> None:
        results.append(Result(codec, layout, size, 8 * size / pixels, seconds))

    raw = images.tobytes()
    for name, (encode, decode) in RAW_CODECS.items():
        start = time.perf_counter()
        data = encode(raw)
        record(name, "raw bytes", len(data), time.perf_counter() - start)
        _check(name, np.frombuffer(decode(data), dtype=np.uint8), images)
    for name, (encode, decode) in PER_IMAGE_OPTIONS.items():
        start = time.perf_counter()
        files = [encode(image) for image in images]
        record(name, "per image", sum(map(len, files)), time.perf_counter() - start)
        for data, image in zip(files, images, strict=True):
            _check(name, decode(data), image)
    tiled = mosaic(images)
    for name, (encode, decode) in IMAGE_CODECS.items():
        start = time.perf_counter()
        data = encode(tiled)
        record(name, "mosaic", len(data), time.perf_counter() - start)
        _check(name, decode(data), tiled)
    return results


def _mozjpeg(quality: int) -> tuple[Encode, Decode]:
    encode, decode = _pillow("JPEG", quality=quality)
    return (lambda image: mozjpeg_lossless_optimization.optimize(encode(image))), decode


def _jpegxl(level: int) -> tuple[Encode, Decode]:
    return (lambda image: imagecodecs.jpegxl_encode(image, level=level)), imagecodecs.jpegxl_decode


LOSSY_CODECS: dict[str, Callable[[int], tuple[Encode, Decode]]] = {
    "JPEG": lambda q: _pillow("JPEG", quality=q, optimize=True),
    "JPEG (mozjpeg)": _mozjpeg,
    "WebP": lambda q: _pillow("WEBP", quality=q, method=6),
    "AVIF": lambda q: _pillow("AVIF", quality=q),
    "JPEG XL": _jpegxl,
}
QUALITIES = (0, 10, 30, 60, 90)
"""each lossy codec's quality setting, 0 (smallest) to 100"""


@dataclass(frozen=True)
class LossyResult:
    codec: str
    layout: str
    """``per image`` or ``mosaic``"""
    quality: int
    bytes: int
    images: int
    psnr: float
    ssim: float

    def as_dict(self) -> dict[str, object]:
        return {
            "codec": self.codec, "layout": self.layout, "setting": f"quality {self.quality}",
            "bytes": self.bytes, "bits_per_image": 8 * self.bytes / self.images,
            "psnr": self.psnr, "ssim": self.ssim,
        }  # fmt: skip


def lossy_round_trip(
    images: np.ndarray, codec: str, quality: int, layout: str
) -> tuple[int, np.ndarray]:
    """One lossy codec at one quality on ``images`` (uint8 ``N x H x W``), one file per image
    or one mosaic: the bytes written and the images decoded from them (the mosaic's cut
    back into its tiles)."""
    encode, decode = LOSSY_CODECS[codec](quality)
    _, h, w = images.shape
    if layout == "per image":
        files = [encode(image) for image in images]
        decoded = np.stack([np.asarray(decode(data)).reshape(h, w) for data in files])
        return sum(map(len, files)), decoded
    data = encode(mosaic(images))
    return len(data), _tiles(images, np.asarray(decode(data)))


def measure_lossy(
    images: np.ndarray, qualities: tuple[int, ...] = QUALITIES, progress: Callable = iter
) -> list[LossyResult]:
    """Every lossy codec at every quality on ``images``, per image and as one mosaic, each
    judged on its decoded images."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    results = []
    for name in progress(LOSSY_CODECS):
        for quality in qualities:
            for layout in ("per image", "mosaic"):
                size, decoded = lossy_round_trip(images, name, quality, layout)
                quality_measures = distortion(images, decoded)
                results.append(
                    LossyResult(name, layout, quality, size, len(images), **quality_measures)
                )
    return results


def _tiles(images: np.ndarray, decoded_mosaic: np.ndarray) -> np.ndarray:
    """The images of a decoded ``mosaic`` of ``images``, cut back into tiles."""
    n, h, w = images.shape
    rows, columns = decoded_mosaic.shape[0] // h, decoded_mosaic.shape[1] // w
    tiles = decoded_mosaic.reshape(rows, h, columns, w).transpose(0, 2, 1, 3)
    return tiles.reshape(-1, h, w)[:n]


def near_lossless_round_trip(
    images: np.ndarray, max_error: int, layout: str
) -> tuple[int, np.ndarray]:
    """JPEG-LS with every pixel within ``max_error`` on ``images``, one file per image or one
    mosaic: the bytes written and the images decoded from them, the bound checked."""
    encode = lambda image: imagecodecs.jpegls_encode(image, level=max_error)  # noqa: E731
    if layout == "per image":
        files = [encode(image) for image in images]
        size, decoded = sum(map(len, files)), np.stack(list(map(imagecodecs.jpegls_decode, files)))
    else:
        data = encode(mosaic(images))
        size, decoded = len(data), _tiles(images, imagecodecs.jpegls_decode(data))
    largest = int(np.abs(decoded.astype(np.int16) - images).max())
    if largest > max_error:
        raise AssertionError(f"JPEG-LS at {max_error} decoded a pixel {largest} levels away")
    return size, decoded


def measure_near_lossless(
    images: np.ndarray, errors: tuple[int, ...], progress: Callable = iter
) -> list[dict[str, object]]:
    """JPEG-LS at every bound of ``errors``, per image and as one mosaic: the rows of a
    curve (``curves.COLUMNS``) with each one's ``largest_error``."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    rows = []
    for max_error in progress(errors):
        for layout in ("per image", "mosaic"):
            size, decoded = near_lossless_round_trip(images, max_error, layout)
            rows.append({
                "codec": "JPEG-LS", "layout": layout, "setting": f"max error {max_error}",
                "bytes": size, "bits_per_image": 8 * size / len(images),
                **distortion(images, decoded),
                "largest_error": int(np.abs(decoded.astype(np.int16) - images).max()),
            })  # fmt: skip
    return rows
