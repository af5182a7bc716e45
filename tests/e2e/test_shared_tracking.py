"""End to end against a shared MLflow server on PostgreSQL with basic-auth accounts (the
setup of docs/scaling-out.md, which .ci/run starts): the pipeline records to it as the
trainer, the viewer reads and is refused every write, a wrong password stops every stage
with one line, and no password leaks anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import harness
import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy
import torch

from mnist_vae.data import dataset_digest
from mnist_vae.model.vae import load_model
from mnist_vae.tracking import runs
from mnist_vae.tracking.runs import MODEL_SHA_TAG, file_sha256

TRACKING_SERVER_ENV = "MNIST_VAE_TRACKING_SERVER"  # a shared MLflow server (.ci/run starts one)
TRACKING_DB_ENV = "MNIST_VAE_TRACKING_DB"  # its PostgreSQL database, to look behind the API
# its accounts (basic-auth): a JSON file {username: {"role": trainer|viewer, "password": ...}}
TRACKING_ACCOUNTS_ENV = "MNIST_VAE_TRACKING_ACCOUNTS"
MLFLOW_STAGES = ["train", "generate", "compare", "evaluate", "compress", "rate_distortion"]  # log

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracking_server() -> str:
    """The shared MLflow server (on PostgreSQL) named by $MNIST_VAE_TRACKING_SERVER."""
    url = os.environ.get(TRACKING_SERVER_ENV)
    if not url:
        reason = (
            f"no shared MLflow server: set {TRACKING_SERVER_ENV} to one backed by PostgreSQL "
            f"(and {TRACKING_DB_ENV} to its database; .ci/run starts both)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI must exercise it, never skip it
        pytest.skip(reason)
    return url.rstrip("/")


@pytest.fixture(scope="module")
def accounts(tracking_server) -> dict[str, tuple[str, str]]:
    """``{"trainer": (username, password), "viewer": (...)}`` on the shared server."""
    path = os.environ.get(TRACKING_ACCOUNTS_ENV)
    if not path:
        reason = f"no accounts on the shared server: set {TRACKING_ACCOUNTS_ENV} (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    found = json.loads(Path(path).read_text())
    return {a["role"]: (name, a["password"]) for name, a in found.items()}


@pytest.fixture(scope="module")
def shared_run(tracking_server, accounts, tmp_path_factory, mnist_mirror):
    """The small-slice `dvc repro` as the trainer against the shared server:
    ``(project, env, output)`` with the trainer's credentials in ``env``."""
    project, env = harness.small_project(tmp_path_factory.mktemp("shared"), mnist_mirror)
    username, password = accounts["trainer"]
    env = {**env, "MLFLOW_TRACKING_URI": tracking_server,
           "MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}  # fmt: skip
    # what the server sees of a run: training, its pictures, its evaluation and promotion
    output = harness.sh("dvc", "repro", "evaluate", "generate", "compare", cwd=project, env=env)
    return project, env, output


def _shared_run_id(tracking_server: str, project: Path, env: dict[str, str], auth) -> str:
    """The run of the shared project, found by the weights it trained and the commit
    (a shared server may hold earlier runs of the same weights)."""
    api = f"{tracking_server}/api/2.0/mlflow"
    experiment = harness.get(f"{api}/experiments/get-by-name?experiment_name=mnist-vae", auth)
    commit = harness.sh("git", "rev-parse", "HEAD", cwd=project, env=env).strip()
    weights = project / "data/model/model.pt"
    status, found = harness.post(f"{api}/runs/search", {
        "experiment_ids": [experiment["experiment"]["experiment_id"]],
        "filter": f"tags.`{MODEL_SHA_TAG}` = '{file_sha256(weights)}' "
                  f"and tags.`{runs.GIT_COMMIT_TAG}` = '{commit}'",
    }, auth)  # fmt: skip
    assert status == 200 and len(found["runs"]) == 1, found
    return found["runs"][0]["info"]["run_id"]


def test_the_pipeline_records_to_a_shared_server_on_postgresql(
    tracking_server, shared_run, accounts, tmp_path
):
    """The trainer's run, read back by the viewer (REST) and served with the viewer's
    credentials."""
    project, env, _ = shared_run
    viewer = accounts["viewer"]
    # the server holds the run and its files: nothing of MLflow's is written in the project
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()

    # The run, found through the REST API by the weights it trained and this copy's commit
    # (a shared server may hold earlier runs of the same weights)
    api = f"{tracking_server}/api/2.0/mlflow"
    experiment = harness.get(f"{api}/experiments/get-by-name?experiment_name=mnist-vae", viewer)
    experiment = experiment["experiment"]
    assert experiment["artifact_location"].startswith("mlflow-artifacts:")  # the server's store
    weights = project / "data/model/model.pt"
    commit = harness.sh("git", "rev-parse", "HEAD", cwd=project, env=env).strip()
    status, found = harness.post(f"{api}/runs/search", {
        "experiment_ids": [experiment["experiment_id"]],
        "filter": f"tags.`{MODEL_SHA_TAG}` = '{file_sha256(weights)}' "
                  f"and tags.`{runs.GIT_COMMIT_TAG}` = '{commit}'",
    }, viewer)  # fmt: skip
    assert status == 200 and len(found["runs"]) == 1, found
    run = found["runs"][0]
    run_id = run["info"]["run_id"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert (params["latent_dim"], params["train.epochs"], params["train.processes"]) == (
        "10", "1", "1"
    )  # fmt: skip
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags[runs.DATA_TAG] == dataset_digest(project / "data/mnist")

    # its metrics: every epoch's test loss, and the evaluate stage's
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    results = json.loads((project / "data/metrics/evaluate.json").read_text())
    assert metrics["eval.iwae_nll"] == pytest.approx(results["iwae_nll"])
    history = harness.get(f"{api}/metrics/get-history?run_id={run_id}&metric_key=test_loss", viewer)
    history = history["metrics"]
    train = json.loads((project / "data/metrics/train.json").read_text())
    assert [(m["step"], m["value"]) for m in history] == [(1, pytest.approx(train["test_loss"]))]

    # its artifacts, listed and downloaded through the server
    listed = harness.get(f"{api}/artifacts/list?run_id={run_id}&path=model_files", viewer)
    assert {"model_files/model.pt", "model_files/config.json"} <= {
        f["path"] for f in listed["files"]
    }
    root = run["info"]["artifact_uri"].removeprefix("mlflow-artifacts:/")
    with urllib.request.urlopen(
        urllib.request.Request(
            f"{tracking_server}/api/2.0/mlflow-artifacts/artifacts/{root}/model_files/model.pt",
            headers=harness.auth_headers(viewer),
        ),
        timeout=60,
    ) as answer:
        assert hashlib.sha256(answer.read()).hexdigest() == file_sha256(weights)
    for image in ("generated/grid.png", "comparison/grid.png"):
        folder = image.split("/")[0]
        listed = harness.get(f"{api}/artifacts/list?run_id={run_id}&path={folder}", viewer)
        assert image in {f["path"] for f in listed["files"]}

    # the registered version it made
    versions = harness.get(
        f"{api}/model-versions/search?filter=" + urllib.parse.quote(f"run_id = '{run_id}'"), viewer
    )["model_versions"]
    assert [(v["name"], v["status"]) for v in versions] == [("mnist-vae", "READY")]
    version = versions[0]["version"]
    assert runs.PROMOTION_TAG in tags  # the evaluate stage weighed it for champion

    # ... which PostgreSQL holds: the server's database has the run
    if database := os.environ.get(TRACKING_DB_ENV):
        engine = sqlalchemy.create_engine(database)
        with engine.connect() as connection:
            row = connection.execute(
                sqlalchemy.text("SELECT status FROM runs WHERE run_uuid = :id"), {"id": run_id}
            ).one()
        engine.dispose()
        assert row.status == "FINISHED"
    elif os.environ.get("CI"):
        pytest.fail(f"{TRACKING_DB_ENV} is not set: cannot check the run is in PostgreSQL")

    # served from the server's registry with the viewer's credentials, from an empty folder:
    # it decodes like the local weights
    env = {**env, "MLFLOW_TRACKING_USERNAME": viewer[0], "MLFLOW_TRACKING_PASSWORD": viewer[1]}
    port = harness.free_port()
    served = tmp_path / "served"
    served.mkdir()
    with harness.server(
        ["mlflow", "models", "serve", "-m", f"models:/mnist-vae/{version}",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}/ping", cwd=served, env=env,
    ):  # fmt: skip
        z = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
        status, body = harness.post(f"http://127.0.0.1:{port}/invocations", {"inputs": z.tolist()})
    assert status == 200, body
    with torch.no_grad():
        expected = load_model(project / "data/model").mean_image(z).squeeze(1)
    assert np.allclose(np.array(body["predictions"]), expected.numpy(), atol=1e-5)


def test_without_credentials_401_the_viewer_reads_and_gets_403_on_every_write(
    tracking_server, shared_run, accounts, monkeypatch
):
    """The permission matrix through the REST API (printed), then the same through MLflow's
    Python client."""
    project, env, _ = shared_run
    viewer, trainer = accounts["viewer"], accounts["trainer"]
    api = f"{tracking_server}/api/2.0/mlflow"
    run_id = _shared_run_id(tracking_server, project, env, viewer)
    run = harness.get(f"{api}/runs/get?run_id={run_id}", viewer)["run"]
    experiment_id = run["info"]["experiment_id"]
    version = harness.get(f"{api}/registered-models/alias?name=mnist-vae&alias=champion", viewer)
    version = version["model_version"]["version"]
    quoted = urllib.parse.quote(f"run_id = '{run_id}'")
    reads = {
        "read runs": (f"{api}/runs/search", {"experiment_ids": [experiment_id]}),
        "read metrics": (f"{api}/metrics/get-history?run_id={run_id}&metric_key=test_loss", None),
        "read artifacts": (f"{api}/artifacts/list?run_id={run_id}&path=model_files", None),
        "read model versions": (f"{api}/model-versions/search?filter={quoted}", None),
    }
    writes = {
        "create a run": (f"{api}/runs/create", {"experiment_id": experiment_id}),
        "log a metric": (f"{api}/runs/log-metric",
                         {"run_id": run_id, "key": "x", "value": 1, "timestamp": 0, "step": 0}),
        "register a version": (f"{api}/model-versions/create",
                               {"name": "mnist-vae", "source": f"runs:/{run_id}/model",
                                "run_id": run_id}),
        "delete the run": (f"{api}/runs/delete", {"run_id": run_id}),
        "set the champion alias": (f"{api}/registered-models/alias",
                                   {"name": "mnist-vae", "alias": "champion",
                                    "version": version}),
    }  # fmt: skip
    matrix = {
        action: {
            "no credentials": harness.status(url, payload, None),
            "wrong password": harness.status(url, payload, (viewer[0], "not-the-password")),
            "viewer": harness.status(url, payload, viewer),
        }
        for action, (url, payload) in {**reads, **writes}.items()
    }
    for action in reads:  # the trainer reads too (its writes: the pipeline run above)
        matrix[action]["trainer"] = harness.status(*reads[action], trainer)
    shown = {action: {who: str(code) for who, code in r.items()} for action, r in matrix.items()}
    print("\n" + pd.DataFrame(shown).T.fillna("").to_string())
    assert all(row["no credentials"] == 401 for row in matrix.values())
    assert all(row["wrong password"] == 401 for row in matrix.values())
    assert all(matrix[action]["viewer"] == 200 for action in reads)
    assert all(matrix[action]["trainer"] == 200 for action in reads)
    assert all(matrix[action]["viewer"] == 403 for action in writes)
    # nothing the viewer tried happened
    run = harness.get(f"{api}/runs/get?run_id={run_id}", viewer)["run"]
    assert run["info"]["lifecycle_stage"] == "active" and "x" not in {
        m["key"] for m in run["data"]["metrics"]
    }
    now = harness.get(f"{api}/registered-models/alias?name=mnist-vae&alias=champion", viewer)
    assert now["model_version"]["version"] == version

    # the Python client, as the tracking code uses it: 403 for the viewer, 401 for no one
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", viewer[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", viewer[1])
    client = mlflow.MlflowClient(tracking_server)
    assert client.get_run(run_id).info.run_id == run_id
    assert client.get_model_version_by_alias("mnist-vae", "champion").version == version
    for write in (
        lambda: client.create_run(experiment_id),
        lambda: client.set_registered_model_alias("mnist-vae", "champion", version),
        lambda: client.delete_run(run_id),
    ):
        with pytest.raises(mlflow.exceptions.MlflowException) as refused:
            write()
        assert refused.value.get_http_status_code() == 403
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with pytest.raises(mlflow.exceptions.MlflowException) as refused:
        mlflow.MlflowClient(tracking_server).get_run(run_id)
    assert refused.value.get_http_status_code() == 401


def _data_snapshot(project: Path) -> dict[str, tuple[str, int]]:
    """Every file under data/ with its hash and modification time."""
    return {
        str(path.relative_to(project)): (file_sha256(path), path.stat().st_mtime_ns)
        for path in sorted((project / "data").rglob("*"))
        if path.is_file()
    }


def _refused_stage(stage: str, project: Path, env: dict[str, str], status: int) -> str:
    """Run one stage that the server refuses: its one error line, after checking it is the
    only one, says ``(HTTP status)`` and names the variables, with no traceback."""
    done = subprocess.run([sys.executable, f"stages/{stage}.py"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.startswith(f"{stage}: error")]
    print(errors[0] if errors else done.stderr)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len(errors) == 1 and f"(HTTP {status})" in errors[0], done.stderr
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in errors[0]
    assert env["MLFLOW_TRACKING_PASSWORD"] not in done.stderr + done.stdout
    return errors[0]


def test_a_wrong_password_stops_every_stage_with_one_line_and_writes_nothing(shared_run, accounts):
    project, env, _ = shared_run
    before = _data_snapshot(project)
    for stage in MLFLOW_STAGES:
        _refused_stage(stage, project, {**env, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}, 401)
        assert _data_snapshot(project) == before, f"{stage} wrote outputs"
    # the viewer may not train: refused at the run's creation, before any epoch
    viewer = accounts["viewer"]
    as_viewer = {**env, "MLFLOW_TRACKING_USERNAME": viewer[0]}
    as_viewer["MLFLOW_TRACKING_PASSWORD"] = viewer[1]
    assert repr(viewer[0]) in _refused_stage("train", project, as_viewer, 403)
    assert _data_snapshot(project) == before


def test_credentials_appear_nowhere_they_could_leak(tracking_server, shared_run, accounts):
    """Not in the run's params or tags, dvc.lock, params.yaml, the outputs or what the
    stages printed."""
    project, env, output = shared_run
    secrets = [password for _, password in accounts.values()]
    viewer = accounts["viewer"]
    run = harness.get(
        f"{tracking_server}/api/2.0/mlflow/runs/get?run_id="
        + _shared_run_id(tracking_server, project, env, viewer),
        viewer,
    )["run"]
    recorded = json.dumps([run["data"].get("params", []), run["data"].get("tags", [])])
    texts = {"the run's params and tags": recorded, "the stages' output": output}
    for name in ("dvc.lock", "params.yaml", *[
        str(p.relative_to(project)) for p in (project / "data/metrics").rglob("*") if p.is_file()
    ]):  # fmt: skip
        texts[name] = (project / name).read_bytes().decode("latin-1")  # PNGs too
    for where, text in texts.items():
        assert not [secret for secret in secrets if secret in text], f"a password in {where}"
    assert "MLFLOW_TRACKING_PASSWORD" not in recorded
