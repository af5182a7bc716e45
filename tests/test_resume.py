"""An interrupted training resumes: kill the train stage mid-way (SIGINT, SIGTERM or SIGKILL),
run it again, and get the weights of a run that was never interrupted, in the same MLflow run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from mnist_vae.model import load_model

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {
    "data": {"train_limit": 6000, "test_limit": 500},
    "train": {"epochs": 3, "batch_size": 64},
}
CHECKPOINT = Path("data/checkpoints/train.pt")

pytestmark = pytest.mark.slow


def _stage(name: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "stages" / f"{name}.py")],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def env(mnist_mirror) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return {**clean, "MNIST_MIRROR": str(mnist_mirror)}


@pytest.fixture(scope="module")
def template(tmp_path_factory, env) -> Path:
    """A folder with params.yaml and the downloaded MNIST files, copied for every run."""
    folder = tmp_path_factory.mktemp("template")
    (folder / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    _finish(_stage("download", folder, env))
    return folder


def _copy(template: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(template, tmp_path / name))


def _test_loss_history(folder: Path) -> dict[int, float]:
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-vae").experiment_id])
    assert run.info.status == "FINISHED"
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_loss")}


@pytest.fixture(scope="module")
def uninterrupted(template, tmp_path_factory, env) -> Path:
    folder = _copy(template, tmp_path_factory.mktemp("reference"), "run")
    _finish(_stage("train", folder, env))
    return folder


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name
)
def test_a_killed_training_resumes_to_the_same_weights_in_the_same_run(
    template, uninterrupted, tmp_path, env, sig
):
    folder = _copy(template, tmp_path, "run")
    process = _stage("train", folder, env)
    deadline = time.monotonic() + 300
    while not (folder / CHECKPOINT).exists():  # the first epoch is done and saved
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), output
    assert (folder / CHECKPOINT).exists()
    assert not (folder / "data/model").exists()

    output = _finish(_stage("train", folder, env))
    assert "resuming after epoch " in output
    assert not (folder / CHECKPOINT).exists()  # done: the next run starts afresh

    resumed = load_model(folder / "data/model").state_dict()
    reference = load_model(uninterrupted / "data/model").state_dict()
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)  # bit-identical
    assert (folder / "data/metrics/train.json").read_bytes() == (
        uninterrupted / "data/metrics/train.json"
    ).read_bytes()
    # one MLflow run, continued: every epoch's test loss, equal to the uninterrupted run's
    assert _test_loss_history(folder) == _test_loss_history(uninterrupted)
