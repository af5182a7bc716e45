"""Stage learned_baselines: CompressAI's learned codecs trained on the training digits, each
at each lambda, on the test images (README: Compression).

Reads: data.test_limit, data.binarize, learned_baselines   Writes:
data/metrics/learned_baselines/ (committed, small): curves.csv (each model at each lambda:
the bytes of its real per-digit streams, PSNR and SSIM of the digits decoded from them, every
stream decoded and checked against the picture the encoder meant), training.csv (epochs,
steps, final loss, bits per pixel, squared error, each epoch's loss) and decoded/*.png (the
first 16 test digits as each point decodes them, for rate_distortion's equal-bytes picture).
The weights are not kept. It depends on the data and its own params only, so retraining the
VAE never re-runs it and a fresh clone's `dvc repro` finds it up to date. Training times are
printed, not written: they are no reproducible output.
"""

import shutil
from pathlib import Path

import pandas as pd
import torch

from mnist_vae.compression import learned
from mnist_vae.compression.curves import SHOWN, decoded_strip, point
from mnist_vae.compression.distortion import distortion
from mnist_vae.data import load_images, load_test_images, to_symbols
from mnist_vae.images import save_strip
from mnist_vae.params import load_params
from mnist_vae.progress import bar_over
from mnist_vae.stage import run

DATA = Path("data/mnist")
OUT = Path("data/metrics/learned_baselines")


def main() -> None:
    params = load_params()
    p, data = params.learned_baselines, params.data
    test = to_symbols(load_test_images(DATA, data.test_limit, data.binarize)[0], 256).numpy()
    train = load_images(DATA, "train", p.train_limit, p.seed)[0]
    if data.binarize == "dynamic":  # one Bernoulli draw, as the test digits are drawn once
        train = torch.bernoulli(train, generator=torch.Generator().manual_seed(p.seed))
    train = to_symbols(train, 256).numpy()
    lambdas = "; ".join(f"{name} at lambdas {list(p.lambdas_of(name))}" for name in p.models)
    print(f"learned_baselines: {lambdas}; {len(train)} training digits, {len(test)} test "
          f"digits; N={p.channels}, M={p.latent_channels}, {p.epochs} epochs for the first "
          f"lambda, {p.fine_tune_epochs} for each next", flush=True)  # fmt: skip

    shutil.rmtree(OUT, ignore_errors=True)
    curves, trainings, total = [], [], 0.0
    for name in p.models:
        for trained in learned.sweep(name, p, train, test, bar_over):
            setting = f"lambda {trained.lmbda:g}"
            size = sum(map(len, trained.streams))
            quality = distortion(test, trained.decoded)
            curves.append(point(name, "per image", setting, size, len(test), quality))
            t = trained.training
            total += t.seconds
            trainings.append({
                "codec": name, "lambda": trained.lmbda, "epochs": t.epochs, "steps": t.steps,
                "loss": t.loss, "bits_per_pixel": t.bits_per_pixel, "mse": t.mse,
                "aux_loss": t.aux_loss,
                "epoch_losses": " ".join(f"{v:.5f}" for v in t.epoch_losses),
            })  # fmt: skip
            print(f"  {name}, {setting}: {size / len(test):.2f} bytes per digit, PSNR "
                  f"{quality['psnr']:.2f} dB, SSIM {quality['ssim']:.3f}; trained "
                  f"{t.epochs} epochs ({t.steps} steps) in {t.seconds / 60:.1f} min, final loss "
                  f"{t.loss:.4f}", flush=True)  # fmt: skip
            save_strip(torch.from_numpy(trained.decoded[:SHOWN]), decoded_strip(OUT, name, setting))
    print(f"learned_baselines: {total / 60:.1f} minutes of training in all", flush=True)
    table = pd.DataFrame(curves)
    print(table.to_string(index=False, float_format="%.2f"), flush=True)
    table.to_csv(OUT / "curves.csv", index=False)
    pd.DataFrame(trainings).to_csv(OUT / "training.csv", index=False)


if __name__ == "__main__":
    run(main, "learned_baselines")
