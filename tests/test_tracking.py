"""MLflow helpers against a temporary SQLite store."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import time

import mlflow
import pytest

from mnist_vae.tracking import runs


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs.configure(tmp_path)
    yield tmp_path
    mlflow.set_tracking_uri(None)


def _evaluated_run(nll: float, register: bool = True, loss: str = "bce") -> str:
    with mlflow.start_run() as run:
        mlflow.log_params({"train.loss": loss, "data.binarize": "none"})
        mlflow.log_metric(runs.PROMOTION_METRIC, nll)
        mlflow.log_text("weights", f"{runs.MODEL_FOLDER_ARTIFACT}/model.pt")
    if register:
        client = mlflow.MlflowClient()
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # already there
            client.create_registered_model(runs.REGISTERED_MODEL)
        client.create_model_version(
            runs.REGISTERED_MODEL, f"{run.info.artifact_uri}/{runs.MODEL_FOLDER_ARTIFACT}",
            run_id=run.info.run_id,
        )  # fmt: skip
    return run.info.run_id


def _champion_run() -> str:
    client = mlflow.MlflowClient()
    return client.get_model_version_by_alias(runs.REGISTERED_MODEL, "champion").run_id


def test_default_store_is_an_absolute_sqlite_file_with_artifacts_beside_it(store):
    assert runs.tracking_uri(store) == f"sqlite:///{store.resolve() / 'mlflow.db'}"
    experiment = mlflow.get_experiment_by_name(runs.EXPERIMENT_NAME)
    assert experiment.artifact_location == (store.resolve() / "mlartifacts").as_uri()


def test_the_run_of_a_model_is_found_from_its_weights(store):
    weights = store / "model.pt"
    weights.write_bytes(b"some weights")
    with mlflow.start_run(tags={runs.MODEL_SHA_TAG: runs.file_sha256(weights)}) as run:
        pass
    assert runs.find_model_run(weights) == run.info.run_id
    with runs.model_run(weights, store) as reopened:
        assert reopened.info.run_id == run.info.run_id
    weights.write_bytes(b"other weights")
    assert runs.find_model_run(weights) is None
    with runs.model_run(weights, store) as fresh:  # unknown weights: a new, tagged run
        assert fresh.info.run_id != run.info.run_id
    assert runs.find_model_run(weights) == fresh.info.run_id


def test_promotion_follows_the_importance_weighted_nll(store):
    unregistered = _evaluated_run(90.0, register=False)
    assert runs.promote_if_better(unregistered).startswith("not promoted: no version")

    first = _evaluated_run(100.0)
    assert "promoted to champion" in runs.promote_if_better(first)
    assert _champion_run() == first
    assert "already the champion" in runs.promote_if_better(first)

    worse = _evaluated_run(101.0)
    assert runs.promote_if_better(worse).startswith("not promoted: eval.iwae_nll 101.000")
    assert _champion_run() == first

    better = _evaluated_run(99.5)
    decision = runs.promote_if_better(better)
    assert decision == "version 3 promoted to champion (99.500; champion version 1 had 100.000)"
    assert _champion_run() == better
    client = mlflow.MlflowClient()
    assert client.get_run(better).data.tags[runs.PROMOTION_TAG] == decision
    assert client.get_run(worse).data.tags[runs.PROMOTION_TAG].startswith("not promoted")


def test_scores_of_other_likelihoods_are_not_compared(store):
    first = _evaluated_run(93.0)
    runs.promote_if_better(first)
    eight_bit = _evaluated_run(688.0, loss="logistic_mixture")
    assert runs.promote_if_better(eight_bit) == (
        "not promoted: champion version 1 was trained with train.loss=bce, so its "
        "eval.iwae_nll is not comparable (set the alias by hand to switch)"
    )
    assert _champion_run() == first


def test_champion_model_files(store, tmp_path_factory):
    empty = tmp_path_factory.mktemp("no-store")
    assert runs.champion_model_files(empty / "dl", root=empty) is None
    assert list(empty.iterdir()) == []  # looking creates no store
    assert runs.champion_model_files(store / "dl", root=store) is None  # no champion yet
    run_id = _evaluated_run(95.0)
    runs.promote_if_better(run_id)
    folder = runs.champion_model_files(store / "dl", root=store)
    assert (folder / "model.pt").read_text() == "weights"


def test_the_experiment_opens_as_model_training_in_the_ui(store):
    experiment = mlflow.get_experiment_by_name(runs.EXPERIMENT_NAME)
    assert experiment.tags[runs.EXPERIMENT_KIND_TAG] == "custom_model_development"
    # an experiment made before the tag existed gets it on the next configure
    client = mlflow.MlflowClient()
    client.delete_experiment_tag(experiment.experiment_id, runs.EXPERIMENT_KIND_TAG)
    runs.configure(store)
    experiment = mlflow.get_experiment_by_name(runs.EXPERIMENT_NAME)
    assert experiment.tags[runs.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_training_run_records_params_as_used_datasets_and_system_metrics(store, monkeypatch):
    import numpy as np
    from mlflow.system_metrics import set_system_metrics_sampling_interval

    from mnist_vae.params import Params

    set_system_metrics_sampling_interval(0.5)
    monkeypatch.chdir(store)
    train = np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32)
    test = train[:2].copy()
    used = {"train.effective_batch_size": 512, "train.effective_lr": 0.006}
    with runs.training_run(
        Params(), used, data_checksum="abc", datasets={"training": train, "testing": test},
        source_url="https://example.org/mnist/", resume_run_id=None,
        environment={"torch": "2.14.1", "cpu_kernels": "avx2", "threads": 2},
    ) as run:  # fmt: skip
        time.sleep(2)  # a few samples of the system metrics
    set_system_metrics_sampling_interval(None)
    logged = mlflow.get_run(run.run_id)
    assert logged.data.params["train.lr"] == "0.003"
    assert logged.data.params["train.effective_lr"] == "0.006"
    assert logged.data.params["train.effective_batch_size"] == "512"
    assert logged.data.tags[runs.DATA_TAG] == "abc"
    assert logged.data.tags["env.cpu_kernels"] == "avx2"
    assert logged.data.tags["env.threads"] == "2"
    inputs = {
        d.tags[0].value: d.dataset for d in logged.inputs.dataset_inputs
    }  # context -> dataset
    assert set(inputs) == {"training", "testing"}
    assert inputs["training"].name == "mnist-training"
    assert inputs["training"].digest == hashlib.sha256(train.data).hexdigest()[:32]
    assert inputs["testing"].digest != inputs["training"].digest
    assert any(key.startswith("system/cpu_utilization") for key in logged.data.metrics)
    assert any(key.startswith("system/system_memory_usage") for key in logged.data.metrics)

    # continuing the run (a resumed training) logs nothing twice
    with runs.training_run(
        Params(), used, data_checksum="abc", datasets={"training": train, "testing": test},
        source_url="https://example.org/mnist/", resume_run_id=run.run_id,
        environment={"torch": "2.14.1", "cpu_kernels": "avx2", "threads": 1},
    ) as again:  # fmt: skip
        assert again.run_id == run.run_id
    assert len(mlflow.get_run(run.run_id).inputs.dataset_inputs) == 2
    assert mlflow.get_run(run.run_id).data.tags["env.threads"] == "1"  # the resuming process's


def test_an_interrupt_stays_an_interrupt_when_the_store_fails_to_end_the_run(
    store, monkeypatch, capsys
):  # fmt: skip
    """A SIGTERM inside a write to a busy SQLite store: the write fails, and so does ending
    the run as KILLED ("database is locked"). The run stays open for the resume, and the
    stage still sees the interrupt (exit 130, "interrupted"), not the store's error."""
    from mlflow.exceptions import MlflowException

    from mnist_vae.params import Params
    from mnist_vae.stage import run as run_stage

    def locked(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    opened = []

    def stage(body):
        def main():
            with monkeypatch.context() as patch, runs.training_run(
                Params(), {}, data_checksum="abc", datasets={}, source_url="",
                resume_run_id=None, environment={},
            ) as run:  # fmt: skip
                opened.append(run.run_id)
                patch.setattr(mlflow.MlflowClient, "set_terminated", locked)
                body()

        return lambda: run_stage(main, "train")

    def signal_inside_a_write():
        try:
            raise KeyboardInterrupt  # the signal, inside MLflow's write
        except KeyboardInterrupt:
            locked()

    with pytest.raises(SystemExit) as stopped:
        stage(signal_inside_a_write)()
    assert stopped.value.code == 130
    assert capsys.readouterr().err.endswith("\ntrain: interrupted\n")
    assert mlflow.get_run(opened[-1]).info.status == "RUNNING"  # resumed later, in this run
    with pytest.raises(MlflowException, match="locked"):  # other store errors stay errors
        stage(locked)()


def test_off_rank_zero_a_training_run_is_a_no_op(store):
    with runs.training_run(
        None, {}, data_checksum="", datasets={}, source_url="", resume_run_id=None, environment={},
        enabled=False,
    ) as run:  # fmt: skip
        assert run.run_id is None
        run.log_epoch(None)  # nothing to log, nothing raised
    assert mlflow.active_run() is None


def _history(epochs: range) -> list[dict[str, float]]:
    from mnist_vae.training.loop import EpochMetrics
    from mnist_vae.training.losses import LossParts

    parts = lambda e: LossParts(100.0 / e, 90.0 / e, 10.0 / e)  # noqa: E731
    return [EpochMetrics(e, parts(e), parts(e + 1)).as_dict() for e in epochs]


def test_a_resumed_run_gets_the_epochs_it_missed_and_none_twice(store):
    """The epoch whose logging found the server down is in the checkpoint's history: the
    resumed training logs it, and only it."""
    rows = _history(range(1, 4))
    with mlflow.start_run() as run:
        for row in rows[:1]:  # the server took epoch 1, then went away
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
    with mlflow.start_run(run_id=run.info.run_id):
        assert runs.TrainingRun(run.info.run_id).log_missing_epochs(rows) == [2, 3]
        assert runs.TrainingRun(run.info.run_id).log_missing_epochs(rows) == []
    client = mlflow.MlflowClient()
    for key in ("train_loss", "test_kl"):
        logged = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in logged] == [(r["epoch"], r[key]) for r in rows]


def test_a_server_that_stays_down_is_one_line_naming_it_and_the_retry_settings(monkeypatch):
    """MLflow's own exception after its retries, made from a refused connection."""
    from mnist_vae.errors import tracking_access_error, tracking_unreachable_error

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(url)
    try:
        with pytest.raises(mlflow.exceptions.MlflowException) as raised:
            mlflow.MlflowClient().get_experiment_by_name("mnist-vae")
        error = tracking_unreachable_error(raised.value)
    finally:
        mlflow.set_tracking_uri(None)
    assert tracking_access_error(raised.value) is None
    assert str(error).startswith(f"{url} did not answer through MLflow's retries (")
    assert "Connection refused" in str(error) and "\n" not in str(error)
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in str(error)
    assert tracking_unreachable_error(ValueError("not MLflow's")) is None


def test_an_interrupt_is_found_down_the_chain_and_a_looping_chain_ends():
    from mnist_vae.errors import interrupted

    surfaced = OSError("database is locked")
    surfaced.__context__ = RuntimeError("while writing")
    surfaced.__context__.__context__ = KeyboardInterrupt()
    assert interrupted(surfaced)
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first  # a loop: the walk still ends
    assert not interrupted(first)
