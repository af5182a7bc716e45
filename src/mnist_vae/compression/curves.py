"""The points of a rate-distortion curve, as every lossy sweep writes them (ours, PCA, the
classic codecs, the learned ones), and where a sweep keeps the digits it decoded for the
equal-bytes picture. Kept apart from ``rate_distortion`` so that a sweep which only
writes points (the learned_baselines stage) does not import the VAE's codec."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLUMNS = ["codec", "layout", "setting", "bytes", "bits_per_image", "psnr", "ssim"]
OURS = "mnist-vae"
"""the codec name of our curves"""
SHOWN = 16
"""digits in the equal-bytes picture (the first test digits)"""
NEAR_LOSSLESS = "near-lossless"
LOSSLESS = "lossless"
"""our curves' layouts beyond the lossy ones (``whole set``, ``per image``)"""
ONE_CURVE = "lossy, then near-lossless"
"""the label of our one curve in the charts: the whole-set lossy points, then the
near-lossless ones"""


def point(codec: str, layout: str, setting: str, size: int, n: int, quality: dict) -> dict:
    """One point of a curve: ``size`` bytes written for ``n`` images, their ``quality``
    (``distortion.distortion``)."""
    return {"codec": codec, "layout": layout, "setting": setting, "bytes": size,
            "bits_per_image": 8 * size / n, **quality}  # fmt: skip


def decoded_strip(folder: str | Path, codec: str, setting: str) -> Path:
    """Where a sweep keeps the first ``SHOWN`` test digits as ``codec`` at ``setting``
    decodes them (``images.save_strip``)."""
    return Path(folder) / "decoded" / f"{codec}_{'_'.join(setting.split())}.png"


def joined_curve_of_ours(curves: pd.DataFrame) -> tuple[pd.DataFrame, float | None]:
    """``curves`` with our whole-set lossy and near-lossless points under one label, and
    the lossless file's bits per image (None without it), which a chart marks apart."""
    curves = curves.reset_index(drop=True)
    lossless = (curves["codec"] == OURS) & (curves["layout"] == LOSSLESS)
    bits = curves.loc[lossless, "bits_per_image"]
    curves = curves[~lossless].copy()
    joined = (curves["codec"] == OURS) & curves["layout"].isin(["whole set", NEAR_LOSSLESS])
    curves.loc[joined, "layout"] = ONE_CURVE
    return curves, float(bits.iloc[0]) if len(bits) else None


def mark_lossless(ax, bits_per_image: float, per: float = 1.0) -> None:
    """A line at the lossless file's size (``per``: 8 for bytes): its PSNR is infinite."""
    ax.axvline(bits_per_image / per, color="black", ls=(0, (1, 1)), lw=1)
    where = (bits_per_image / per, 0.02)
    text = f"lossless: {bits_per_image / 8:.0f} B"
    ax.annotate(text, where, xycoords=("data", "axes fraction"), rotation=90, ha="right",
                fontsize=7)  # fmt: skip
