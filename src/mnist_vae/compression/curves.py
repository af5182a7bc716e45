"""The points of a rate-distortion curve, as every lossy sweep writes them (ours, PCA, the
classic codecs, the learned ones), and where a sweep keeps the digits it decoded for the
equal-bytes picture. Kept apart from ``rate_distortion`` so that a sweep which only
writes points (the learned_baselines stage) does not import the VAE's codec."""

from __future__ import annotations

from pathlib import Path

COLUMNS = ["codec", "layout", "setting", "bytes", "bits_per_image", "psnr", "ssim"]
OURS = "mnist-vae"
"""the codec name of our curves"""
SHOWN = 16
"""digits in the equal-bytes picture (the first test digits)"""


def point(codec: str, layout: str, setting: str, size: int, n: int, quality: dict) -> dict:
    """One point of a curve: ``size`` bytes written for ``n`` images, their ``quality``
    (``distortion.distortion``)."""
    return {"codec": codec, "layout": layout, "setting": setting, "bytes": size,
            "bits_per_image": 8 * size / n, **quality}  # fmt: skip


def decoded_strip(folder: str | Path, codec: str, setting: str) -> Path:
    """Where a sweep keeps the first ``SHOWN`` test digits as ``codec`` at ``setting``
    decodes them (``images.save_strip``)."""
    return Path(folder) / "decoded" / f"{codec}_{'_'.join(setting.split())}.png"
