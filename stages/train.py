"""Stage train: fit the VAE and record the run in MLflow, with the model as a registered
pyfunc model (a new version of ``mnist-vae`` per training).

Reads: latent_dim, seed, data.*, model.*, train.*   Writes: data/model/,
data/metrics/train.json (dvc metrics), data/metrics/train_history.csv (dvc plots).
Checkpoints every epoch to data/checkpoints/train.pt (not a DVC output, git-ignored): a
re-run after a kill resumes from it, in the same MLflow run, and deletes it when done.

Data-parallel under ``torchrun --nproc_per_node=N stages/train.py`` (README: Scaling out):
train.batch_size is then per process, and only rank 0 writes outputs and talks to MLflow.
"""

import json
import resource
import time
from contextlib import nullcontext
from pathlib import Path

import mlflow
import pandas as pd
import torch

from mnist_vae import distributed, tracking
from mnist_vae.checkpoint import WEIGHTS_FILE
from mnist_vae.data import dataset_digest, load_images, load_test_images
from mnist_vae.model import VAEConfig, save_model
from mnist_vae.params import Params, ParamsError, load_params
from mnist_vae.serving import log_pyfunc_model
from mnist_vae.stage import run
from mnist_vae.training import (
    fit,
    load_training_state,
    resolve_device,
    seeded_model,
    training_fingerprint,
)

DATA = Path("data/mnist")
MODEL_DIR = Path("data/model")
METRICS = Path("data/metrics/train.json")
HISTORY = Path("data/metrics/train_history.csv")
CHECKPOINT = Path("data/checkpoints/train.pt")
TRAINING_PARAMS = ("latent_dim", "seed", "data", "model", "train")


def main() -> None:
    params = load_params()
    cluster = distributed.from_environment()
    train_x, _ = load_images(DATA, "train", params.data.train_limit, params.seed)
    test_x, _ = load_test_images(DATA, params.data.test_limit, params.data.binarize)
    per_process = -(-len(train_x) // cluster.world_size)
    if params.train.batch_size > per_process:
        raise ParamsError(
            f"params.yaml: train.batch_size = {params.train.batch_size} is larger than the "
            f"{per_process} training images"
            + (f" each of {cluster.world_size} processes sees" if cluster.distributed else "")
            + f"; expected at most {per_process}"
        )
    device = cluster.place(resolve_device(params.train.device))
    if cluster.is_main:
        print(
            f"train: {len(train_x)} training images, {len(test_x)} test images, on {device}"
            + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "")
            + (
                f" x {cluster.world_size} processes ({cluster.backend(device)}), effective "
                f"batch {cluster.world_size} x {params.train.batch_size}"
                if cluster.distributed
                else ""
            ),
            flush=True,
        )
    with distributed.process_group(cluster, device):
        train(params, cluster, device, train_x, test_x)


def train(
    params: Params,
    cluster: distributed.Cluster,
    device: torch.device,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
) -> None:
    """Fit and, on rank 0, record the run and write the outputs (every process calls it)."""
    model = seeded_model(
        VAEConfig(latent_dim=params.latent_dim, arch=params.model.arch), params.seed
    )
    digest = dataset_digest(DATA)
    settings = {k: v for k, v in params.flat().items() if k.split(".")[0] in TRAINING_PARAMS}
    settings["processes"] = cluster.world_size
    fingerprint = training_fingerprint({"params": settings, "data": digest})
    resume = load_training_state(CHECKPOINT, fingerprint)  # every process reads it
    mlflow_run = nullcontext()  # rank 0 alone talks to MLflow
    if cluster.is_main:
        tracking.configure()
        if resume is not None:  # the same run, continued
            mlflow_run = mlflow.start_run(run_id=resume["run_id"])
        else:
            name = tracking.run_name(
                params.latent_dim, params.model.arch, params.train.epochs, params.seed
            )
            mlflow_run = mlflow.start_run(run_name=name, tags=tracking.run_tags(digest))
            mlflow.log_params(params.flat())
            mlflow.log_params({
                "train.processes": cluster.world_size,
                "train.effective_batch_size": cluster.world_size * params.train.batch_size,
            })  # fmt: skip
    with mlflow_run:
        start = time.perf_counter() - (resume["seconds"] if resume else 0.0)
        history = fit(
            model,
            train_x,
            test_x,
            epochs=params.train.epochs,
            batch_size=params.train.batch_size,
            lr=params.train.lr,
            recon=params.train.loss,
            seed=params.seed,
            binarize=params.data.binarize == "dynamic",
            schedule=params.train.schedule,
            device=device,
            cuda_batch_scale=params.train.cuda_batch_scale,
            bf16=params.train.bf16,
            compile=params.train.compile,
            on_epoch=lambda m: mlflow.log_metrics(
                {k: v for k, v in m.as_dict().items() if k != "epoch"}, step=m.epoch
            ),
            checkpoint=CHECKPOINT,
            checkpoint_meta={
                "fingerprint": fingerprint,
                "run_id": mlflow_run.info.run_id if cluster.is_main else None,
            },
            resume=resume,
            cluster=cluster,
        )
        if not cluster.is_main:
            return
        seconds = time.perf_counter() - start
        peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        mlflow.log_metrics({"train_seconds": seconds, "peak_rss_mib": peak_rss_mib})
        print(
            f"train: {params.train.epochs} epochs in {seconds:.1f} s, "
            f"peak memory {peak_rss_mib:.0f} MiB",
            flush=True,
        )

        save_model(model, MODEL_DIR)
        METRICS.parent.mkdir(parents=True, exist_ok=True)
        final = history[-1].as_dict()
        METRICS.write_text(json.dumps(final, indent=2) + "\n")
        pd.DataFrame([m.as_dict() for m in history]).to_csv(HISTORY, index=False)

        mlflow.set_tag(tracking.MODEL_SHA_TAG, tracking.file_sha256(MODEL_DIR / WEIGHTS_FILE))
        mlflow.log_artifacts(str(MODEL_DIR), tracking.MODEL_FILES)
        mlflow.log_artifact(str(HISTORY), "metrics")
        info = log_pyfunc_model(MODEL_DIR, params.latent_dim, tracking.REGISTERED_MODEL)
        print(
            f"train: registered {tracking.REGISTERED_MODEL} version "
            f"{info.registered_model_version} (run {info.run_id})",
            flush=True,
        )
    CHECKPOINT.unlink()  # done: a later run starts afresh


if __name__ == "__main__":
    run(main, "train")
