"""Stage train: fit the VAE and record the run in MLflow, with the model as a registered
pyfunc model (a new version of ``mnist-vae`` per training).

Reads: latent_dim, seed, data.*, model.*, train.*   Writes: data/model/ (with the sampling
mixture fitted to the training codes when model.sampler_components > 0, and the lossy
codec's own decoder when train.lossy_decoder_epochs > 0),
data/metrics/train.json (dvc metrics), data/metrics/train_history.csv (dvc plots),
data/metrics/environment.json (torch version, CPU kernels, threads, device: what decides the
bits; also tagged env.* on the MLflow run).
Checkpoints every epoch to data/checkpoints/train.pt (not a DVC output, git-ignored): a
re-run after a kill resumes from it, in the same MLflow run, and deletes it when done.

Data-parallel under ``torchrun --nproc_per_node=N stages/train.py`` (README: Scaling out):
train.batch_size is then per process, and only rank 0 writes outputs and talks to MLflow.
"""

from pathlib import Path

import pandas as pd

from mnist_vae import CPU_KERNELS, environment
from mnist_vae.compression.lossy import fit_lossy_decoder
from mnist_vae.data import OFFICIAL_MIRRORS, dataset_digest, load_images, load_test_images
from mnist_vae.model.folder import WEIGHTS_FILE
from mnist_vae.model.sampler import check_sampler, fit_sampler
from mnist_vae.model.vae import config_from_params, save_model
from mnist_vae.params import load_params
from mnist_vae.progress import bar_over
from mnist_vae.stage import run, write_metrics
from mnist_vae.tracking import runs
from mnist_vae.tracking.pyfunc import log_pyfunc_model
from mnist_vae.training import distributed
from mnist_vae.training.checkpoint import Checkpoint, training_fingerprint
from mnist_vae.training.loop import fit, peak_memory_mib, plan_training, seeded_model

DATA = Path("data/mnist")
MODEL_DIR = Path("data/model")
METRICS = Path("data/metrics/train.json")
HISTORY = Path("data/metrics/train_history.csv")
ENVIRONMENT = Path("data/metrics/environment.json")
CHECKPOINT = Path("data/checkpoints/train.pt")


def main() -> None:
    params = load_params()
    cluster = distributed.from_environment()
    train_x, _ = load_images(DATA, "train", params.data.train_limit, params.seed)
    test_x, _ = load_test_images(DATA, params.data.test_limit, params.data.binarize)
    plan = plan_training(params.train, cluster, len(train_x))
    check_sampler(params.model.sampler_components, len(train_x))
    digest = dataset_digest(DATA)
    checkpoint = Checkpoint(CHECKPOINT, training_fingerprint(params, cluster.world_size, digest))
    resume = checkpoint.load()  # every process reads it
    machine = environment.record(str(plan.device), CPU_KERNELS)
    with (
        distributed.process_group(cluster, plan.device),
        runs.training_run(
            params, plan.as_params(), data_checksum=digest, source_url=OFFICIAL_MIRRORS[0],
            datasets={"training": train_x, "testing": test_x},
            resume_run_id=resume and resume["run_id"], environment=machine,
            enabled=cluster.is_main,
        ) as mlflow_run,
    ):  # fmt: skip
        checkpoint.run_id = mlflow_run.run_id
        if resume and (missed := mlflow_run.log_missing_epochs(resume["history"])):
            print(f"train: logged epochs {missed} that the MLflow server missed before the "
                  f"interruption to run {mlflow_run.run_id}", flush=True)  # fmt: skip
        config = config_from_params(params)
        model = seeded_model(config, params.seed)
        result = fit(model, train_x, test_x, params, plan, on_epoch=mlflow_run.log_epoch,
                     checkpoint=checkpoint, resume=resume)  # fmt: skip
        if not cluster.is_main:
            return
        if config.sampler_components:
            score = fit_sampler(model, train_x, params.seed)
            print(f"train: sampler: {config.sampler_components} Gaussians fitted to "
                  f"{len(train_x)} codes ({score:.2f} nats per code)", flush=True)  # fmt: skip
        if epochs := params.train.lossy_decoder_epochs:
            errors = fit_lossy_decoder(model, train_x, epochs, params.seed, params.data.binarize,
                                       progress=bar_over("lossy decoder"))  # fmt: skip
            print(f"train: lossy decoder: {epochs} epochs on the codes of {len(train_x)} "
                  f"images at every rate level, squared error {errors[0]:.5f} -> "
                  f"{errors[-1]:.5f}", flush=True)  # fmt: skip
        memory = peak_memory_mib()
        print(f"train: {params.train.epochs} epochs in {result.seconds:.1f} s, "
              f"peak memory {memory:.0f} MiB", flush=True)  # fmt: skip
        save_model(model, MODEL_DIR)
        write_metrics(METRICS, result.history[-1].as_dict())
        write_metrics(ENVIRONMENT, machine)
        pd.DataFrame([m.as_dict() for m in result.history]).to_csv(HISTORY, index=False)
        costs = {"train_seconds": result.seconds, "peak_rss_mib": memory}
        mlflow_run.log_outputs(MODEL_DIR / WEIGHTS_FILE, HISTORY, costs)
        info = log_pyfunc_model(MODEL_DIR, params.latent_dim, runs.REGISTERED_MODEL)
        print(f"train: registered {runs.REGISTERED_MODEL} version "
              f"{info.registered_model_version} (run {info.run_id})", flush=True)  # fmt: skip
    checkpoint.remove()


if __name__ == "__main__":
    run(main, "train")
