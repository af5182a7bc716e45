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

from mnist_vae.data import load_test_images
from mnist_vae.evaluation.classifier import load_classifier
from mnist_vae.evaluation.latent import save_pictures
from mnist_vae.evaluation.metrics import evaluate_vae
from mnist_vae.model.folder import WEIGHTS_FILE
from mnist_vae.model.vae import load_model
from mnist_vae.params import load_params
from mnist_vae.stage import run, write_metrics
from mnist_vae.tracking import runs

DATA = Path("data/mnist")
MODEL_DIR = Path("data/model")
CLASSIFIER_DIR = Path("data/classifier")
METRICS_DIR = Path("data/metrics")
PICTURES = Path("data/evaluation")


def main() -> None:
    params = load_params()
    runs.configure()  # a server that refuses us stops the stage before any output
    p = params.evaluate
    model = load_model(MODEL_DIR)
    test_x, test_y = load_test_images(DATA, params.data.test_limit, params.data.binarize)
    grey_x, _ = load_test_images(DATA, params.data.test_limit)
    print(
        f"evaluate: {len(test_x)} test images, {p.iw_samples} importance samples each", flush=True
    )

    result = evaluate_vae(
        model, load_classifier(CLASSIFIER_DIR), test_x, test_y, reference=grey_x,
        iw_samples=p.iw_samples, fid_samples=p.fid_samples,
        active_threshold=p.active_threshold, seed=params.seed,
    )  # fmt: skip
    print(json.dumps(result.summary, indent=2), flush=True)
    write_metrics(METRICS_DIR / "evaluate.json", result.summary)
    result.per_class.to_csv(METRICS_DIR / "per_class.csv", index=False)
    result.latent_kl.to_csv(METRICS_DIR / "latent_kl.csv", index=False)
    result.sample_labels.to_csv(METRICS_DIR / "sample_labels.csv", index=False)

    shutil.rmtree(PICTURES, ignore_errors=True)
    save_pictures(
        model, test_x, test_y, PICTURES,
        span=p.traversal_span, steps=p.traversal_steps,
        pairs=p.interpolations, interpolation_steps=p.interpolation_steps,
    )  # fmt: skip

    with runs.model_run(MODEL_DIR / WEIGHTS_FILE) as mlflow_run:
        mlflow.log_metrics({f"eval.{k}": v for k, v in result.summary.items()})
        mlflow.log_artifacts(str(PICTURES), "evaluation")
        mlflow.log_artifacts(str(METRICS_DIR), "metrics")
        print(f"evaluate: {runs.promote_if_better(mlflow_run.info.run_id)}", flush=True)


if __name__ == "__main__":
    run(main, "evaluate")
