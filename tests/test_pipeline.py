"""End to end: the real `dvc repro` and `dvc exp run` on a small slice of MNIST.

The project is copied (as Git would check it out) into a fresh Git repository
under a temporary folder, so these tests never touch the working copy's data,
lock file or MLflow store.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy
import torch
import yaml
from PIL import Image

from mnist_vae.data import dataset_digest
from mnist_vae.model.vae import load_model
from mnist_vae.tracking import runs
from mnist_vae.tracking.runs import MODEL_SHA_TAG, file_sha256

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "data": {"train_limit": 512, "test_limit": 128},
    "train": {"epochs": 1, "loss": "logistic_mixture"},  # a codec, for the compress stage
    "generate": {"n_samples": 6},
    "compare": {"n_images": 5},
    "classifier": {"train_limit": 1000, "epochs": 1},
    "evaluate": {"iw_samples": 4, "fid_samples": 100, "interpolations": 3},
    # the learned codecs' mechanics: one lambda, a few hundred digits, one epoch, narrow nets
    "learned_baselines": {
        "lambdas": [0.003],
        "hyperprior_lambdas": [0.003],
        "train_limit": 256,
        "epochs": 1,
        "channels": 8,
        "latent_channels": 8,
    },
}
STAGES = {
    "download", "train", "generate", "compare", "classifier", "evaluate", "baselines",
    "learned_baselines", "compress", "rate_distortion", "overview",
}  # fmt: skip
DATA_ONLY = {"download", "classifier", "baselines", "learned_baselines"}  # retraining skips them
TRACKING_SERVER_ENV = "MNIST_VAE_TRACKING_SERVER"  # a shared MLflow server (.ci/run starts one)
TRACKING_DB_ENV = "MNIST_VAE_TRACKING_DB"  # its PostgreSQL database, to look behind the API
# its accounts (basic-auth): a JSON file {username: {"role": trainer|viewer, "password": ...}}
TRACKING_ACCOUNTS_ENV = "MNIST_VAE_TRACKING_ACCOUNTS"
MLFLOW_STAGES = ["train", "generate", "compare", "evaluate", "compress", "rate_distortion"]  # log

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


def _small_project(folder: Path, mnist_mirror: Path) -> tuple[Path, dict[str, str]]:
    """A fresh Git clone-alike of the project in ``folder`` with small-slice params, and the
    environment to run it in (no MLFLOW_*/DVC_* settings of the caller's)."""
    project = folder / "project"
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
        # sample CPU and memory every second: the small slice trains for a few seconds only
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1",
    )
    git = ("git", "-c", "init.defaultBranch=main")
    _sh(*git, "init", "-q", cwd=project, env=env)
    _sh(*git, "add", "-A", cwd=project, env=env)
    _sh(*git, "commit", "-qm", "small-slice copy", cwd=project, env=env)
    return project, env


@pytest.fixture(scope="module")
def project(tmp_path_factory, mnist_mirror):
    """The small-slice project after one `dvc repro`, with its own local MLflow store."""
    project, env = _small_project(tmp_path_factory.mktemp("e2e"), mnist_mirror)
    output = _sh("dvc", "repro", cwd=project, env=env)
    return project, env, output


def test_repro_runs_every_stage_and_writes_every_output(project):
    project, _, output = project
    assert sorted(_stages_run(output)) == sorted(STAGES)

    model = load_model(project / "data/model")
    assert model.config.latent_dim == 10
    metrics = json.loads((project / "data/metrics/train.json").read_text())
    assert metrics["epoch"] == 1
    assert 0.5 < metrics["test_loss"] / math.log(2) / 784 < 4  # bits per 8-bit pixel
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
    with Image.open(project / "docs/assets/overview.png") as overview:  # the README's picture
        assert overview.size[0] > 2 * overview.size[1] > 200

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == STAGES
    assert lock["stages"]["train"]["params"]["params.yaml"]["latent_dim"] == 10


