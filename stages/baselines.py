"""Stage baselines: the standard lossless codecs on the test images (README: Compression).

Reads: data.test_limit, data.binarize   Writes: data/metrics/baselines.csv (each lossless
codec's bytes and bits per pixel on the raw bytes, per image and as one mosaic; every output
decoded and checked; encoding times are printed, not written) and
data/metrics/lossy_baselines.csv (JPEG, mozjpeg, WebP, AVIF and JPEG XL over their quality
sweeps, per image and as one mosaic: bytes, PSNR, SSIM of the decoded images) and
data/metrics/near_lossless_baselines.csv (JPEG-LS with every pixel within k, at the bounds
of our near-lossless curve; each largest error checked). It depends on the data only, so
retraining never re-runs it.
"""

from pathlib import Path

import pandas as pd

from mnist_vae.compression import baselines
from mnist_vae.compression.near_lossless import CURVE_ERRORS
from mnist_vae.data import load_test_images, to_symbols
from mnist_vae.params import load_params
from mnist_vae.progress import bar_over
from mnist_vae.stage import run

DATA = Path("data/mnist")
OUT = Path("data/metrics/baselines.csv")
LOSSY = Path("data/metrics/lossy_baselines.csv")
NEAR_LOSSLESS = Path("data/metrics/near_lossless_baselines.csv")


def main() -> None:
    params = load_params()
    images, _ = load_test_images(DATA, params.data.test_limit, params.data.binarize)
    pixels = to_symbols(images, 256).numpy()  # binarized digits as 0 and 255, as a PNG holds them
    print(f"baselines: {len(pixels)} test images, every output decoded and checked", flush=True)
    table = pd.DataFrame([r.as_dict() for r in baselines.measure(pixels)])
    table = table.sort_values("bits_per_pixel", kind="stable")
    print(table.to_string(index=False, float_format="%.4f"), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)  # sizes only: times are no reproducible output
    table.drop(columns="seconds").to_csv(OUT, index=False)
    print(f"baselines: lossy codecs at qualities {baselines.QUALITIES}", flush=True)
    measured = baselines.measure_lossy(pixels, progress=bar_over("lossy codecs"))
    lossy = pd.DataFrame([r.as_dict() for r in measured])
    print(lossy.to_string(index=False, float_format="%.2f"), flush=True)
    lossy.to_csv(LOSSY, index=False)
    print(f"baselines: JPEG-LS within k of every pixel, k in {CURVE_ERRORS}", flush=True)
    near = baselines.measure_near_lossless(pixels, CURVE_ERRORS, bar_over("JPEG-LS"))
    near = pd.DataFrame(near)
    print(near.to_string(index=False, float_format="%.2f"), flush=True)
    near.to_csv(NEAR_LOSSLESS, index=False)


if __name__ == "__main__":
    run(main, "baselines")
