"""Rate against distortion: the VAE's lossy code at every rate level, PCA, and the standard
codecs over their quality sweeps (``baselines.measure_lossy``), on the same images.

Every rate is the length of bytes actually produced (ours: the whole-set file with its
header, and the sum of the per-image streams); every distortion is measured on the
images decoded from those bytes (``distortion``'s PSNR and SSIM, through a ``reference``
that does the originals' share of SSIM once per sweep).

Between the lossy code and the lossless file, ``near_lossless`` sweeps our near-lossless
file over ``CURVE_ERRORS`` (every pixel within k grey levels), against JPEG-LS at the same
bounds (``baselines.measure_near_lossless``): one curve of ours from the latent code's
lowest level to the lossless file (``LOSSLESS``, its PSNR infinite: drawn apart).

PCA is the linear code a VAE should beat: principal components of the training images,
each image's coefficients quantized on a grid of one step for all components (for a
squared error in pixel space, an orthonormal code is best served by a uniform step) and
entropy-coded by the same coder as ours (``lossy.FactorizedCoder``), component
``j`` under N(0, its variance on the training set). Its curve is the upper envelope over
several numbers of components and steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

from ..images import load_strip
from ..params import LEARNED_CODECS
from .baselines import lossy_round_trip
from .curves import (
    COLUMNS,
    LOSSLESS,
    NEAR_LOSSLESS,
    OURS,
    SHOWN,
    decoded_strip,
    joined_curve_of_ours,
    mark_lossless,
    point,
)
from .distortion import psnr
from .lossless import BitsBackCodec
from .lossy import MAX_RATE, FactorizedCoder, LossyCodec
from .near_lossless import CURVE_ERRORS, Bins
from .reference import Reference

SIDE = 28
PSNR_RANGE = (19.0, 50.0)
"""where our one curve must lie above every other codec's (the lossy code's top to
near-lossless at k = 3)"""

PCA_COMPONENTS = (5, 10, 20, 40, 80)
PCA_STEPS = tuple(2.0 ** (2 - j / 2) for j in range(11))
"""steps in units of pixel values in [0, 1], 4 down to 1/8 (a component of the training set
spreads by 2.3 at most, by 0.25 at the 80th): finer steps only reach rates far above ours"""


def ours(
    codec: LossyCodec, images: np.ndarray, entropy: str | None = None, progress: Callable = iter
) -> pd.DataFrame:
    """Every rate level: the whole-set file and the per-image streams, both decoded again."""
    rows, reference = [], Reference(images)
    for rate in progress(range(MAX_RATE + 1)):
        setting = f"rate {rate}"
        whole = codec.compress(images, rate, entropy)
        decoded = codec.decompress(whole)
        quality = reference.distortion(decoded)
        rows.append(point(OURS, "whole set", setting, len(whole), len(images), quality))
        streams = codec.compress_each(images, rate, entropy)
        each = codec.decompress_each(streams)  # the same codes: the same pictures, checked
        if not np.array_equal(each, decoded):
            quality = reference.distortion(each)
        rows.append(point(OURS, "per image", setting, sum(map(len, streams)), len(images), quality))
    return pd.DataFrame(rows, columns=COLUMNS)


def near_lossless(
    codec: BitsBackCodec,
    images: np.ndarray,
    errors: tuple[int, ...] = CURVE_ERRORS,
    progress: Callable = iter,
) -> pd.DataFrame:
    """Our near-lossless file of ``images`` at every bound of ``errors``, then the lossless
    one: the bytes written, and the quality of the pixels the file decodes to (the bins'
    centres, ``Bins.quantize``: the decoder gives exactly those or refuses the file, their
    checksum is in it; bench/near_lossless.py decodes every file), with ``largest_error``."""
    rows, reference = [], Reference(images)
    for k in progress((*errors, 0)):
        size = len(codec.compress(images, max_error=k))
        if k == 0:
            quality = {"psnr": np.inf, "ssim": 1.0}
            rows.append(point(OURS, LOSSLESS, LOSSLESS, size, len(images), quality))
        else:
            decoded = Bins(k).quantize(images)
            quality = reference.distortion(decoded)
            rows.append(point(OURS, NEAR_LOSSLESS, f"max error {k}", size, len(images), quality))
        rows[-1]["largest_error"] = k
    return pd.DataFrame(rows, columns=[*COLUMNS, "largest_error"])


def one_curve(ours_lossy: pd.DataFrame, near: pd.DataFrame) -> pd.DataFrame:
    """Our whole-set lossy points, then the near-lossless ones: one curve, by bits."""
    whole = ours_lossy[ours_lossy["layout"] == "whole set"]
    finite = near[near["layout"] == NEAR_LOSSLESS]
    return pd.concat([whole, finite], ignore_index=True).sort_values("bits_per_image")


def near_lossless_summary(
    near: pd.DataFrame, ours_lossy: pd.DataFrame, jpegls: pd.DataFrame,
    lossless_baselines: pd.DataFrame, others: pd.DataFrame, images: int,
) -> dict[str, object]:  # fmt: skip
    """Each bound's bytes per image and quality beside JPEG-LS's (per image and mosaic), and
    the targets: at most half of JPEG-LS's mosaic at every bound; fewer bytes than every
    classic codec that meets the bound (JPEG-LS at it, every lossless one); our one curve
    above every other codec's (``others``: classic and learned, lossy; JPEG-LS) at every
    shared rate where theirs is within ``PSNR_RANGE``."""
    theirs = jpegls.set_index(["setting", "layout"])
    classic_lossless = float(lossless_baselines["bytes"].min()) / images
    table = {}
    for _, row in near[near["layout"] == NEAR_LOSSLESS].iterrows():
        per_image = theirs.loc[(row["setting"], "per image")]
        tiled = theirs.loc[(row["setting"], "mosaic")]
        ours_bytes = row["bits_per_image"] / 8
        table[int(row["largest_error"])] = {
            "bytes_per_image": ours_bytes,
            "psnr": float(row["psnr"]),
            "ssim": float(row["ssim"]),
            "jpegls_per_image_bytes": float(per_image["bits_per_image"]) / 8,
            "jpegls_per_image_psnr": float(per_image["psnr"]),
            "jpegls_mosaic_bytes": float(tiled["bits_per_image"]) / 8,
            "jpegls_mosaic_psnr": float(tiled["psnr"]),
            "ratio_to_jpegls_mosaic": ours_bytes / (float(tiled["bits_per_image"]) / 8),
            "fewest_classic_bytes": min(
                classic_lossless,
                float(per_image["bits_per_image"]) / 8,
                float(tiled["bits_per_image"]) / 8,
            ),
        }
    curve = one_curve(ours_lossy, near)
    low, high = PSNR_RANGE
    below, shared = [], 0
    for (codec, layout), sweep in pd.concat([others, jpegls]).groupby(["codec", "layout"]):
        compared = shared_rate_comparison(curve, sweep)
        compared = compared[compared["other_psnr"].between(low, high)]
        shared += len(compared)
        below += [f"{codec}, {layout}"] * int((compared["psnr"] <= compared["other_psnr"]).sum())
    ratios = [v["ratio_to_jpegls_mosaic"] for v in table.values()]
    lossless = near[near["layout"] == LOSSLESS]
    return {
        "lossless_bytes_per_image": float(lossless["bits_per_image"].iloc[0]) / 8,
        "by_max_error": table,
        "targets": {
            "largest_ratio_to_jpegls_mosaic": max(ratios),
            "at_most_half_of_jpegls_mosaic": bool(max(ratios) <= 0.5),
            "at_most_0.4_of_jpegls_mosaic": bool(max(ratios) <= 0.4),
            "below_every_classic_meeting_the_bound": all(
                v["bytes_per_image"] < v["fewest_classic_bytes"] for v in table.values()
            ),
            "shared_points_19_to_50_db": shared,
            "above_every_curve_19_to_50_db": not below,
            "curves_reaching_ours": sorted(set(below)),
        },
    }


@dataclass(frozen=True)
class PCA:
    """Principal components of images in [0, 1], flattened: ``mean [P]``, ``components
    [K, P]`` (rows, by decreasing variance), ``stds [K]`` (the coefficients' spreads)."""

    mean: np.ndarray
    components: np.ndarray
    stds: np.ndarray

    @classmethod
    def fit(cls, images: np.ndarray, components: int) -> PCA:
        x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float64) / 255)
        mean = x.mean(0)
        covariance = torch.cov((x - mean).T)
        variances, vectors = torch.linalg.eigh(covariance)  # ascending
        top = torch.argsort(variances, descending=True)[:components]
        return cls(
            mean.numpy(), vectors[:, top].T.numpy(), variances[top].clamp(min=0).sqrt().numpy()
        )

    def coder(self, k: int, step: float) -> FactorizedCoder:
        d = self.stds[:k]
        return FactorizedCoder.gaussian_mixture(
            np.ones(1), np.zeros((1, k)), d[None], step, 8 * float(d.max())
        )

    def project(self, images: np.ndarray, k: int) -> np.ndarray:
        """The coefficients of 8-bit ``images`` on the first ``k`` components, ``[N, k]``."""
        x = images.reshape(len(images), -1).astype(np.float64) / 255
        return (x - self.mean) @ self.components[:k].T

    def round_trip(
        self, images: np.ndarray, k: int, step: float, coefficients: np.ndarray | None = None
    ) -> tuple[int, np.ndarray]:
        """The bytes of one stream of every image's quantized coefficients, and the images
        decoded from them (8-bit). ``coefficients``: ``project(images, k)``, when a sweep
        over steps has them already."""
        coder = self.coder(k, step)
        if coefficients is None:
            coefficients = self.project(images, k)
        words = coder.encode(coder.quantize(coefficients, step))
        decoded_codes = coder.decode(words, len(images))
        pixels = self.mean + coder.values(decoded_codes) @ self.components[:k]
        pixels *= 255  # in place: the arrays are 63 MB each for the test set
        np.clip(np.rint(pixels, out=pixels), 0, 255, out=pixels)
        return 4 * len(words), pixels.astype(np.uint8).reshape(images.shape)