def test_the_run_is_recorded_in_mlflow(project):
    project, env, _ = project
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-vae").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "z10-fast-e1-seed0"
    assert run.data.params["latent_dim"] == "10"
    assert run.data.params["train.epochs"] == "1"
    assert run.data.tags[MODEL_SHA_TAG] == file_sha256(project / "data/model/model.pt")
    head = _sh("git", "rev-parse", "HEAD", cwd=project, env=env).strip()
    assert run.data.tags[runs.GIT_COMMIT_TAG] == head
    assert run.data.tags[runs.DATA_TAG] == dataset_digest(project / "data/mnist")
    assert runs.EXP_NAME_TAG not in run.data.tags  # a plain `dvc repro` is no experiment
    # the values the run used beside params.yaml's, the data as inputs, the UI's view
    assert run.data.params["train.effective_batch_size"] == run.data.params["train.batch_size"]
    assert run.data.params["train.effective_lr"] == run.data.params["train.lr"]
    assert run.data.params["train.device_used"] == "cpu"
    assert {(d.dataset.name, d.tags[0].value) for d in run.inputs.dataset_inputs} == {
        ("mnist-training", "training"),
        ("mnist-testing", "testing"),
    }
    assert any(key.startswith("system/") for key in run.data.metrics)
    experiment = client.get_experiment_by_name("mnist-vae")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
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

    (version,) = client.search_model_versions(f"name = '{runs.REGISTERED_MODEL}'")
    assert (int(version.version), version.run_id) == (1, run.info.run_id)


def test_evaluate_reports_every_metric(project):
    project, _, _ = project
    results = json.loads((project / "data/metrics/evaluate.json").read_text())
    assert set(results) == {
        "loss", "recon", "kl", "iwae_nll", "mse", "psnr", "ssim", "active_units",
        "frechet_distance", "sample_label_entropy", "sample_min_digit_fraction",
        "bits_per_pixel", "iwae_bits_per_pixel",
    }  # fmt: skip
    assert results["bits_per_pixel"] == pytest.approx(results["loss"] / math.log(2) / 784)
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
    assert run.data.tags[runs.PROMOTION_TAG].startswith("version 1 promoted to champion")
    champion = client.get_model_version_by_alias(runs.REGISTERED_MODEL, "champion")
    assert int(champion.version) == 1
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} == {
        "evaluation/traversal.png", "evaluation/interpolation.png", "evaluation/latent_map.png"
    }  # fmt: skip


def test_compress_codes_the_test_set_losslessly_beside_the_baselines(project, tmp_path):
    project, env, _ = project
    metrics = json.loads((project / "data/metrics/compress.json").read_text())
    stream = project / "data/compression/lossless/test.mvae"
    n = SMALL["data"]["test_limit"]
    assert metrics["lossless"] is True
    assert metrics["bytes"] == stream.stat().st_size
    assert metrics["bits_per_pixel"] == pytest.approx(8 * stream.stat().st_size / (n * 784))
    assert abs(metrics["gap_to_nelbo"]) < 0.02  # the rate is the negative ELBO
    assert "compress_images_per_second" not in metrics  # a clock is no reproducible output
    table = pd.read_csv(project / "data/metrics/codecs.csv")
    assert table["codec"].iloc[0] == "mnist-vae (bits-back ANS)"
    assert {"PNG", "WebP lossless", "JPEG XL lossless", "xz -9e", "zstd -22"} <= set(table["codec"])
    assert metrics["best_baseline_bits_per_pixel"] == pytest.approx(
        table["bits_per_pixel"].iloc[1:].min()
    )
    # the stage's file decodes with the command line tool to the very test images
    out = tmp_path / "decoded"
    done = subprocess.run(
        ["mnist-vae", "decompress", str(stream), "-o", str(out), "--model", "data/model"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    raw = (project / "data/mnist/t10k-images-idx3-ubyte").read_bytes()
    originals = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    decoded = np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))])
    assert np.array_equal(decoded, originals)


