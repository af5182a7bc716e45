"""Draw near-lossless digits: docs/assets/near_lossless.png (the Near-lossless page).

    python docs/assets/draw_near_lossless.py [--model data/model]

The first 12 test digits, then the same digits compressed with every pixel within k and
decoded again by a fresh codec, for a few k; each row is labelled with the bytes per digit
and the PSNR of the whole test set at that k (data/metrics/near_lossless.json, written by
the rate_distortion stage).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mnist_vae.compression.lossless import BitsBackCodec
from mnist_vae.data import load_test_images, to_symbols

SHOWN = 12
ERRORS = (4, 17, 64, 127)
METRICS = Path("data/metrics/near_lossless.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/model", help="a model folder")
    args = parser.parse_args()
    digits = to_symbols(load_test_images(Path("data/mnist"), SHOWN, "none")[0], 256).numpy()
    by_error = json.loads(METRICS.read_text())["by_max_error"]
    rows = [("original", digits)]
    for k in ERRORS:
        data = BitsBackCodec.from_folder(args.model).compress(digits, max_error=k)
        decoded = BitsBackCodec.from_folder(args.model).decompress(data)
        assert np.abs(decoded.astype(int) - digits).max() <= k
        test_set = by_error[str(k)]
        label = f"k = {k}\n{test_set['bytes_per_image']:.1f} B, {test_set['psnr']:.1f} dB"
        rows.append((label, decoded))
    figure = Figure(figsize=(9, 0.85 * len(rows) + 0.2), layout="constrained")
    for ax, (label, images) in zip(figure.subplots(len(rows), 1), rows, strict=True):
        ax.imshow(np.concatenate(list(images), axis=1), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    path = Path(__file__).with_name("near_lossless.png")
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