def pca_curve(train: np.ndarray, images: np.ndarray, progress: Callable = iter) -> pd.DataFrame:
    """PCA's points over components and steps, reduced to its upper envelope. The envelope
    is chosen by bits and PSNR, so SSIM is measured for its points only (each decoded
    again: the round trip is deterministic)."""
    pca = PCA.fit(train, max(PCA_COMPONENTS))
    rows, settings, reference = [], {}, Reference(images)
    for k in progress(PCA_COMPONENTS):
        coefficients = pca.project(images, k)  # the same for every step
        for step in PCA_STEPS:
            size, decoded = pca.round_trip(images, k, step, coefficients)
            setting = f"{k} components, step {step:.4g}"
            settings[setting] = k, step
            quality = {"psnr": reference.psnr(decoded), "ssim": np.nan}
            rows.append(point("PCA", "whole set", setting, size, len(images), quality))
    curve = envelope(pd.DataFrame(rows, columns=COLUMNS))
    for i, setting in curve["setting"].items():
        _, decoded = pca.round_trip(images, *settings[setting])
        curve.loc[i, "ssim"] = reference.ssim(decoded)
    return curve


def envelope(points: pd.DataFrame) -> pd.DataFrame:
    """The points that no cheaper point matches: each has a higher PSNR than every point
    with fewer bits (ties in bits: the better one)."""
    points = points.sort_values(["bits_per_image", "psnr"], ascending=[True, False])
    better_before = points["psnr"].cummax().shift(fill_value=-np.inf)
    return points[points["psnr"] > better_before].reset_index(drop=True)