def test_the_rate_distortion_stage_measures_ours_beside_the_baselines(project):
    project, _, _ = project
    metrics = json.loads((project / "data/metrics/lossy.json").read_text())
    curves = project / "data/metrics/rate_distortion"
    ours = pd.read_csv(curves / "mnist-vae_whole_set.csv")
    at = ours[ours["setting"] == f"rate {metrics['rate']}"].iloc[0]
    written = (project / "data/compression/lossy/test-lossy.mvae").stat().st_size
    assert at["bytes"] == written and metrics["bytes_per_image"] == pytest.approx(
        written / SMALL["data"]["test_limit"]
    )
    assert len(ours) == 13 and 0 < metrics["psnr"] < 100 and 0 < metrics["ssim"] <= 1
    for path in curves.glob("*.csv"):  # one curve per file: a codec in one layout
        points = pd.read_csv(path)
        assert points.groupby(["codec", "layout"]).ngroups == 1, path
    assert set(metrics["baseline_bytes_to_match_psnr"]) >= {"JPEG XL, per image", "WebP, mosaic"}
    learned = {f"{name}, per image" for name in ("bmshj2018-factorized", "bmshj2018-hyperprior")}
    assert set(metrics["learned_bytes_to_match_psnr"]) >= learned
    # one epoch on 256 digits: the small slice's learned codecs may all miss our PSNR
    assert metrics["targets"]["best_learned"] in {*learned, "none reaches our PSNR"}
    for name in ("bmshj2018-factorized", "bmshj2018-hyperprior"):  # beside ours in dvc plots
        assert len(pd.read_csv(curves / f"{name}_per_image.csv")) == 1  # one lambda
    plotted = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    for plot in plotted:
        if isinstance(plot, dict) and "y" in next(iter(plot.values())):
            for path in next(iter(plot.values()))["y"]:
                assert (project / path).exists(), path
    for picture in ("curves.png", "equal_bytes.png"):
        assert Image.open(project / "data/compression/lossy" / picture).size[0] > 500


def test_dvc_plots_show_renders_every_plot_in_one_page(project):
    project, env, _ = project
    _sh("dvc", "plots", "show", "-o", "plots_page", cwd=project, env=env)
    page = (project / "plots_page" / "index.html").read_text()
    plots = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    names = [p if isinstance(p, str) else next(iter(p)) for p in plots]
    assert len(names) == 16
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
    env = {**env, "MNIST_VAE_MODEL": "workspace"}
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


def test_the_notebook_explores_the_registry_champion(project):
    project, env, _ = project
    (project / "data/model/model.pt").rename(project / "model.pt.away")  # only the registry has it
    try:
        texts = _run_notebook(project, env, "print(decode_sliders().shape)")
    finally:
        (project / "model.pt.away").rename(project / "data/model/model.pt")
    assert any("model from mnist-vae@champion: 10 latent dimensions" in t for t in texts)
    assert "(28, 28)" in texts[-1]


def test_the_registered_model_loads_and_predicts_in_a_fresh_process(project, tmp_path):
    project, env, _ = project
    script = tmp_path / "client.py"
    script.write_text(FRESH_PROCESS_CLIENT)
    # Run from an empty folder: the model brings its own copy of the package (code_paths).
    client = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=_store_env(project, env),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert client.returncode == 0, client.stderr
    result = json.loads(client.stdout.strip().splitlines()[-1])
    assert result["decode"] == [[3, 28, 28], True]
    assert result["encode"] == [[2, 10], [2, 10]]
    assert result["reconstruct"] == [[2, 28, 28], True]
    assert result["sample"] == [[5, 28, 28], True]
    assert "/artifacts/code/mnist_vae/" in result["package"]


