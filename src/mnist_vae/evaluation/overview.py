"""The picture of a run on the README's front page: samples from the prior, test digits over
their reconstructions, and the rate-distortion curves, in one figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

from ..compression.curves import ONE_CURVE, OURS, joined_curve_of_ours, mark_lossless
from ..params import LEARNED_CODECS

# The curves worth a glance: ours (lossy, then near-lossless, and where the lossless file
# lies), PCA, the learned codecs and the classic codecs per image (what a user stores); the
# mosaics and the prior's curve stay in curves.png.
SHOWN_LAYOUTS = (ONE_CURVE, "whole set", "per image")
YLIM = (12, 60)  # from where the digits are told apart to near-lossless at k = 1


def shown_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """The curves the overview draws: our one curve, every codec's whole-set or per-image
    curve."""
    return curves[curves["layout"].isin(SHOWN_LAYOUTS)]


def save_overview(
    samples: np.ndarray, comparison: np.ndarray, curves: pd.DataFrame, path: str | Path
) -> Path:
    """``samples`` and ``comparison`` are the generate and compare stages' grids (grey,
    ``uint8 [H, W]``); ``curves`` every rate-distortion point (the rate_distortion stage's
    CSVs)."""
    figure = Figure(figsize=(15, 4.6), layout="constrained")
    grids, chart = figure.subfigures(1, 2, width_ratios=[1.25, 1])
    for ax, (title, grid) in zip(
        grids.subplots(1, 2),
        [("samples from the prior", samples), ("test digits over reconstructions", comparison)],
        strict=True,
    ):
        ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    ax = chart.subplots()
    curves, lossless = joined_curve_of_ours(curves)
    for (codec, layout), points in shown_curves(curves).groupby(["codec", "layout"], sort=False):
        points = points.sort_values("bits_per_image")
        if codec == OURS:
            line = "-" if layout == ONE_CURVE else "--"
            style = {"color": "black", "ls": line, "lw": 2, "marker": "o", "zorder": 3}
        else:
            learned = codec in LEARNED_CODECS
            style = {"ls": "-." if learned else ":", "marker": "^" if learned else "."}
        per_image = points["bits_per_image"] / 8
        ax.plot(per_image, points["psnr"], ms=3, label=f"{codec}, {layout}", **style)
    ax.set(xscale="log", xlabel="bytes per digit (written)", ylabel="PSNR (dB)", ylim=YLIM)
    if lossless is not None:
        mark_lossless(ax, lossless, per=8)
    ax.set_title("lossy and near-lossless codecs on the test digits", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    return path
