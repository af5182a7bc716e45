"""End to end: the real `dvc repro` and `dvc exp run` on a small slice of MNIST.

The project is copied (as Git would check it out) into a fresh Git repository
under a temporary folder, so these tests never touch the working copy's data,
lock file or MLflow store.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from mnist_vae import tracking
from mnist_vae.model import load_model
from mnist_vae.tracking import MODEL_SHA_TAG, file_sha256

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "data": {"train_limit": 512, "test_limit": 256},
    "train": {"epochs": 1},
    "generate": {"n_samples": 6},
    "compare": {"n_images": 5},
    "classifier": {"train_limit": 1000, "epochs": 1},
    "evaluate": {"iw_samples": 4, "fid_samples": 100, "interpolations": 3},
}
STAGES = {"download", "train", "generate", "compare", "classifier", "evaluate"}

pytestmark = pytest.mark.slow


def _sh(*args: str, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output}"
    return output


def _edit_params(project: Path, changes: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            params[key].update(value)
        else:
            params[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_mirror):
    """A fresh Git clone-alike of the project with small-slice params, after one `dvc repro`."""
    project = tmp_path_factory.mktemp("e2e") / "project"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    _edit_params(project, SMALL)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        MNIST_MIRROR=str(mnist_mirror),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@localhost",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@localhost",
    )
    git = ("git", "-c", "init.defaultBranch=main")
    _sh(*git, "init", "-q", cwd=project, env=env)
    _sh(*git, "add", "-A", cwd=project, env=env)
    _sh(*git, "commit", "-qm", "small-slice copy", cwd=project, env=env)
    output = _sh("dvc", "repro", cwd=project, env=env)
    return project, env, output


def test_repro_runs_every_stage_and_writes_every_output(project):
    project, _, output = project
    assert sorted(_stages_run(output)) == sorted(STAGES)

    model = load_model(project / "data/model")
    assert model.config.latent_dim == 10
    metrics = json.loads((project / "data/metrics/train.json").read_text())
    assert metrics["epoch"] == 1
    assert 50 < metrics["test_loss"] < 600
    assert metrics["test_loss"] == pytest.approx(metrics["test_recon"] + metrics["test_kl"])
    history = pd.read_csv(project / "data/metrics/train_history.csv")
    assert list(history["epoch"]) == [1]
    assert {"train_loss", "test_loss", "train_kl", "test_recon"} <= set(history.columns)

    samples = sorted((project / "data/generated/samples").glob("*.png"))
    assert len(samples) == SMALL["generate"]["n_samples"]
    pairs = sorted((project / "data/comparison/pairs").glob("*.png"))
    assert len(pairs) == SMALL["compare"]["n_images"]
    with Image.open(pairs[0]) as pair:
        assert pair.size == (56, 28)
    for grid in ("data/generated/grid.png", "data/comparison/grid.png"):
        with Image.open(project / grid) as image:
            assert image.size[0] > 28 and image.size[1] > 28

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == STAGES
    assert lock["stages"]["train"]["params"]["params.yaml"]["latent_dim"] == 10


def test_the_run_is_recorded_in_mlflow(project):
    project, _, _ = project
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("mnist-vae").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["latent_dim"] == "10"
    assert run.data.params["train.epochs"] == "1"
    assert run.data.tags[MODEL_SHA_TAG] == file_sha256(project / "data/model/model.pt")
    history = client.get_metric_history(run.info.run_id, "test_loss")
    assert [(m.step, m.value) for m in history] == [
        (1, json.loads((project / "data/metrics/train.json").read_text())["test_loss"])
    ]
    artifacts = {
        a.path
        for folder in ("model_files", "generated", "comparison")
        for a in client.list_artifacts(run.info.run_id, folder)
    }
    assert {
        "model_files/model.pt",
        "model_files/config.json",
        "generated/grid.png",
        "comparison/grid.png",
    } <= artifacts
    assert (project / "mlartifacts").is_dir()  # artifacts live beside the store


def test_evaluate_reports_every_metric(project):
    project, _, _ = project
    results = json.loads((project / "data/metrics/evaluate.json").read_text())
    assert set(results) == {
        "loss", "recon", "kl", "iwae_nll", "mse", "psnr", "ssim", "active_units",
        "frechet_distance", "sample_label_entropy", "sample_min_digit_fraction",
    }  # fmt: skip
    assert results["iwae_nll"] <= results["loss"] + 1.0
    assert 0 <= results["active_units"] <= 10
    assert 0 <= results["sample_label_entropy"] <= math.log(10) + 1e-9
    assert results["frechet_distance"] >= 0
    assert (
        0
        <= json.loads((project / "data/metrics/classifier.json").read_text())["test_accuracy"]
        <= 1
    )

    per_class = pd.read_csv(project / "data/metrics/per_class.csv")
    assert list(per_class["digit"]) == list(range(10))
    assert per_class["images"].sum() == SMALL["data"]["test_limit"]
    assert len(pd.read_csv(project / "data/metrics/latent_kl.csv")) == 10
    assert pd.read_csv(project / "data/metrics/sample_labels.csv")[
        "fraction"
    ].sum() == pytest.approx(1)
    for picture, size in {
        "traversal.png": (9 * 30 + 2, 10 * 30 + 2),
        "interpolation.png": (10 * 30 + 2, 3 * 30 + 2),
        "latent_map.png": (600, 600),
    }.items():
        with Image.open(project / "data/evaluation" / picture) as image:
            assert image.size == size, picture

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-vae").experiment_id])
    assert run.data.metrics["eval.iwae_nll"] == pytest.approx(results["iwae_nll"])
    assert run.data.tags["mnist_vae.promotion"].startswith("not promoted: no version")
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} == {
        "evaluation/traversal.png", "evaluation/interpolation.png", "evaluation/latent_map.png"
    }  # fmt: skip


def test_dvc_plots_show_renders_every_plot_in_one_page(project):
    project, env, _ = project
    _sh("dvc", "plots", "show", "-o", "plots_page", cwd=project, env=env)
    page = (project / "plots_page" / "index.html").read_text()
    plots = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    names = [p if isinstance(p, str) else next(iter(p)) for p in plots]
    assert len(names) == 11
    for name in names:
        assert name in page, name


def _run_notebook(project: Path, env: dict[str, str], extra_cell: str) -> list[str]:
    """Execute the explorer notebook plus ``extra_cell``; return every cell's text output."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(project / "notebooks/explore.ipynb", as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(extra_cell))
    saved = dict(os.environ)
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(
            notebook, timeout=300, kernel_name="python3",
            resources={"metadata": {"path": str(project / "notebooks")}},
        ).execute()  # fmt: skip
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return [o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
            for o in cell.outputs]  # fmt: skip