def goes_as_low(curve: pd.DataFrame, psnr: float) -> bool:
    """Whether a sweep has a file at or below ``psnr`` (else even its smallest is better)."""
    return bool(curve["psnr"].min() <= psnr)


def bytes_for(curve: pd.DataFrame, psnr: float) -> float | None:
    """The bytes per image a sweep needs for at least ``psnr``: interpolated linearly between
    the neighbouring points of its envelope; its smallest file's when that one is already
    above ``psnr``; None when no setting reaches it."""
    points = envelope(curve)
    bits, quality = points["bits_per_image"].to_numpy(), points["psnr"].to_numpy()
    if quality[-1] < psnr:
        return None
    return float(np.interp(psnr, quality, bits)) / 8  # below its range: its smallest file


def pca_comparison(our_curve: pd.DataFrame, pca: pd.DataFrame) -> pd.DataFrame:
    """At each of our rates inside PCA's range of rates: our PSNR and PCA's there."""
    pca = envelope(pca)
    low, high = pca["bits_per_image"].min(), pca["bits_per_image"].max()
    inside = our_curve[our_curve["bits_per_image"].between(low, high)]
    return pd.DataFrame({
        "bits_per_image": inside["bits_per_image"],
        "psnr": inside["psnr"],
        "pca_psnr": np.interp(inside["bits_per_image"], pca["bits_per_image"], pca["psnr"]),
    }).reset_index(drop=True)  # fmt: skip


