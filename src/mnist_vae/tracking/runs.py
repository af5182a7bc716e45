"""MLflow: where runs are stored, and the one run that holds a model's lineage.

The train stage opens the run with ``training_run`` (a new one, or the one an
interrupted training was logging to): params as params.yaml says them and as the
run used them, the training and test images as the run's dataset inputs, system
metrics (CPU, memory) while it trains. It tags the run with the sha256 of the
weights it wrote. Later stages find that run from the weights file they read, so every
image and metric of a model lands in the model's own run, while the pipeline's
outputs (and so ``dvc.lock``) stay free of run ids that would differ each time.

The default store is ``mlflow.db`` at the DVC repository's root, as an absolute
path: DVC gives every stage ``$DVC_ROOT``, and for ``dvc exp run --queue`` /
``--temp`` (which run in a copy under ``.dvc/tmp/exps``) it points at the
original repository, so those runs land in the same store as workspace runs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from ..errors import tracking_unreachable_error

if TYPE_CHECKING:
    from ..params import Params
    from ..training.loop import EpochMetrics

EXPERIMENT_NAME = "mnist-vae"
REGISTERED_MODEL = "mnist-vae"
CHAMPION_ALIAS = "champion"
PROMOTION_METRIC = "eval.iwae_nll"
PROMOTION_TAG = "mnist_vae.promotion"
ENVIRONMENT_TAG_PREFIX = "env."  # env.torch, env.cpu_kernels, env.threads, ... (environment.py)
# scores compare only between models of the same likelihood on the same pixels
COMPARABLE_PARAMS = ("train.loss", "data.binarize")
MODEL_FOLDER_ARTIFACT = "model_files"  # the run's artifact folder: model.pt and config.json
STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
MODEL_SHA_TAG = "mnist_vae.model_sha256"
DATA_TAG = "mnist_vae.data"  # checksum of the MNIST files the model was trained on
EXP_NAME_TAG = "dvc.exp_name"
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own name for it
# The UI opens an experiment in the view its kind names (else it guesses, often GenAI).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
SLOW_CALL_SECONDS = 3.0  # a call that took longer met an unreachable or failing server
DIGEST_LENGTH = 32  # hex digits of a dataset input's sha256 (MLflow stores at most 36)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def project_root() -> Path:
    """The DVC repository's root (``$DVC_ROOT``, set by DVC for each stage), else the cwd."""
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def _resolve(root: str | Path | None) -> Path:
    return project_root() if root is None else Path(root).resolve()


