"""How far the learned_baselines stage's budget is from convergence, where it matters: the
factorized prior at the lambdas nearest our default level, trained from scratch for longer
than the stage's chain gives them, on the same digits, coded and decoded the same way.

Prints, for each lambda, the stage's point (data/metrics/learned_baselines/curves.csv) and
the longer-trained one's: bytes per digit, PSNR and SSIM on all 10,000 test digits, and the
loss after each epoch, so the curve's distance from a converged one is measured, not guessed.

    python bench/learned.py [--epochs 8] [--lambdas 0.0001 0.00003] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from mnist_vae.compression import learned
from mnist_vae.compression.distortion import distortion
from mnist_vae.data import load_images, load_test_images, to_symbols
from mnist_vae.params import load_params

DATA = Path("data/mnist")
NAME = "bmshj2018-factorized"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0001, 0.00003])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    p = load_params().learned_baselines
    train = to_symbols(load_images(DATA, "train", p.train_limit, p.seed)[0], 256).numpy()
    test = to_symbols(load_test_images(DATA)[0], 256).numpy()
    stage = pd.read_csv("data/metrics/learned_baselines/curves.csv").set_index(["codec", "setting"])
    print(f"{NAME}, N={p.channels}, M={p.latent_channels}, {len(train)} training digits, "
          f"{len(test)} test digits, {args.threads} threads\n")  # fmt: skip
    for lmbda in args.lambdas:
        setting = f"lambda {lmbda:g}"
        ours = stage.loc[(NAME, setting)]
        torch.manual_seed(p.seed)
        model = learned.build(NAME, p.channels, p.latent_channels)
        start = time.perf_counter()
        training = learned.train(
            model, train, lmbda, args.epochs, p.batch_size, p.lr, p.seed, p.settle_steps
        )
        minutes = (time.perf_counter() - start) / 60
        streams = learned.compress(model, test)
        decoded = learned.decompress(model, streams)
        assert (decoded == learned.intended(model, test)).all()
        quality = distortion(test, decoded)
        size = sum(map(len, streams)) / len(test)
        losses = " ".join(f"{v:.4f}" for v in training.epoch_losses)
        print(f"{setting}: the stage's chain   {ours['bits_per_image'] / 8:6.2f} B  "
              f"{ours['psnr']:.2f} dB  SSIM {ours['ssim']:.3f}")  # fmt: skip
        print(f"{setting}: {args.epochs} epochs, scratch {size:6.2f} B  "
              f"{quality['psnr']:.2f} dB  SSIM {quality['ssim']:.3f}  ({minutes:.1f} min; "
              f"loss by epoch {losses})\n")  # fmt: skip


if __name__ == "__main__":
    main()
