"""Stage compare: the first compare.n_images test digits beside their reconstructions.

Reads: compare.*   Writes: data/comparison/ (grid.png: originals over
reconstructions; pairs/*.png: each original with its reconstruction to its right).
"""

import shutil
from pathlib import Path

import mlflow

from mnist_vae.data import load_images
from mnist_vae.images import originals_over_reconstructions, save_each, save_grid, side_by_side
from mnist_vae.model.folder import WEIGHTS_FILE
from mnist_vae.model.vae import load_model
from mnist_vae.params import load_params
from mnist_vae.stage import run
from mnist_vae.tracking import runs

DATA = Path("data/mnist")
MODEL_DIR = Path("data/model")
OUT = Path("data/comparison")


def main() -> None:
    params = load_params()
    runs.configure()  # a server that refuses us stops the stage before any output
    model = load_model(MODEL_DIR)
    originals, _ = load_images(DATA, "test", params.compare.n_images, random_subset=False)
    reconstructions = model.reconstruct(originals)

    shutil.rmtree(OUT, ignore_errors=True)
    grid, nrow = originals_over_reconstructions(originals, reconstructions, params.compare.nrow)
    save_grid(grid, OUT / "grid.png", nrow=nrow)
    save_each(side_by_side(originals, reconstructions), OUT / "pairs", "pair")
    print(f"compare: {len(originals)} pairs in {OUT}/", flush=True)

    with runs.model_run(MODEL_DIR / WEIGHTS_FILE):
        mlflow.log_artifacts(str(OUT), "comparison")


if __name__ == "__main__":
    run(main, "compare")
