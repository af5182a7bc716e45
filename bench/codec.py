"""Lossless compression of the MNIST test set: our bits-back codec against every baseline.

Usage: ``python bench/codec.py [--model data/model] [--limit N]``

Compresses the test images (all 10,000 unless ``--limit``; binarized once with the fixed
seed when the model was trained on binary pixels) with the model's bits-back codec,
decompresses them with a fresh codec and checks every pixel, then measures every baseline
of :mod:`mnist_vae.compression.baselines` on the same images. The rate is the file's bytes x 8 over
the pixels, header and start-up words included, model weights excluded. It also prints
the model's negative ELBO (one posterior sample per image, as the codec draws) and the gap
between the two.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mnist_vae.compression import baselines
from mnist_vae.compression.lossless import BitsBackCodec, round_trip
from mnist_vae.data import load_test_images, to_symbols
from mnist_vae.evaluation.metrics import bits_per_pixel
from mnist_vae.training.loop import held_out_loss

DATA = Path("data/mnist")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/model", help="a model folder")
    parser.add_argument("--limit", type=int, default=0, help="the first N test images (0: all)")
    args = parser.parse_args()

    codec = BitsBackCodec.from_folder(args.model)
    binary = codec.levels == 2
    grey, _ = load_test_images(DATA, args.limit, "dynamic" if binary else "none")
    images = to_symbols(grey, codec.levels).numpy()
    n, pixels = len(images), images.size
    print(f"{n} test images ({'binarized' if binary else '8-bit grey'}), model {args.model} "
          f"({codec.loss}, z = {codec.model.config.latent_dim}), "
          f"{torch.get_num_threads()} threads", flush=True)  # fmt: skip

    trip = round_trip(args.model, images)  # decompressed by a fresh codec, every pixel checked
    rate = trip.bits_per_pixel
    nelbo_bpp = bits_per_pixel(
        held_out_loss(codec.model, grey, codec.loss, seed=0).loss, pixels // n
    )
    gap = trip.metrics(nelbo_bpp, float("nan"))["gap_to_nelbo"]
    speed = trip.speed()
    print(f"\nours (bits-back ANS): {rate:.4f} bits per pixel ({len(trip.data):,} bytes), "
          f"every pixel back; negative ELBO {nelbo_bpp:.4f} bpp, gap {gap:+.2%}",
          flush=True)  # fmt: skip
    print(f"  compress {speed['compress_images_per_second']:.0f} images/s, decompress "
          f"{speed['decompress_images_per_second']:.0f} images/s", flush=True)  # fmt: skip

    print("\nbaselines (same images, each decoded and checked):")
    grey_levels = to_symbols(grey, 256).numpy()  # binarized digits as 0 and 255, as the stage
    results = sorted(baselines.measure(grey_levels), key=lambda r: r.bits_per_pixel)
    for r in results:
        mark = "" if r.bits_per_pixel > rate else "   <- smaller than ours"
        print(f"  {r.codec:18s} {r.layout:10s} {r.bits_per_pixel:7.4f} bpp "
              f"({r.bytes:,} bytes, {r.seconds:.1f} s){mark}")  # fmt: skip
    best = results[0]
    print(f"\nbest baseline: {best.codec} ({best.layout}) {best.bits_per_pixel:.4f} bpp; ours is "
          f"{rate / best.bits_per_pixel:.3f} of it")  # fmt: skip


if __name__ == "__main__":
    main()
