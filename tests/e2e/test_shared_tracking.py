"""End to end against a shared MLflow server on PostgreSQL with basic-auth accounts (the
setup of docs/scaling-out.md, which .ci/run starts): the pipeline records to it as the
trainer, the viewer reads and is refused every write, a wrong password stops every stage
with one line, and no password leaks anywhere. Then the server, or its database, goes away
under a training and comes back.

The tests that take PostgreSQL down live here, in the one module that uses the shared
server: under ``--dist loadfile`` no other test talks to it meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
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
PG_CTL_ENV = "MNIST_VAE_TRACKING_PG_CTL"  # pg_ctl on its PostgreSQL cluster, to restart it
MLFLOW_STAGES = ["train", "generate", "compare", "evaluate", "compress", "rate_distortion"]  # log

pytestmark = pytest.mark.slow


def _setting(name: str, missing: str) -> str:
    """The environment variable ``name`` that .ci/run sets; without it the test is skipped,
    or fails under CI, which must exercise it."""
    value = os.environ.get(name)
    if not value:
        reason = missing if name in missing else f"{missing}: set {name} (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return value


@pytest.fixture(scope="module")
def tracking_server() -> str:
    """The shared MLflow server (on PostgreSQL) named by $MNIST_VAE_TRACKING_SERVER."""
    url = _setting(
        TRACKING_SERVER_ENV,
        f"no shared MLflow server: set {TRACKING_SERVER_ENV} to one backed by PostgreSQL "
        f"(and {TRACKING_DB_ENV} to its database; .ci/run starts both)",
    )
    return url.rstrip("/")


@pytest.fixture(scope="module")
def accounts(tracking_server) -> dict[str, tuple[str, str]]:
    """``{"trainer": (username, password), "viewer": (...)}`` on the shared server."""
    path = _setting(TRACKING_ACCOUNTS_ENV, "no accounts on the shared server")
    found = json.loads(Path(path).read_text())
    return {a["role"]: (name, a["password"]) for name, a in found.items()}


def _as(account: tuple[str, str], server: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` recording to ``server`` as ``account`` (username, password)."""
    username, password = account
    return {**env, "MLFLOW_TRACKING_URI": server,
            "MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}  # fmt: skip


@pytest.fixture(scope="module")
def shared_run(tracking_server, accounts, tmp_path_factory, mnist_mirror):
    """The small-slice `dvc repro` as the trainer against the shared server:
    ``(project, env, output)`` with the trainer's credentials in ``env``."""
    project, env = harness.small_project(tmp_path_factory.mktemp("shared"), mnist_mirror)
    env = _as(accounts["trainer"], tracking_server, env)
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
    as_viewer = _as(viewer, env["MLFLOW_TRACKING_URI"], env)
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


# -- The tracking server taken away under a training ------------------------------------
# A training against a server that goes away keeps going: MLflow's client retries every
# call, waiting 0, 4, 8, 16, ... s between tries (MLFLOW_HTTP_REQUEST_MAX_RETRIES = 7,
# _BACKOFF_FACTOR = 2 by default: about 4 minutes), so an outage shorter than that costs
# the training only the wait. A longer one stops the stage with one line; the checkpoint
# holds the epoch the server missed, and the next `dvc repro` resumes into the same run and
# logs it there.

FAULT_EPOCHS = 4
FAULT_SLICE = {  # 2 s an epoch, and nothing fitted after the epochs
    "data": {"train_limit": 2048},
    "model": {"sampler_components": 0},
    "train": {"epochs": FAULT_EPOCHS, "lossy_decoder_epochs": 0},
}
OUTAGE_SECONDS = 5
EPOCH_KEYS = [f"{split}_{part}" for split in ("train", "test") for part in ("loss", "recon", "kl")]


@pytest.fixture(scope="module")
def tracking_db(tracking_server) -> str:
    """The shared server's PostgreSQL database, as a SQLAlchemy URI."""
    return _setting(TRACKING_DB_ENV, "no database of the shared server")


@pytest.fixture(scope="module")
def fault_template(tmp_path_factory, mnist_mirror) -> tuple[Path, dict[str, str]]:
    """A small project, MNIST downloaded, whose training lasts a few epochs of 2 s."""
    project, env = harness.small_project(tmp_path_factory.mktemp("faults"), mnist_mirror)
    harness.edit_params(project, FAULT_SLICE)
    harness.sh("git", "commit", "-qam", "a few epochs", cwd=project, env=env)
    harness.sh("dvc", "repro", "download", cwd=project, env=env)
    return project, env


def _fault_project(fault_template, folder: Path, name: str) -> tuple[Path, dict[str, str]]:
    """A copy of the template with a commit of its own, by which the test finds its runs."""
    template, env = fault_template
    project = shutil.copytree(template, folder / "project", symlinks=True)
    harness.sh("git", "commit", "-q", "--allow-empty", "-m", name, cwd=project, env=env)
    return project, env


def _second_server(tracking_db: str, folder: Path) -> tuple[list[str], str]:
    """The command of another MLflow server on the shared server's database (one whose
    process this test may kill without disturbing the others), and its URL."""
    port = harness.free_port()
    command = ["mlflow", "server", "--backend-store-uri", tracking_db,
               "--artifacts-destination", str(folder / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    return command, f"http://127.0.0.1:{port}"


def _recorded_epochs(server: str, project: Path, env: dict[str, str], auth) -> dict[str, list]:
    """``{run id: [(epoch, ...) per logged train_loss step]}`` of the project's training runs
    (found by its commit), with every epoch metric's steps checked to agree."""
    api = f"{server}/api/2.0/mlflow"
    experiment = harness.get(f"{api}/experiments/get-by-name?experiment_name=mnist-vae", auth)
    commit = harness.sh("git", "rev-parse", "HEAD", cwd=project, env=env).strip()
    status, found = harness.post(f"{api}/runs/search", {
        "experiment_ids": [experiment["experiment"]["experiment_id"]],
        "filter": f"tags.`{runs.GIT_COMMIT_TAG}` = '{commit}'",
    }, auth)  # fmt: skip
    assert status == 200, found
    epochs = {}
    for run in found.get("runs", []):
        run_id = run["info"]["run_id"]
        steps = {
            key: sorted(m["step"] for m in harness.get(
                f"{api}/metrics/get-history?run_id={run_id}&metric_key={key}", auth)["metrics"])
            for key in EPOCH_KEYS
        }  # fmt: skip
        assert all(s == steps["train_loss"] for s in steps.values()), steps
        epochs[run_id] = steps["train_loss"]
    return epochs


def _train_through(outage, project: Path, env: dict[str, str]) -> tuple[int, str]:
    """`dvc repro train`, calling ``outage()`` once the first epoch has ended."""
    training = harness.Watched(["dvc", "repro", "train"], project, env)
    training.wait_for(rf"epoch 1/{FAULT_EPOCHS}: train")
    outage()
    return training.finish()


def _retried(output: str) -> bool:
    """The training says so when an epoch's metrics had to wait for the server."""
    waited = re.findall(r".*metrics reached the MLflow server after \d+ s of retries.*", output)
    print(*waited, sep="\n")
    return bool(waited)


def test_a_training_waits_through_a_restart_of_the_mlflow_server(
    tracking_db, tmp_path, fault_template
):
    """The server is killed (SIGKILL, like a crash) after epoch 1 and started again 5 s
    later: the training waits in MLflow's retries and ends with every epoch once in its
    one run."""
    project, env = _fault_project(fault_template, tmp_path, "the server restarted")
    command, url = _second_server(tracking_db, tmp_path)
    env = {**env, "MLFLOW_TRACKING_URI": url}
    with harness.server(command, f"{url}/health", tmp_path, env) as first:

        def crash_and_restart():
            harness.kill_group(first)
            time.sleep(OUTAGE_SECONDS)
            stack.enter_context(harness.server(command, f"{url}/health", tmp_path, env))

        with contextlib.ExitStack() as stack:
            status, output = _train_through(crash_and_restart, project, env)
            epochs = _recorded_epochs(url, project, env, None)
    print("runs and their epochs after the restart:", epochs)
    assert status == 0, output
    assert _retried(output), "the training never met the outage"
    assert list(epochs.values()) == [list(range(1, FAULT_EPOCHS + 1))], epochs


def test_a_training_waits_through_a_restart_of_postgresql(
    tracking_server, accounts, tmp_path, fault_template
):
    """The shared server's PostgreSQL is stopped after epoch 1 and started 5 s later (the
    server answers HTTP 500 meanwhile): the training ends with every epoch once in its run."""
    pg_ctl = _setting(PG_CTL_ENV, "no pg_ctl for the shared server's PostgreSQL")
    project, env = _fault_project(fault_template, tmp_path, "PostgreSQL restarted")
    env = _as(accounts["trainer"], tracking_server, env)

    def restart_postgresql():
        subprocess.run([*shlex.split(pg_ctl), "-m", "fast", "-w", "stop"], check=True, timeout=60)
        try:
            time.sleep(OUTAGE_SECONDS)
        finally:
            subprocess.run([*shlex.split(pg_ctl), "-w", "start"], check=True, timeout=60)

    status, output = _train_through(restart_postgresql, project, env)
    epochs = _recorded_epochs(tracking_server, project, env, accounts["viewer"])
    print("runs and their epochs after the restart:", epochs)
    assert status == 0, output
    assert _retried(output), "the training never met the outage"
    assert list(epochs.values()) == [list(range(1, FAULT_EPOCHS + 1))], epochs


def test_an_outage_past_the_retries_stops_with_one_line_and_the_next_repro_resumes(
    tracking_db, tmp_path, fault_template
):
    """With MLflow's retries cut to about 3 s, a server down for longer stops the training
    with one line and its checkpoint kept; once the server is back, `dvc repro` resumes into
    the same run, logs the epoch the server missed, and no epoch twice."""
    project, env = _fault_project(fault_template, tmp_path, "an outage past the retries")
    command, url = _second_server(tracking_db, tmp_path)
    env = {**env, "MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
    env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    with harness.server(command, f"{url}/health", tmp_path, env) as first:
        status, output = _train_through(lambda: harness.kill_group(first), project, env)
    errors = [line for line in output.splitlines() if line.startswith("train: error:")]
    print(errors)
    assert status != 0 and "Traceback" not in output, output
    assert len(errors) == 1 and url in errors[0] and "resumes" in errors[0], output
    assert (project / "data/checkpoints/train.pt").is_file()

    with harness.server(command, f"{url}/health", tmp_path, env):
        output = harness.sh("dvc", "repro", "train", cwd=project, env=env)
        epochs = _recorded_epochs(url, project, env, None)
    print("runs and their epochs after the resume:", epochs)
    resumed = re.findall(r".*(?:resuming after epoch|that the MLflow server missed).*", output)
    print(*resumed, sep="\n")
    assert re.search(r"resuming after epoch \d", output), output
    assert "that the MLflow server missed" in output, output
    assert list(epochs.values()) == [list(range(1, FAULT_EPOCHS + 1))], epochs
    assert not (project / "data/checkpoints/train.pt").exists()
