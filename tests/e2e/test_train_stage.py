"""The train stage as a process on a slice of MNIST.

An interrupted training resumes: kill the train stage mid-way (SIGINT, SIGTERM or SIGKILL),
run it again, and get the weights of a run that was never interrupted, in the same MLflow run.
Under torchrun with two processes (DDP over gloo on the loopback) it trains one model in one
MLflow run, as good as one process with the same effective batch, and resumes just as exactly.
Resumed on another thread count, it still ends with the same bits; native CPU kernels land
within the stated tolerance.
And `dvc repro` runs the stage under torchrun when dvc.yaml's command says so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import harness
import mlflow
import pytest
import torch
import yaml

from mnist_vae import CPU_KERNELS
from mnist_vae.environment import NATIVE_SWITCH, PINNED, PINNED_KERNELS, SET_BY_PIN
from mnist_vae.model.vae import load_model

ROOT = Path(__file__).resolve().parents[2]
PARAMS = {
    "data": {"train_limit": 3000, "test_limit": 500},
    # nats comparable to before; one epoch of the lossy decoder (the default's five are the
    # same loop five times) keeps it in every bit-identity check below at a fifth of the cost
    "train": {"epochs": 3, "batch_size": 64, "loss": "bce", "lossy_decoder_epochs": 1},
    # The training loop's behaviour (kills, resumes, threads, DDP) on the decoder its
    # tolerances were measured with; the default autoregressive one trains end to end in
    # test_pipeline (DDP included). Measured with it here: 2 processes 90.42 nats, 1 process
    # 93.02, outside this file's 2-nat DDP tolerance on 3,000 images and 3 epochs.
    "model": {"decoder": "factorized"},
}
CHECKPOINT = Path("data/checkpoints/train.pt")
TOLERANCE = 1e-3  # relative, on the test negative ELBO, across CPU kernels (docs: Reproducibility)

pytestmark = pytest.mark.slow


def _stage(name: str, cwd: Path, env: dict[str, str], processes: int = 1) -> subprocess.Popen:
    """``python stages/<name>.py``, or ``torchrun --standalone --nproc_per_node=N ...``."""
    launcher = [sys.executable]
    if processes > 1:
        launcher = [str(Path(sys.executable).with_name("torchrun")), "--standalone"]
        launcher.append(f"--nproc_per_node={processes}")
    return subprocess.Popen(
        [*launcher, str(ROOT / "stages" / f"{name}.py")],
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


def _only_run(folder: Path) -> tuple[mlflow.MlflowClient, mlflow.entities.Run]:
    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-vae").experiment_id])
    assert run.info.status == "FINISHED"
    return client, run


def _test_loss_history(folder: Path) -> dict[int, float]:
    client, run = _only_run(folder)
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_loss")}


def _interrupt_after_first_epoch(process: subprocess.Popen, folder: Path, sig: int) -> str:
    deadline = time.monotonic() + 300
    while not (folder / CHECKPOINT).exists():  # the first epoch is done and saved
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    assert (folder / CHECKPOINT).exists()
    assert not (folder / "data/model").exists()
    return output


def _environment(folder: Path) -> dict:
    return json.loads((folder / "data/metrics/environment.json").read_text())


def _train_json(folder: Path) -> dict:
    return json.loads((folder / "data/metrics/train.json").read_text())


def _same_weights(folder: Path, reference: Path) -> bool:
    ours = load_model(folder / "data/model").state_dict()
    theirs = load_model(reference / "data/model").state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.fixture(scope="module")
def uninterrupted(template, tmp_path_factory, env) -> Path:
    folder = _copy(template, tmp_path_factory.mktemp("reference"), "run")
    _finish(_stage("train", folder, env))
    return folder


def _killed_and_resumed(template: Path, tmp_path: Path, env: dict[str, str], sig: int) -> Path:
    """Train in a copy of ``template``, kill it with ``sig`` once the first epoch is saved,
    and train again to the end: the copy."""
    folder = _copy(template, tmp_path, "run")
    process = _stage("train", folder, env)
    output = _interrupt_after_first_epoch(process, folder, sig)
    assert process.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), output
    assert "resuming after epoch " in _finish(_stage("train", folder, env))
    assert not (folder / CHECKPOINT).exists()  # done: the next run starts afresh
    return folder


def _same_training(folder: Path, reference: Path) -> None:
    """The weights, the metrics and the one MLflow run's every-epoch test loss of
    ``reference``, bit for bit."""
    assert _same_weights(folder, reference)
    metrics = Path("data/metrics/train.json")
    assert (folder / metrics).read_bytes() == (reference / metrics).read_bytes()
    # one MLflow run, continued: every epoch's test loss, equal to the uninterrupted run's
    assert _test_loss_history(folder) == _test_loss_history(reference)


def test_a_training_stopped_like_ctrl_c_resumes_to_the_same_weights_in_the_same_run(
    template, uninterrupted, tmp_path, env
):
    """SIGTERM unwinds as Ctrl-C does (stage.py); Ctrl-C itself: under torchrun, below."""
    _same_training(_killed_and_resumed(template, tmp_path, env, signal.SIGTERM), uninterrupted)


def test_a_killed_training_resumed_on_another_thread_count_ends_bit_identical(
    template, uninterrupted, tmp_path, env
):
    """Killed (SIGKILL, no unwinding) after its first epoch and resumed, on another thread
    count from start to end: the uninterrupted run's bits. Two documented claims in one
    training (docs/reproducibility.md): a resume is exact, and with the CPU kernels pinned
    (the default) the thread count does not change a bit of the weights or metrics; only
    the environment record says it differs. (1 thread against the reference's several; 2
    against its 1 where it had one, as on one core or a core's share under xdist. The
    SIGTERM test above resumes on the reference's threads: if only this one fails, the
    threads changed the bits. On a CPU without AVX2 to pin, the threads stay the same.)"""
    reference = _environment(uninterrupted)["threads"]
    threads = reference if CPU_KERNELS != PINNED else 2 if reference == 1 else 1
    env = {**env, "OMP_NUM_THREADS": str(threads)}
    folder = _killed_and_resumed(template, tmp_path, env, signal.SIGKILL)
    _same_training(folder, uninterrupted)
    ours, theirs = _environment(folder), _environment(uninterrupted)
    assert {k: v for k, v in ours.items() if k != "threads"} == {
        k: v for k, v in theirs.items() if k != "threads"
    }
    _, run = _only_run(folder)
    assert ours["threads"] == threads and run.data.tags["env.threads"] == str(threads)
    assert run.data.tags["env.torch"] == torch.__version__
    if CPU_KERNELS == PINNED:
        assert threads != theirs["threads"] and ours["cpu_kernels"] == "avx2"


def test_two_processes_under_torchrun_train_one_model_like_one_process(
    template, uninterrupted, tmp_path, env
):
    """2 processes x batch 32 against 1 process x batch 64: the same effective batch."""
    folder = _copy(template, tmp_path, "ddp")
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["train"]["batch_size"] = PARAMS["train"]["batch_size"] // 2
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    output = _finish(_stage("train", folder, env, processes=2))
    assert "x 2 processes (gloo), effective batch 2 x 32" in output

    # one model, one run, one registered version: rank 1 wrote and logged nothing of its own
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in uninterrupted.iterdir()
    )
    assert sorted(p.name for p in (folder / "data/model").iterdir()) == [
        "config.json",
        "model.pt",
    ]
    assert not (folder / CHECKPOINT).exists()
    client, run = _only_run(folder)
    _, single_run = _only_run(uninterrupted)
    assert run.data.params["train.processes"] == "2"
    assert single_run.data.params["train.processes"] == "1"
    assert (
        run.data.params["train.effective_batch_size"]
        == single_run.data.params["train.effective_batch_size"]
        == "64"
    )
    assert [v.run_id for v in client.search_model_versions("name = 'mnist-vae'")] == [
        run.info.run_id
    ]
    assert sorted(_test_loss_history(folder)) == [1, 2, 3]  # every epoch, logged once

    ddp, single = (
        json.loads((f / "data/metrics/train.json").read_text()) for f in (folder, uninterrupted)
    )
    print(f"test -ELBO: 2 processes {ddp['test_loss']:.2f}, 1 process {single['test_loss']:.2f}")
    assert abs(ddp["test_loss"] - single["test_loss"]) < 2.0

    # interrupted (Ctrl-C reaches torchrun, which stops both workers) and resumed: bit-identical
    again = _copy(template, tmp_path, "ddp-resumed")
    (again / "params.yaml").write_text(yaml.safe_dump(params))
    _interrupt_after_first_epoch(_stage("train", again, env, processes=2), again, signal.SIGINT)
    assert "resuming after epoch " in _finish(_stage("train", again, env, processes=2))
    assert _same_weights(again, folder)
    assert _test_loss_history(again) == _test_loss_history(folder)


def test_native_kernels_land_within_the_stated_tolerance(template, uninterrupted, tmp_path, env):
    """Without the pin, and with ATen's kernels at another instruction set (here: scalar, as on
    a CPU with no vector units ATen knows), the test negative ELBO stays within the documented
    tolerance of the pinned run's: 0.1% (docs/reproducibility.md)."""
    folder = _copy(template, tmp_path, "native")
    inherited = (*PINNED_KERNELS, SET_BY_PIN)
    native = {k: v for k, v in env.items() if k not in inherited}
    native.update({NATIVE_SWITCH: "1", "ATEN_CPU_CAPABILITY": "default"})
    _finish(_stage("train", folder, native))
    record = _environment(folder)
    assert record["cpu_kernels"] == f"native ({NATIVE_SWITCH}=1)"
    assert record["cpu_capability"] == "DEFAULT"
    ours, theirs = _train_json(folder)["test_loss"], _train_json(uninterrupted)["test_loss"]
    print(f"test -ELBO: native scalar kernels {ours:.4f}, pinned {theirs:.4f}")
    assert abs(ours - theirs) <= TOLERANCE * abs(theirs)