def shared_rate_comparison(ours: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """Both curves' PSNR (each on its envelope, interpolated linearly in bits) at every point
    of either curve inside the range of rates both reach; empty when the ranges do not meet."""
    ours, other = envelope(ours), envelope(other)
    low = max(ours["bits_per_image"].min(), other["bits_per_image"].min())
    high = min(ours["bits_per_image"].max(), other["bits_per_image"].max())
    bits = np.union1d(ours["bits_per_image"], other["bits_per_image"])
    bits = bits[(bits >= low) & (bits <= high)]
    return pd.DataFrame({
        "bits_per_image": bits,
        "psnr": np.interp(bits, ours["bits_per_image"], ours["psnr"]),
        "other_psnr": np.interp(bits, other["bits_per_image"], other["psnr"]),
    })  # fmt: skip


def nearest_learned(learned: pd.DataFrame, bytes_per_image: float, psnr: float) -> pd.Series:
    """The learned point to show beside ours: the best learned codec (the fewest bytes per
    image for ``psnr``; one that cannot go that low counts its smallest file), at its point
    nearest ``bytes_per_image`` (by ratio)."""

    def cost(sweep: pd.DataFrame) -> float:
        needed = bytes_for(sweep, psnr)
        return np.inf if needed is None else needed

    best = min(learned.groupby("codec", sort=False), key=lambda item: cost(item[1]))[1]
    distance = np.abs(np.log(best["bits_per_image"] / 8 / bytes_per_image))
    return best.loc[distance.idxmin()]


def closest_baseline(baselines: pd.DataFrame, bytes_per_image: float) -> pd.Series:
    """The baseline point to show beside ours: the best PSNR among those that use at most
    ``bytes_per_image``; when none gets that small, the one that uses the fewest bytes."""
    per_image = baselines["bits_per_image"] / 8
    within = baselines[per_image <= bytes_per_image]
    if len(within):
        return within.loc[within["psnr"].idxmax()]
    return baselines.loc[per_image.idxmin()]


def save_curves(curves: pd.DataFrame, path: str | Path) -> Path:
    """PSNR and SSIM against bits per image (log scale), one line per codec and layout."""
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    axes = figure.subplots(1, 2)
    curves, lossless = joined_curve_of_ours(curves)
    for (codec, layout), points in curves.groupby(["codec", "layout"], sort=False):
        points = points.sort_values("bits_per_image")
        styles = {OURS: "-o", "PCA": "--s"} | dict.fromkeys(LEARNED_CODECS, "-.^")
        style = styles.get(codec, ":.")
        for ax, measure in zip(axes, ("psnr", "ssim"), strict=True):
            ax.plot(
                points["bits_per_image"], points[measure], style, ms=3, label=f"{codec}, {layout}"
            )
    for ax, label in zip(axes, ("PSNR (dB)", "SSIM"), strict=True):
        ax.set(xscale="log", xlabel="bits per image (bytes written x 8 / images)", ylabel=label)
        ax.grid(alpha=0.3)
        if lossless is not None:
            mark_lossless(ax, lossless)
    axes[1].legend(fontsize=7, loc="lower right")
    figure.suptitle("Rate against distortion on the test images")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def save_equal_bytes(rows: list[tuple[str, np.ndarray]], path: str | Path) -> Path:
    """Rows of 8-bit digits, each with its label on the left (originals, ours, a baseline)."""
    figure = Figure(figsize=(12, 0.9 * len(rows) + 0.3), layout="constrained")
    axes = figure.subplots(len(rows), 1)
    for ax, (label, images) in zip(np.atleast_1d(axes), rows, strict=True):
        ax.imshow(np.concatenate(list(images), axis=1), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _bytes_to_match(sweeps: pd.DataFrame, psnr: float) -> tuple[dict, dict]:
    """For each codec and layout of ``sweeps``: the bytes per image it needs to match
    ``psnr`` ("cannot" when even its smallest file is better, and then that file's bytes
    beside it), and the same as numbers (None where no setting reaches it)."""
    matched, needed = {}, {}
    for (codec, layout), sweep in sweeps.groupby(["codec", "layout"], sort=False):
        name = f"{codec}, {layout}"
        needed[name] = bytes_for(sweep, psnr)
        fits = goes_as_low(sweep, psnr) and needed[name] is not None
        matched[name] = round(needed[name], 1) if fits else "cannot"
        if not goes_as_low(sweep, psnr):
            matched[f"{name} (its smallest file)"] = round(
                float(sweep["bits_per_image"].min()) / 8, 1
            )
    return matched, needed


def summary(
    ours_curve: pd.DataFrame, prior_curve: pd.DataFrame, pca: pd.DataFrame,
    baselines: pd.DataFrame, learned: pd.DataFrame, rate: int,
) -> dict[str, object]:  # fmt: skip
    """The metrics of the default rate: our bytes, PSNR and SSIM; what the prior would cost;
    for each classic and each learned codec the bytes per image it needs to match our PSNR;
    the targets (against the classic codecs, PCA and the learned codecs)."""
    at = ours_curve[ours_curve["setting"] == f"rate {rate}"].set_index("layout")
    whole, each = at.loc["whole set"], at.loc["per image"]
    prior = prior_curve[(prior_curve["setting"] == f"rate {rate}")].set_index("layout")
    psnr = float(whole["psnr"])
    metrics: dict[str, object] = {
        "rate": rate,
        "bytes_per_image": float(whole["bits_per_image"]) / 8,
        "bytes_per_image_stream": float(each["bits_per_image"]) / 8,
        "stream_overhead_bytes": float(each["bits_per_image"] - whole["bits_per_image"]) / 8,
        "psnr": psnr,
        "ssim": float(whole["ssim"]),
        "prior_bytes_per_image": float(prior.loc["whole set", "bits_per_image"]) / 8,
    }
    matched, needed = _bytes_to_match(baselines, psnr)
    metrics["baseline_bytes_to_match_psnr"] = matched
    learned_matched, learned_needed = _bytes_to_match(learned, psnr)
    metrics["learned_bytes_to_match_psnr"] = learned_matched
    reachable = {k: v for k, v in needed.items() if v is not None}
    best_per_image = min((v, k) for k, v in reachable.items() if k.endswith("per image"))
    mosaics = {k: v for k, v in reachable.items() if k.endswith("mosaic")}
    whole_curve = ours_curve[ours_curve["layout"] == "whole set"]
    comparison = pca_comparison(whole_curve, pca)
    shared = pd.concat(
        [shared_rate_comparison(whole_curve, sweep) for _, sweep in learned.groupby("codec")]
    )
    reaching = [(v, k) for k, v in learned_needed.items() if v is not None]
    best_bytes, best_learned = min(reaching) if reaching else (None, "none reaches our PSNR")
    metrics["targets"] = {
        "best_per_image_baseline": best_per_image[1],
        "its_bytes_for_our_psnr": round(best_per_image[0], 1),
        "ratio_whole_set": metrics["bytes_per_image"] / best_per_image[0],
        "ratio_per_image_stream": metrics["bytes_per_image_stream"] / best_per_image[0],
        "below_every_mosaic": all(metrics["bytes_per_image"] < v for v in mosaics.values()),
        "above_pca_at_every_shared_rate": bool((comparison["psnr"] > comparison["pca_psnr"]).all()),
        "shared_rates": len(comparison),
        "best_learned": best_learned,
        "its_bytes_for_our_psnr_learned": best_bytes and round(best_bytes, 2),
        "ratio_learned_whole_set": best_bytes and metrics["bytes_per_image"] / best_bytes,
        "ratio_learned_per_image_stream": best_bytes
        and metrics["bytes_per_image_stream"] / best_bytes,
        "above_learned_at_every_shared_rate": bool((shared["psnr"] > shared["other_psnr"]).all()),
        "learned_shared_rates": len(shared),
    }
    return metrics


def write_curves(curves: pd.DataFrame, folder: str | Path) -> list[Path]:
    """One CSV per codec and layout (``jpeg_xl_mosaic.csv``, ``mnist-vae_whole_set.csv``...):
    the files dvc plots draw."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for (codec, layout), points in curves.groupby(["codec", "layout"], sort=False):
        name = "".join(c for c in f"{codec} {layout}".lower() if c.isalnum() or c in " -")
        paths.append(folder / f"{'_'.join(name.split())}.csv")
        points.dropna(axis=1, how="all").to_csv(paths[-1], index=False)  # only its columns
    return paths


def _label(chosen: pd.Series) -> str:
    return f"{chosen['codec']}, {chosen['layout']}\n{chosen['setting']}\n" \
        f"{chosen['bits_per_image'] / 8:.1f} B/image, {chosen['psnr']:.1f} dB"  # fmt: skip


def picture_at_equal_bytes(
    codec: LossyCodec, images: np.ndarray, rate: int, baselines: pd.DataFrame,
    learned: pd.DataFrame, learned_folder: str | Path, path: str | Path,
) -> Path:  # fmt: skip
    """The first ``SHOWN`` images: originals, over ours at ``rate`` (decoded from the
    whole-set file), over the classic codec ``closest_baseline`` picks for our bytes,
    over the learned point ``nearest_learned`` picks (as its stage decoded them)."""
    data = codec.compress(images, rate)
    ours_bytes = len(data) / len(images)
    other = closest_baseline(baselines, ours_bytes)
    quality = int(str(other["setting"]).split()[-1])
    _, theirs = lossy_round_trip(images, other["codec"], quality, other["layout"])
    ours_quality = psnr(images, decoded := codec.decompress(data))
    near = nearest_learned(learned, ours_bytes, ours_quality)
    strip = load_strip(decoded_strip(learned_folder, near["codec"], near["setting"]), SIDE)
    return save_equal_bytes(
        [
            ("original", images[:SHOWN]),
            (f"mnist-vae, rate {rate}\n{ours_bytes:.1f} B/image, {ours_quality:.1f} dB",
             decoded[:SHOWN]),
            (_label(other), theirs[:SHOWN]),
            (_label(near), strip.numpy()[:SHOWN]),
        ],
        path,
    )  # fmt: skip
