"""Stage evaluate: likelihood, reconstruction, latent-use and sample-quality metrics, and
pictures of the latent space.

Reads: seed, data.test_limit, data.binarize, evaluate.*
Writes: data/metrics/evaluate.json (dvc metrics); data/metrics/per_class.csv,
latent_kl.csv, sample_labels.csv (dvc plots); data/evaluation/*.png (dvc plots, images).
"""

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import torch

from mnist_vae import metrics, tracking
from mnist_vae.classifier import load_classifier
from mnist_vae.data import load_test_images
from mnist_vae.images import save_grid
from mnist_vae.latent import interpolation_grid, save_latent_map, traversal
from mnist_vae.model import WEIGHTS_FILE, load_model
from mnist_vae.params import load_params
from mnist_vae.stage import run

DATA = Path("data/mnist")
MODEL_DIR = Path("data/model")
CLASSIFIER_DIR = Path("data/classifier")
METRICS_DIR = Path("data/metrics")
PICTURES = Path("data/evaluation")


@torch.no_grad()
def main() -> None:
    params = load_params()
    p = params.evaluate
    model = load_model(MODEL_DIR)
    classifier = load_classifier(CLASSIFIER_DIR)
    test_x, test_y = load_test_images(DATA, params.data.test_limit, params.data.binarize)
    grey_x, _ = load_test_images(DATA, params.data.test_limit)
    print(
        f"evaluate: {len(test_x)} test images, {p.iw_samples} importance samples each", flush=True
    )

    rows, kl_dims = metrics.per_image_metrics(
        model, test_x, iw_samples=p.iw_samples, seed=params.seed
    )
    rows["digit"] = test_y.numpy()
    n_active, kl_by_dim = metrics.active_units(kl_dims, p.active_threshold)
    samples = model.sample(p.fid_samples, torch.Generator().manual_seed(params.seed))
    fractions, entropy = metrics.label_histogram(classifier, samples)
    results = {
        **metrics.summarize(rows.drop(columns="digit")),
        "active_units": n_active,
        "frechet_distance": metrics.frechet_distance(classifier, grey_x, samples),
        "sample_label_entropy": entropy,
        "sample_min_digit_fraction": min(fractions),
    }
    print(json.dumps(results, indent=2), flush=True)

    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    (METRICS_DIR / "evaluate.json").write_text(json.dumps(results, indent=2) + "\n")
    per_class = rows.groupby("digit").mean().reset_index()
    per_class.insert(1, "images", rows.groupby("digit").size().to_numpy())
    per_class.to_csv(METRICS_DIR / "per_class.csv", index=False)
    pd.DataFrame({"dim": range(len(kl_by_dim)), "kl": kl_by_dim}).to_csv(
        METRICS_DIR / "latent_kl.csv", index=False
    )
    pd.DataFrame({"digit": range(len(fractions)), "fraction": fractions}).to_csv(
        METRICS_DIR / "sample_labels.csv", index=False
    )

    shutil.rmtree(PICTURES, ignore_errors=True)
    z0, _ = model.encode(test_x[:1])
    save_grid(traversal(model, z0[0], p.traversal_span, p.traversal_steps),
              PICTURES / "traversal.png", nrow=p.traversal_steps)  # fmt: skip
    n = min(p.interpolations, len(test_x) // 2)
    save_grid(interpolation_grid(model, test_x[:n], test_x[n : 2 * n], p.interpolation_steps),
              PICTURES / "interpolation.png", nrow=p.interpolation_steps)  # fmt: skip
    save_latent_map(model.encode(test_x)[0], test_y, PICTURES / "latent_map.png")

    with tracking.model_run(MODEL_DIR / WEIGHTS_FILE):
        mlflow.log_metrics({f"eval.{k}": v for k, v in results.items()})
        mlflow.log_artifacts(str(PICTURES), "evaluation")
        mlflow.log_artifacts(str(METRICS_DIR), "metrics")


if __name__ == "__main__":
    run(main, "evaluate")