def tracking_uri(root: str | Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else the SQLite store at ``root``, as an absolute path."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(_resolve(root) / STORE_FILE).as_posix()}"


def git_commit(cwd: str | Path = ".") -> str | None:
    """The checked-out commit, or None outside a Git repository."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=30
        )
    except OSError:  # no git
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def run_tags(data_checksum: str) -> dict[str, str]:
    """What tells a training run's inputs apart: the data, the commit, the DVC experiment."""
    tags = {DATA_TAG: data_checksum}
    if commit := git_commit():
        tags[GIT_COMMIT_TAG] = commit
    if exp_name := os.environ.get("DVC_EXP_NAME"):
        tags[EXP_NAME_TAG] = exp_name
    return tags


def run_name(latent_dim: int, arch: str, epochs: int, seed: int) -> str:
    """``z10-conv-e10-seed0``, prefixed by the DVC experiment's name when there is one."""
    name = f"z{latent_dim}-{arch}-e{epochs}-seed{seed}"
    exp_name = os.environ.get("DVC_EXP_NAME")
    return f"{exp_name}: {name}" if exp_name else name


def configure(root: str | Path | None = None) -> str:
    """Point MLflow at the project's store and experiment; return the experiment id."""
    root = _resolve(root)
    own_store = "MLFLOW_TRACKING_URI" not in os.environ  # set_tracking_uri exports it
    mlflow.set_tracking_uri(tracking_uri(root))
    experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        experiment_id = experiment.experiment_id
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made by older code
            mlflow.MlflowClient().set_experiment_tag(
                experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
            )
    else:
        # With the default local store, keep artifacts beside it rather than in
        # whatever folder the first run happened to start from.
        location = (root / ARTIFACT_DIR).as_uri() if own_store else None
        experiment_id = mlflow.create_experiment(
            EXPERIMENT_NAME, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def log_dataset(images: Any, name: str, source_url: str, context: str) -> None:
    """Record ``images`` (an array or CPU tensor) as an input of the active run, with the
    sha256 of their bytes as digest: runs on the same images show the same digest."""
    array = np.ascontiguousarray(np.asarray(images))
    digest = hashlib.sha256(array.data).hexdigest()[:DIGEST_LENGTH]
    source = HTTPDatasetSource(source_url)
    dataset = mlflow.data.from_numpy(array, source=source, name=name, digest=digest)
    mlflow.log_input(dataset, context=context)


@dataclass(frozen=True)
class TrainingRun:
    """The MLflow run of a training as the loop sees it; ``run_id`` None (off rank 0 under
    torchrun) makes every call a no-op."""

    run_id: str | None

    def log_epoch(self, metrics: EpochMetrics) -> None:
        """Log one epoch's row. MLflow's client retries while the server is away (about 4
        minutes by default); a call that had to wait says so, since the training paused."""
        if self.run_id is not None:
            row = metrics.as_dict()
            epoch = row.pop("epoch")
            started = time.monotonic()
            mlflow.log_metrics(row, step=epoch)
            if (waited := time.monotonic() - started) > SLOW_CALL_SECONDS:
                print(f"train: epoch {epoch}'s metrics reached the MLflow server after "
                      f"{waited:.0f} s of retries (it did not answer)", flush=True)  # fmt: skip

    def log_missing_epochs(self, history: Sequence[Mapping[str, float]]) -> list[int]:
        """Log the rows of ``history`` (a resumed checkpoint's, ``EpochMetrics.as_dict``) that
        the run lacks, e.g. the epoch whose logging found the server down; return their
        epochs. A row the run has is never logged twice."""
        if self.run_id is None or not history:
            return []
        client = mlflow.MlflowClient()
        keys = [key for key in history[0] if key != "epoch"]
        history_of = lambda key: client.get_metric_history(self.run_id, key)  # noqa: E731
        logged = {key: {metric.step for metric in history_of(key)} for key in keys}
        missing = []
        for row in history:
            epoch = int(row["epoch"])
            if lacking := {key: row[key] for key in keys if epoch not in logged[key]}:
                mlflow.log_metrics(lacking, step=epoch)
                missing.append(epoch)
        return missing

    def log_outputs(self, weights: Path, history: Path, metrics: dict[str, float]) -> None:
        """The trained model's folder (``weights`` and the config beside it), the sha256 tag
        that later stages find the run by, the history table and the run's final ``metrics``."""
        if self.run_id is not None:
            mlflow.log_metrics(metrics)
            mlflow.set_tag(MODEL_SHA_TAG, file_sha256(weights))
            mlflow.log_artifacts(str(weights.parent), MODEL_FOLDER_ARTIFACT)
            mlflow.log_artifact(str(history), "metrics")


@contextmanager
def training_run(
    params: Params,
    used: Mapping[str, Any],
    *,
    data_checksum: str,
    datasets: Mapping[str, Any],
    source_url: str,
    resume_run_id: str | None,
    environment: Mapping[str, Any],
    enabled: bool = True,
) -> Iterator[TrainingRun]:
    """Open the run of a training: continue ``resume_run_id``, or start a new run named after
    the params and log the params, the values ``used`` (batch size, lr, device as run) and
    ``datasets`` (``{"training": images, "testing": images}``, whose files are those
    at ``source_url``, checksums verified), and tag it with the ``environment`` that decides its
    bits (``env.torch``, ``env.cpu_kernels``, ...; a resumed run gets the resuming one's).
    System metrics are sampled while it is open. ``enabled=False`` opens nothing."""
    if not enabled:
        yield TrainingRun(None)
        return
    configure()
    if resume_run_id is not None:
        run = mlflow.start_run(run_id=resume_run_id, log_system_metrics=True)
    else:
        name = run_name(params.latent_dim, params.model.arch, params.train.epochs, params.seed)
        run = mlflow.start_run(run_name=name, tags=run_tags(data_checksum), log_system_metrics=True)
    with run:
        try:
            tags = {ENVIRONMENT_TAG_PREFIX + k: str(v) for k, v in environment.items()}
            mlflow.set_tags(tags)
            if resume_run_id is None:
                mlflow.log_params({**params.flat(), **used})
                for context, images in datasets.items():
                    log_dataset(images, f"mnist-{context}", source_url, context)
            yield TrainingRun(run.info.run_id)
        except Exception as error:
            if tracking_unreachable_error(error) is not None:
                _leave_run_open()
            raise


def _leave_run_open() -> None:
    """End the active run in this process only: the server did not answer through MLflow's
    retries, so telling it FAILED would wait through them again. The run stays RUNNING there
    until the resumed training reopens it."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    before = {key: os.environ.get(key) for key in quick}
    os.environ.update(quick)
    try:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))  # pops the run, then asks once
    except MlflowException:
        pass
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def find_model_run(weights: str | Path) -> str | None:
    """Id of the newest run that trained the weights in ``weights`` (None when unknown)."""
    runs = mlflow.search_runs(
        filter_string=f"tags.`{MODEL_SHA_TAG}` = '{file_sha256(weights)}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


@contextmanager
def model_run(weights: str | Path, root: str | Path | None = None) -> Iterator[mlflow.ActiveRun]:
    """Re-open the run that trained ``weights``; start one tagged with them if the store lacks it
    (e.g. after ``dvc pull`` on another machine), so nothing is logged to an unrelated run."""
    configure(root)
    run_id = find_model_run(weights)
    if run_id is None:
        print(f"no MLflow run found for {weights}; starting a new one", flush=True)
        with mlflow.start_run(tags={MODEL_SHA_TAG: file_sha256(weights)}) as run:
            yield run
    else:
        with mlflow.start_run(run_id=run_id) as run:
            yield run


def _champion(client: mlflow.MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:  # no such model, or no champion yet
        return None


def promote_if_better(run_id: str, name: str = REGISTERED_MODEL) -> str:
    """Give the alias ``champion`` to the newest registered version trained by ``run_id`` when
    its importance-weighted NLL beats the current champion's (or there is none).

    The decision is returned and recorded as a tag on the run (and, when promoted, on the
    version); nothing happens to the registry when the run has no registered version.
    """
    client = mlflow.MlflowClient()
    ours = client.get_run(run_id).data.metrics.get(PROMOTION_METRIC)
    versions = [v for v in client.search_model_versions(f"run_id = '{run_id}'") if v.name == name]
    if not versions:
        decision = f"not promoted: no version of {name!r} was registered from this run"
    elif ours is None:
        decision = f"not promoted: the run has no {PROMOTION_METRIC}"
    else:
        version = max(versions, key=lambda v: int(v.version))
        champion = _champion(client, name)
        theirs = champion and client.get_run(champion.run_id).data.metrics.get(PROMOTION_METRIC)
        differ = champion and [
            f"{key}={client.get_run(champion.run_id).data.params.get(key)}"
            for key in COMPARABLE_PARAMS
            if client.get_run(champion.run_id).data.params.get(key)
            != client.get_run(run_id).data.params.get(key)
        ]
        if champion is not None and champion.version == version.version:
            decision = f"version {version.version} is already the champion"
        elif champion is not None and differ:
            decision = (
                f"not promoted: champion version {champion.version} was trained with "
                f"{', '.join(differ)}, so its {PROMOTION_METRIC} is not comparable (set the "
                f"alias by hand to switch)"
            )
        elif champion is not None and theirs is not None and ours >= theirs:
            decision = (
                f"not promoted: {PROMOTION_METRIC} {ours:.3f} does not beat champion "
                f"version {champion.version}'s {theirs:.3f}"
            )
        else:
            client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
            before = (
                "there was no champion" if champion is None
                else f"champion version {champion.version} had "
                + ("no score" if theirs is None else f"{theirs:.3f}")
            )  # fmt: skip
            decision = f"version {version.version} promoted to champion ({ours:.3f}; {before})"
            client.set_model_version_tag(name, version.version, PROMOTION_TAG, decision)
    client.set_tag(run_id, PROMOTION_TAG, decision)
    return decision


def champion_model_files(dest: str | Path, root: str | Path | None = None) -> Path | None:
    """Download the model folder of the registry's champion into ``dest``; None when there is
    no store, no registered model or no champion (nothing is created in that case)."""
    root = _resolve(root)
    if "MLFLOW_TRACKING_URI" not in os.environ and not (root / STORE_FILE).exists():
        return None
    mlflow.set_tracking_uri(tracking_uri(root))
    champion = _champion(mlflow.MlflowClient(), REGISTERED_MODEL)
    if champion is None:
        return None
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=champion.run_id, artifact_path=MODEL_FOLDER_ARTIFACT, dst_path=str(dest)
        )
    )
