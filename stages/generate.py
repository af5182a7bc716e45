"""Stage generate: decode generate.n_samples latent vectors drawn from N(0, I).

Reads: seed, generate.*   Writes: data/generated/ (grid.png and samples/*.png).
"""

import shutil
from pathlib import Path

import mlflow
import torch

from mnist_vae.images import save_each, save_grid
from mnist_vae.model.folder import WEIGHTS_FILE
from mnist_vae.model.vae import load_model
from mnist_vae.params import load_params
from mnist_vae.stage import run
from mnist_vae.tracking import runs

MODEL_DIR = Path("data/model")
OUT = Path("data/generated")


def main() -> None:
    params = load_params()
    runs.configure()  # a server that refuses us stops the stage before any output
    model = load_model(MODEL_DIR)
    images = model.sample(params.generate.n_samples, torch.Generator().manual_seed(params.seed))

    shutil.rmtree(OUT, ignore_errors=True)
    save_grid(images, OUT / "grid.png", nrow=params.generate.nrow)
    save_each(images, OUT / "samples", "sample")
    print(f"generate: {len(images)} samples in {OUT}/", flush=True)

    with runs.model_run(MODEL_DIR / WEIGHTS_FILE):
        mlflow.log_artifacts(str(OUT), "generated")


if __name__ == "__main__":
    run(main, "generate")