def test_mlflow_models_serve_answers_every_mode_and_refuses_bad_requests(project):
    project, env, _ = project
    port = _free_port()
    with _server(
        ["mlflow", "models", "serve", "-m", "models:/mnist-vae/latest", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}/ping", cwd=project, env=_store_env(project, env),
    ):  # fmt: skip
        url = f"http://127.0.0.1:{port}/invocations"
        image = [[0.5] * 28] * 28
        status, body = _post(url, {"inputs": [[0.0] * 10] * 3, "params": {"mode": "decode"}})
        assert status == 200 and np.array(body["predictions"]).shape == (3, 28, 28)
        status, body = _post(url, {"inputs": [image] * 2, "params": {"mode": "encode"}})
        assert status == 200 and np.array(body["predictions"]["mean"]).shape == (2, 10)
        status, body = _post(url, {"inputs": [image], "params": {"mode": "reconstruct"}})
        assert status == 200 and np.array(body["predictions"]).shape == (1, 28, 28)
        request = {"inputs": [], "params": {"mode": "sample", "n": 4, "seed": 7}}
        status, body = _post(url, request)
        assert status == 200 and np.array(body["predictions"]).shape == (4, 28, 28)
        assert _post(url, request) == (status, body)  # same seed, same images

        bad = {
            "wrong latent size": ({"inputs": [[0.0] * 9]}, "latent vectors of shape n x 10"),
            "wrong shape": (
                {"inputs": [[0.0] * 27] * 28, "params": {"mode": "encode"}},
                "n x 28 x 28",
            ),
            "NaN": ({"inputs": [[0.0] * 9 + [float("nan")]]}, "NaN or infinite"),
            "unknown mode": ({"inputs": [[0.0] * 10], "params": {"mode": "dream"}}, "unknown mode"),
            "too many rows": ({"inputs": [[0.0] * 10] * 1025}, "at most 1024"),
            "too many samples": (
                {"inputs": [], "params": {"mode": "sample", "n": 5000}},
                "at most 1024",
            ),
            "malformed JSON": (b'{"inputs": [[0.0, ', "JSON"),
        }
        for name, (request, message) in bad.items():
            status, body = _post(url, request)
            assert status == 400, name
            assert message in body["message"], (name, body["message"])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=10) as answer:
            assert answer.status == 200


def test_the_mlflow_ui_shows_the_run_in_headless_chromium(project, tmp_path):
    project, env, _ = project
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("mnist-vae").experiment_id
    port = _free_port()
    with _server(
        ["mlflow", "ui", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}/health", cwd=project, env=env,
    ):  # fmt: skip
        page = f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs"
        browser = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1400,900", "--virtual-time-budget=20000",
        ]  # fmt: skip
        dom = subprocess.run(
            [*browser, "--dump-dom", page], capture_output=True, text=True, timeout=180
        ).stdout
        screenshot = tmp_path / "mlflow-ui.png"
        subprocess.run(
            [*browser, f"--screenshot={screenshot}", page], capture_output=True, timeout=180
        )
    assert "z10-fast-e1-seed0" in dom, dom[-2000:]
    assert "mnist-training" in dom, "the runs table's Dataset column names the training data"
    with Image.open(screenshot) as image:
        assert image.size == (1400, 900)
    print(f"MLflow UI screenshot: {screenshot}")


def test_the_server_answers_1000_mixed_requests_from_8_clients_without_growing(project):
    project, env, _ = project
    port = _free_port()
    with _server(  # no --host: it must listen on 127.0.0.1 only
        ["mlflow", "models", "serve", "-m", "models:/mnist-vae/latest", "--env-manager", "local",
         "--port", str(port)],
        f"http://127.0.0.1:{port}/ping", cwd=project, env=_store_env(project, env),
    ) as server:  # fmt: skip
        assert _listening_addresses(port) == {"127.0.0.1"}
        url = f"http://127.0.0.1:{port}/invocations"
        rng = np.random.default_rng(0)
        # seven cheap requests (the encoder) to one decode (the autoregressive decoder takes
        # 784 steps a picture): concurrency and memory, not the decoder's speed
        good = [
            {"inputs": rng.random((4, 28, 28)).tolist(), "params": {"mode": "encode"}}
            for _ in range(7)
        ] + [{"inputs": rng.standard_normal((1, 10)).tolist()}]
        expected = []
        for request in good:
            status, body = _post(url, request)
            assert status == 200
            expected.append(body)
        nan = [[0.0] * 9 + [float("nan")]]
        bad = [
            b'{"inputs": [[0.0, 0.0',  # malformed JSON
            {"inputs": [[0.0] * 7]},  # wrong latent size
            {"inputs": [[[0.5] * 27] * 28], "params": {"mode": "reconstruct"}},  # wrong shape
            {"inputs": nan},
            {"inputs": [[0.0] * 9 + [float("inf")]]},
            {"inputs": [[0.0] * 10] * 1025},  # oversized
        ]
        jobs = [("good", i // 2 % 8) if i % 2 else ("bad", i % len(bad)) for i in range(1100)]

        def send(job):
            kind, i = job
            status, body = _post(url, good[i] if kind == "good" else bad[i])
            return kind, i, status, body

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, jobs[:100]))  # warm-up: allocator, caches, threads
            before = _group_rss(server.pid)
            answers = list(pool.map(send, jobs[100:]))
            after = _group_rss(server.pid)
        assert len(answers) == 1000
        for kind, i, status, body in answers:
            if kind == "good":
                assert status == 200 and body == expected[i]
            else:
                assert status == 400 and body["message"], (i, body)
        assert after <= 1.10 * before, f"server memory grew from {before} to {after} KiB"
        print(f"server RSS {before} KiB before, {after} KiB after 1000 mixed requests")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=10) as answer:
            assert answer.status == 200


