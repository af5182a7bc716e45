"""The stage scripts fail fast, with one clear line, before touching any output.

The tests that launch a stage script as DVC does (a new Python process, a few seconds each)
are in the slow tier; the error handling every stage shares is tested in this process."""

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, PERMISSION_DENIED, UNAUTHENTICATED

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "generate", "compare"])
def test_bad_params_stop_the_stage_with_one_line(tmp_path, stage):
    (tmp_path / "params.yaml").write_text("latent_dim: 0\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{stage}.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"{stage}: error: params.yaml: latent_dim = 0 is not allowed; expected an integer >= 1"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.slow
def test_download_without_any_reachable_source_explains_mnist_mirror(tmp_path):
    # The official mirrors go through a proxy on a closed loopback port: never the internet.
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "download.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": "",
            "MNIST_MIRROR": str(tmp_path / "empty"),
            "http_proxy": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9",
        },
    )
    assert result.returncode == 1
    assert "download: error: could not obtain a verified copy" in result.stderr
    assert str(tmp_path / "empty") in result.stderr and "MNIST_MIRROR" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "mnist").exists()


def _train_on_tiny_data(tmp_path, tiny_mnist, params: str) -> subprocess.CompletedProcess:
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    for name, payload in tiny_mnist.items():  # 12 training images, 5 test images
        (tmp_path / "data" / "mnist" / name).write_bytes(payload)
    (tmp_path / "params.yaml").write_text(params)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / "train.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


@pytest.mark.slow
def test_a_batch_larger_than_the_data_stops_the_train_stage_before_any_work(tmp_path, tiny_mnist):
    result = _train_on_tiny_data(tmp_path, tiny_mnist, "train: {batch_size: 64}\n")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "train: error: params.yaml: train.batch_size = 64 is larger than the 12 training "
        "images; expected at most 12"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "mirror", "params.yaml"]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["mnist"]  # no model, no run


@pytest.mark.slow
def test_a_diverging_training_stops_with_where_and_marks_the_mlflow_run_failed(
    tmp_path, tiny_mnist
):
    result = _train_on_tiny_data(
        tmp_path,
        tiny_mnist,
        "train: {epochs: 2, batch_size: 4, lr: 1.0e+30, schedule: constant}\n"
        "model: {sampler_components: 2}\n",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"train: error: the training loss became (nan|inf|-inf) at epoch \d, batch \d of 3 "
        r"\(learning rate 1e\+30\); try a lower train\.lr, .*",
        last,
    ), last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "model").exists()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-vae").experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (UNAUTHENTICATED, "did not accept the credentials (HTTP 401)"),
        (PERMISSION_DENIED, "refused 'viewer' the request /api/2.0/mlflow/runs/create"),
    ],
)
def test_a_refusing_tracking_server_stops_a_stage_with_one_line(
    code, expected, capsys, monkeypatch
):
    from mnist_vae.stage import run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.org")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "viewer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    refused = mlflow.exceptions.MlflowException(
        "API request to endpoint /api/2.0/mlflow/runs/create failed with error code 4xx",
        error_code=code,
    )

    def main():
        raise refused

    with pytest.raises(SystemExit) as stopped:
        run(main, "generate")
    assert stopped.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("generate: error: http://mlflow.example.org ")
    assert expected in line
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in line
    assert "s3cret" not in line


def test_other_mlflow_errors_keep_their_traceback():
    from mnist_vae.stage import run

    def main():
        raise mlflow.exceptions.MlflowException("boom", error_code=INTERNAL_ERROR)

    with pytest.raises(mlflow.exceptions.MlflowException):
        run(main, "generate")