def test_the_explorer_notebook_runs_against_the_model(project):
    project, env, _ = project
    # Drive the widgets as a user would: move a slider, pick another test digit.
    texts = _run_notebook(project, env, (
        "before = decode_sliders().copy()\n"
        "sliders[0].value = -2.5 if sliders[0].value > 0 else 2.5\n"
        "after = decode_sliders()\n"
        "assert after.shape == (28, 28) and 0 <= after.min() and after.max() <= 1\n"
        "assert abs(after - before).max() > 1e-3\n"
        "choice.value = 7\n"
        "mean = model.encode(test_images[7:8])[0][0].clamp(-SPAN, SPAN)\n"
        "assert all(abs(s.value - m) < 1e-6 for s, m in zip(sliders, mean.tolist()))\n"
        "print('explored', len(sliders), 'sliders')"
    ))  # fmt: skip
    assert any(f"model from {project / 'data/model'}: 10 latent dimensions" in t for t in texts)
    assert any("test digit 7: a " in t for t in texts)
    assert "explored 10 sliders" in texts[-1]


def test_a_registered_champion_is_promoted_and_explored(project):
    project, env, _ = project
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-vae").experiment_id])
    client.create_registered_model(tracking.REGISTERED_MODEL)
    client.create_model_version(
        tracking.REGISTERED_MODEL, f"{run.info.artifact_uri}/{tracking.MODEL_FILES}",
        run_id=run.info.run_id,
    )  # fmt: skip
    assert "promoted to champion" in tracking.promote_if_better(run.info.run_id)
    (project / "data/model/model.pt").rename(project / "model.pt.away")  # only the registry has it
    try:
        texts = _run_notebook(project, env, "print(decode_sliders().shape)")
    finally:
        (project / "model.pt.away").rename(project / "data/model/model.pt")
    assert any("model from mnist-vae@champion: 10 latent dimensions" in t for t in texts)
    assert "(28, 28)" in texts[-1]


def test_experiment_with_a_larger_latent_then_nothing_to_reproduce(project):
    project, env, _ = project
    _sh("dvc", "exp", "run", "-S", "latent_dim=16", cwd=project, env=env)
    model = load_model(project / "data/model")
    assert model.config.latent_dim == 16
    mean, logvar = model.encode(torch.rand(2, 1, 28, 28))
    assert mean.shape == logvar.shape == (2, 16)
    assert "latent_dim" in _sh("dvc", "exp", "show", "--csv", cwd=project, env=env)

    output = _sh("dvc", "repro", cwd=project, env=env)
    assert _stages_run(output) == []

    _edit_params(project, {"generate": {"n_samples": 3}})
    output = _sh("dvc", "repro", cwd=project, env=env)
    assert _stages_run(output) == ["generate"]
    assert len(list((project / "data/generated/samples").glob("*.png"))) == 3