def test_a_forced_repro_gives_byte_identical_outputs(project):
    """Training and every stage after it, run again: the same bytes. (The classifier's seeded
    training is checked in test_classifier.py; the baselines run fixed codecs; the learned
    ones depend on the data only.)"""
    project, env, _ = project
    outputs = ["data/model", "data/generated", "data/comparison", "data/evaluation",
               "data/compression", "data/metrics", "docs/assets"]  # fmt: skip
    before = _file_hashes(project, outputs)
    output = _sh("dvc", "repro", "--force", "--downstream", "train", cwd=project, env=env)
    assert sorted(_stages_run(output)) == sorted(STAGES - DATA_ONLY)
    assert _file_hashes(project, outputs) == before
    assert len(before) > 20  # weights, images, metrics, tables


def test_dvc_push_then_a_fresh_clone_pulls_everything_without_retraining(project, tmp_path):
    project, env, _ = project
    remote = tmp_path / "remote"
    _sh("dvc", "remote", "add", "--default", "shared", str(remote), cwd=project, env=env)
    _sh("dvc", "push", cwd=project, env=env)
    _sh("git", "add", ".dvc/config", "dvc.lock", "data", "docs/assets", cwd=project, env=env)
    _sh("git", "commit", "-qm", "pipeline results and the remote", cwd=project, env=env)

    # without the remote, a clone fetches the data again but finds the learned codecs'
    # committed figures up to date: the stage that trains them does not run
    bare = tmp_path / "bare"
    _sh("git", "clone", "-q", str(project), str(bare), cwd=tmp_path, env=env)
    output = _sh("dvc", "repro", "learned_baselines", cwd=bare, env=env)
    assert _stages_run(output) == ["download"]
    assert "Stage 'learned_baselines' didn't change, skipping" in output

    clone = tmp_path / "clone"
    _sh("git", "clone", "-q", str(project), str(clone), cwd=tmp_path, env=env)
    _sh("dvc", "pull", cwd=clone, env=env)
    assert "Data and pipelines are up to date" in _sh("dvc", "status", cwd=clone, env=env)
    outputs = ["data/mnist", "data/model", "data/generated", "data/comparison",
               "data/classifier", "data/evaluation", "data/metrics"]  # fmt: skip
    assert _file_hashes(clone, outputs) == _file_hashes(project, outputs)
    assert _stages_run(_sh("dvc", "repro", cwd=clone, env=env)) == []  # nothing to retrain