def test_dvc_repro_trains_on_two_processes_with_the_torchrun_command(tmp_path, mnist_mirror):
    """The switch dvc.yaml's comment shows: the stage's command, recorded in dvc.lock."""
    project, env = harness.small_project(tmp_path, mnist_mirror)
    torchrun = "torchrun --standalone --nproc_per_node=2 stages/train.py"
    pipeline = (project / "dvc.yaml").read_text()
    assert f"#   cmd: {torchrun}" in pipeline  # the comment shows the exact command
    (project / "dvc.yaml").write_text(
        pipeline.replace("cmd: python stages/train.py", f"cmd: {torchrun}")
    )
    # training and a stage that logs to its run
    output = harness.sh("dvc", "repro", "generate", cwd=project, env=env)
    assert sorted(harness.stages_run(output)) == ["download", "generate", "train"]
    assert "x 2 processes (gloo), effective batch 2 x 128" in output
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["train"]["cmd"] == torchrun

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-vae").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.processes"] == "2"
    # the later stage found the run (by the weights' hash, which rank 0 tagged)
    assert "generated/grid.png" in {
        a.path for a in client.list_artifacts(run.info.run_id, "generated")
    }
    assert [v.run_id for v in client.search_model_versions("name = 'mnist-vae'")] == [
        run.info.run_id
    ]
    assert harness.stages_run(harness.sh("dvc", "repro", "generate", cwd=project, env=env)) == []