def test_dvc_repro_trains_on_two_processes_with_the_torchrun_command(tmp_path, mnist_mirror):
    """The switch dvc.yaml's comment shows: the stage's command, recorded in dvc.lock."""
    project, env = _small_project(tmp_path, mnist_mirror)
    torchrun = "torchrun --standalone --nproc_per_node=2 stages/train.py"
    pipeline = (project / "dvc.yaml").read_text()
    assert f"#   cmd: {torchrun}" in pipeline  # the comment shows the exact command
    (project / "dvc.yaml").write_text(
        pipeline.replace("cmd: python stages/train.py", f"cmd: {torchrun}")
    )
    output = _sh("dvc", "repro", "evaluate", cwd=project, env=env)  # training and what reads it
    assert sorted(_stages_run(output)) == ["classifier", "download", "evaluate", "train"]
    assert "x 2 processes (gloo), effective batch 2 x 128" in output
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["train"]["cmd"] == torchrun

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-vae").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.processes"] == "2"
    assert "eval.iwae_nll" in run.data.metrics  # the later stages found the run
    assert [v.run_id for v in client.search_model_versions("name = 'mnist-vae'")] == [
        run.info.run_id
    ]
    assert _stages_run(_sh("dvc", "repro", "evaluate", cwd=project, env=env)) == []


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
    project, env = _small_project(tmp_path_factory.mktemp("shared"), mnist_mirror)
    username, password = accounts["trainer"]
    env = {**env, "MLFLOW_TRACKING_URI": tracking_server,
           "MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}  # fmt: skip
    # what the server sees of a run: training, its pictures, its evaluation and promotion
    output = _sh("dvc", "repro", "evaluate", "generate", "compare", cwd=project, env=env)
    return project, env, output


def _shared_run_id(tracking_server: str, project: Path, env: dict[str, str], auth) -> str:
    """The run of the shared project, found by the weights it trained and the commit
    (a shared server may hold earlier runs of the same weights)."""
    api = f"{tracking_server}/api/2.0/mlflow"
    experiment = _get(f"{api}/experiments/get-by-name?experiment_name=mnist-vae", auth)
    commit = _sh("git", "rev-parse", "HEAD", cwd=project, env=env).strip()
    weights = project / "data/model/model.pt"
    status, found = _post(f"{api}/runs/search", {
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
    experiment = _get(f"{api}/experiments/get-by-name?experiment_name=mnist-vae", viewer)
    experiment = experiment["experiment"]
    assert experiment["artifact_location"].startswith("mlflow-artifacts:")  # the server's store
    weights = project / "data/model/model.pt"
    commit = _sh("git", "rev-parse", "HEAD", cwd=project, env=env).strip()
    status, found = _post(f"{api}/runs/search", {
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
    history = _get(f"{api}/metrics/get-history?run_id={run_id}&metric_key=test_loss", viewer)
    history = history["metrics"]
    train = json.loads((project / "data/metrics/train.json").read_text())
    assert [(m["step"], m["value"]) for m in history] == [(1, pytest.approx(train["test_loss"]))]

    # its artifacts, listed and downloaded through the server
    listed = _get(f"{api}/artifacts/list?run_id={run_id}&path=model_files", viewer)
    assert {"model_files/model.pt", "model_files/config.json"} <= {
        f["path"] for f in listed["files"]
    }
    root = run["info"]["artifact_uri"].removeprefix("mlflow-artifacts:/")
    with urllib.request.urlopen(
        urllib.request.Request(
            f"{tracking_server}/api/2.0/mlflow-artifacts/artifacts/{root}/model_files/model.pt",
            headers=_headers(viewer),
        ),
        timeout=60,
    ) as answer:
        assert hashlib.sha256(answer.read()).hexdigest() == file_sha256(weights)
    for image in ("generated/grid.png", "comparison/grid.png"):
        folder = image.split("/")[0]
        listed = _get(f"{api}/artifacts/list?run_id={run_id}&path={folder}", viewer)
        assert image in {f["path"] for f in listed["files"]}

    # the registered version it made
    versions = _get(
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
    port = _free_port()
    served = tmp_path / "served"
    served.mkdir()
    with _server(
        ["mlflow", "models", "serve", "-m", f"models:/mnist-vae/{version}",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}/ping", cwd=served, env=env,
    ):  # fmt: skip
        z = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
        status, body = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": z.tolist()})
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
    experiment_id = _get(f"{api}/runs/get?run_id={run_id}", viewer)["run"]["info"]["experiment_id"]
    version = _get(f"{api}/registered-models/alias?name=mnist-vae&alias=champion", viewer)
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
            "no credentials": _status(url, payload, None),
            "wrong password": _status(url, payload, (viewer[0], "not-the-password")),
            "viewer": _status(url, payload, viewer),
        }
        for action, (url, payload) in {**reads, **writes}.items()
    }
    for action in reads:  # the trainer reads too (its writes: the pipeline run above)
        matrix[action]["trainer"] = _status(*reads[action], trainer)
    shown = {action: {who: str(code) for who, code in r.items()} for action, r in matrix.items()}
    print("\n" + pd.DataFrame(shown).T.fillna("").to_string())
    assert all(row["no credentials"] == 401 for row in matrix.values())
    assert all(row["wrong password"] == 401 for row in matrix.values())
    assert all(matrix[action]["viewer"] == 200 for action in reads)
    assert all(matrix[action]["trainer"] == 200 for action in reads)
    assert all(matrix[action]["viewer"] == 403 for action in writes)
    # nothing the viewer tried happened
    run = _get(f"{api}/runs/get?run_id={run_id}", viewer)["run"]
    assert run["info"]["lifecycle_stage"] == "active" and "x" not in {
        m["key"] for m in run["data"]["metrics"]
    }
    now = _get(f"{api}/registered-models/alias?name=mnist-vae&alias=champion", viewer)
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
    run = _get(
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


def test_queued_experiments_run_side_by_side_into_one_store_then_apply(project):
    """Two queued experiments (one named) run at once into the project's MLflow store, each
    with its rate-distortion points; applying one leaves nothing to reproduce."""
    project, env, _ = project
    _sh("dvc", "exp", "run", "--queue", "-S", "latent_dim=2", cwd=project, env=env)
    _sh("dvc", "exp", "run", "--queue", "-S", "latent_dim=16", "-n", "wide", cwd=project, env=env)
    # in copies under .dvc/tmp. Its output goes to a file, not a pipe: the workers it starts
    # live on as daemons and would hold a pipe open, so waiting for its end could hang.
    log = project / ".dvc" / "tmp" / "queue-start.log"
    with log.open("w") as out:
        started = subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, env=env,
                                 stdout=out, stderr=subprocess.STDOUT, timeout=120)  # fmt: skip
    assert started.returncode == 0, log.read_text()
    deadline = time.monotonic() + 900
    try:
        while True:  # not too often: DVC may drop an experiment collected while polled (#8014)
            time.sleep(10)
            status = _sh("dvc", "queue", "status", cwd=project, env=env)
            if not re.search(r"\b(Queued|Running)\b", status):
                break
            assert time.monotonic() < deadline, status
    finally:
        subprocess.run(["dvc", "queue", "stop"], cwd=project, env=env, capture_output=True)
    assert len(re.findall(r"\bSuccess\b", status)) == 2, status

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    queued = [
        r for r in client.search_runs([client.get_experiment_by_name("mnist-vae").experiment_id])
        if r.data.params["latent_dim"] in ("2", "16")
    ]  # fmt: skip
    assert sorted(int(r.data.params["latent_dim"]) for r in queued) == [2, 16]
    assert all(r.info.status == "FINISHED" and "eval.iwae_nll" in r.data.metrics for r in queued)
    assert all(r.data.tags.get(runs.EXP_NAME_TAG) for r in queued)
    spans = sorted((r.info.start_time, r.info.end_time) for r in queued)  # milliseconds
    overlapping = [later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)]
    assert any(overlapping), spans  # two ran side by side
    table = _sh("dvc", "exp", "show", "--csv", cwd=project, env=env)
    for run in queued:
        assert run.data.tags[runs.EXP_NAME_TAG] in table
    (wide,) = [r for r in queued if r.data.tags[runs.EXP_NAME_TAG] == "wide"]
    assert wide.info.run_name == "wide: z16-fast-e1-seed0"
    versions = client.search_model_versions(f"name = '{runs.REGISTERED_MODEL}'")
    assert {r.info.run_id for r in queued} <= {v.run_id for v in versions}  # registered too
    # the rate-distortion points of both land in MLflow and in one dvc plot
    assert all({"lossy.bytes_per_image", "lossy.psnr"} <= set(r.data.metrics) for r in queued)
    names = [run.data.tags[runs.EXP_NAME_TAG] for run in queued]
    curve = "data/metrics/rate_distortion/mnist-vae_whole_set.csv"
    _sh("dvc", "plots", "diff", *names, "--targets", curve, "-o", "rd_plots", cwd=project, env=env)
    page = (project / "rd_plots" / "index.html").read_text()
    assert all(name in page for name in names), names

    _sh("dvc", "exp", "apply", "wide", cwd=project, env=env)
    model = load_model(project / "data/model")
    assert model.config.latent_dim == 16
    mean, logvar = model.encode(torch.rand(2, 1, 28, 28))
    assert mean.shape == logvar.shape == (2, 16)

    output = _sh("dvc", "repro", cwd=project, env=env)
    assert _stages_run(output) == []

    _edit_params(project, {"generate": {"n_samples": 3}})
    output = _sh("dvc", "repro", cwd=project, env=env)
    assert _stages_run(output) == ["generate", "overview"]  # and the picture that shows them
    assert len(list((project / "data/generated/samples").glob("*.png"))) == 3


FRESH_PROCESS_CLIENT = """
import json
import mlflow
import numpy as np

model = mlflow.pyfunc.load_model("models:/mnist-vae/latest")
images = np.random.default_rng(0).random((2, 28, 28), dtype=np.float32)
def check(out):
    return [list(out.shape), bool(0 <= out.min() <= out.max() <= 1)]
decoded = model.predict(np.zeros((3, 10), np.float32), params={"mode": "decode"})
encoded = model.predict(images, params={"mode": "encode"})
import mnist_vae
print(json.dumps({
    "decode": check(decoded),
    "encode": [list(encoded["mean"].shape), list(encoded["logvar"].shape)],
    "reconstruct": check(model.predict(images, params={"mode": "reconstruct"})),
    "sample": check(model.predict([], params={"mode": "sample", "n": 5, "seed": 0})),
    "package": mnist_vae.__file__,
}))
"""


def _store_env(project: Path, env: dict[str, str]) -> dict[str, str]:
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _server(command: list[str], ready_url: str, cwd: Path, env: dict[str, str]):
    """Start a server, wait until ``ready_url`` answers 200, stop it (and its workers) after."""
    log = cwd / f"server-{Path(command[0]).name}-{command[1]}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"server exited:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(ready_url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"server not ready:\n{log.read_text()}"
            time.sleep(0.5)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _file_hashes(root: Path, folders: list[str]) -> dict[str, str]:
    return {
        str(path.relative_to(root)): file_sha256(path)
        for folder in folders
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def _listening_addresses(port: int) -> set[str]:
    """IPv4/IPv6 addresses with a socket listening on ``port`` (from /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def _group_rss(pgid: int) -> int:
    """Resident memory (KiB) of every process in the process group ``pgid``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # the 5th field of stat: the process group
                status = (stat.parent / "status").read_text()
                total += int(next(line.split()[1] for line in status.splitlines()
                                  if line.startswith("VmRSS:")))  # fmt: skip
        except (OSError, StopIteration, ValueError):
            continue  # a process that ended meanwhile
    return total


def _headers(auth: tuple[str, str] | None) -> dict[str, str]:
    """HTTP basic authentication for ``(username, password)``, nothing for None."""
    if auth is None:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()}


def _get(url: str, auth: tuple[str, str] | None = None) -> dict:
    request = urllib.request.Request(url, headers=_headers(auth))
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def _post(url: str, payload: dict | bytes, auth: tuple[str, str] | None = None):
    """``(status, JSON body)``; the body as text where it is not JSON (e.g. a 401's)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **_headers(auth)}
    request = urllib.request.Request(url, data, headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except json.JSONDecodeError:
            return error.code, body.decode(errors="replace")


def _status(url: str, payload: dict | None, auth) -> int:
    """The HTTP status of one request (GET without a payload, POST with one)."""
    if payload is not None:
        return _post(url, payload, auth)[0]
    try:
        _get(url, auth)
    except urllib.error.HTTPError as error:
        return error.code
    return 200
