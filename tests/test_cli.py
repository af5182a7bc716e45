"""The ``mnist-vae`` command as a user types it: good runs, and one clear line for bad input.

One round trip runs the installed console script in new processes (the slow tier: processes
that import torch take seconds); the other cases call its ``main`` in this process (the same
parser, the same error handling, the same exit status)."""

from __future__ import annotations

import base64
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from mnist_vae.cli import main
from mnist_vae.compression.near_lossless import Bins
from mnist_vae.model.vae import VAEConfig, save_model
from mnist_vae.tracking import runs
from mnist_vae.tracking.pyfunc import log_pyfunc_model
from mnist_vae.training.loop import seeded_model

EXE = str(Path(sys.executable).with_name("mnist-vae"))


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The console script in a new process."""
    return subprocess.run(
        [EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli(*args, cwd=...)``: ``mnist-vae`` in this process, as a finished process."""

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        try:
            status = main(list(args))
        except SystemExit as exit:  # argparse's usage errors
            status = exit.code
        output = capsys.readouterr()
        return subprocess.CompletedProcess(args, status, output.out, output.err)

    return run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, mnist_mirror) -> Path:
    """A folder with a model folder (8-bit, untrained), another model and six digit PNGs."""
    folder = tmp_path_factory.mktemp("cli")
    for name, seed in (("model", 0), ("other", 1)):
        model = seeded_model(VAEConfig(latent_dim=4, likelihood="beta_binomial"), seed)
        save_model(model, folder / name)
    raw = gzip.decompress((mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes())
    digits = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:6]
    (folder / "digits").mkdir()
    for i, digit in enumerate(digits):
        Image.fromarray(digit).save(folder / "digits" / f"d{i}.png")
    return folder


def _digits(workdir: Path) -> list[str]:
    return sorted(str(p.relative_to(workdir)) for p in (workdir / "digits").glob("*.png"))


@pytest.mark.slow
def test_compress_then_decompress_gives_every_pixel_back(workdir):
    done = _run("compress", *_digits(workdir), "-o", "d.mvae", "--model", "model", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("6 images -> d.mvae (") and "bits per pixel" in done.stdout
    done = _run("decompress", "d.mvae", "-o", "out", "--model", "model", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "d.mvae -> 6 images in out/ (lossless)"
    assert done.stderr == ""  # no progress bar in a pipe
    for i, name in enumerate(_digits(workdir)):
        original = np.asarray(Image.open(workdir / name))
        assert np.array_equal(np.asarray(Image.open(workdir / "out" / f"{i:05d}.png")), original)


def test_long_work_shows_progress_on_a_terminal_and_nothing_in_a_pipe(cli, workdir, monkeypatch):
    digits = _digits(workdir)
    quiet = cli("compress", *digits, "-o", "q.mvae", "--model", "model", "--force", cwd=workdir)
    assert quiet.returncode == 0 and quiet.stderr == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # as a terminal
    for args, stages in (
        (["compress", *digits, "-o", "t.mvae"], ["reading", "compressing"]),
        (["decompress", "t.mvae", "-o", "t"], ["decompressing", "writing"]),
    ):
        done = cli(*args, "--model", "model", "--force", cwd=workdir)
        assert done.returncode == 0, done.stderr
        for stage in stages:
            assert f"\r{stage}:   0%|" in done.stderr and "0/6 [" in done.stderr, done.stderr


def _fails(cli, workdir: Path, message: str, *args: str) -> None:
    done = cli(*args, cwd=workdir)
    assert done.returncode == 1, done
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert message in done.stderr, done.stderr


def test_bad_images_are_one_line_and_write_nothing(cli, workdir):
    Image.new("L", (32, 32)).save(workdir / "big.png")
    Image.new("RGB", (28, 28)).save(workdir / "colour.png")
    (workdir / "notes.png").write_text("not an image")
    for name, message in (
        ("big.png", "big.png: expected a 28 x 28 grey image; found L 32 x 32"),
        ("colour.png", "colour.png: expected a 28 x 28 grey image; found RGB 28 x 28"),
        ("notes.png", "notes.png: cannot be read as an image"),
        ("missing.png", "missing.png: cannot be read as an image"),
    ):
        _fails(cli, workdir, message, "compress", "digits/d0.png", name, "-o", "bad.mvae",
               "--model", "model")  # fmt: skip
        assert not (workdir / "bad.mvae").exists()


def test_bad_streams_are_one_line_and_write_nothing(cli, workdir):
    assert cli("compress", *_digits(workdir), "-o", "s.mvae", "--model", "model",
                cwd=workdir).returncode == 0  # fmt: skip
    data = (workdir / "s.mvae").read_bytes()
    (workdir / "cut.mvae").write_bytes(data[:-6])
    altered = bytearray(data)
    altered[-20] ^= 0xFF
    (workdir / "altered.mvae").write_bytes(bytes(altered))
    for stream, model, message in (
        ("s.mvae", "other", "the stream was compressed with another model"),
        ("cut.mvae", "model", "truncated"),
        ("altered.mvae", "model", "error: "),
        ("digits/d0.png", "model", "not an mnist-vae compressed file"),
        ("nothing.mvae", "model", "nothing.mvae: cannot be read"),
    ):
        _fails(cli, workdir, message, "decompress", stream, "-o", "never", "--model", model)
        assert not (workdir / "never").exists()


def test_an_existing_output_needs_force(cli, workdir):
    (workdir / "taken.mvae").write_bytes(b"keep me")
    _fails(cli, workdir, "taken.mvae exists; pass --force to replace it",
           "compress", *_digits(workdir), "-o", "taken.mvae", "--model", "model")  # fmt: skip
    assert (workdir / "taken.mvae").read_bytes() == b"keep me"
    done = cli("compress", *_digits(workdir), "-o", "taken.mvae", "--model", "model", "--force",
                cwd=workdir)  # fmt: skip
    assert done.returncode == 0 and (workdir / "taken.mvae").read_bytes()[:4] == b"MVAE"


def test_a_model_from_the_mlflow_registry(cli, workdir, tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs.configure(store)
    with mlflow.start_run():
        log_pyfunc_model(workdir / "model", 4, runs.REGISTERED_MODEL)
    mlflow.set_tracking_uri(None)
    for name in [k for k in os.environ if k.startswith(("MLFLOW_", "DVC_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DVC_ROOT", str(store))  # where the pipeline's store is found
    uri = f"models:/{runs.REGISTERED_MODEL}/1"
    done = cli("compress", *_digits(workdir), "-o", str(tmp_path / "r.mvae"), "--model", uri,
                cwd=workdir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = cli("decompress", str(tmp_path / "r.mvae"), "-o", str(tmp_path / "out"),
                "--model", "model", cwd=workdir)  # fmt: skip
    assert done.returncode == 0, done.stderr  # the registry's model is the folder's model
    done = cli("compress", "digits/d0.png", "-o", str(tmp_path / "n.mvae"), "--model",
                f"models:/{runs.REGISTERED_MODEL}/7", cwd=workdir)  # fmt: skip
    assert done.returncode == 1 and "cannot load the model models:/mnist-vae/7" in done.stderr
    shutil.rmtree(tmp_path / "out")


def test_lossy_compression_round_trips_through_the_command_line(cli, workdir, tmp_path):
    done = cli("compress", *_digits(workdir), "-o", "l.mvae", "--model", "model", "--lossy",
                "--rate", "8", cwd=workdir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("6 images -> l.mvae (") and "lossy, rate 8" in done.stdout
    lossless = (workdir / "d.mvae").stat().st_size if (workdir / "d.mvae").exists() else None
    assert lossless is None or (workdir / "l.mvae").stat().st_size < lossless
    done = cli("decompress", "l.mvae", "-o", "lossy-out", "--model", "model", cwd=workdir)
    assert done.returncode == 0, done.stderr
    pictures = sorted((workdir / "lossy-out").glob("*.png"))
    assert len(pictures) == 6
    assert all(Image.open(p).mode == "L" and Image.open(p).size == (28, 28) for p in pictures)
    _fails(cli, workdir, "the stream was compressed with another model",
           "decompress", "l.mvae", "-o", "never", "--model", "other")  # fmt: skip
    refused = cli("compress", *_digits(workdir), "-o", "x.mvae", "--rate", "3", cwd=workdir)
    assert refused.returncode == 2 and "--rate needs --lossy" in refused.stderr


def test_near_lossless_round_trips_within_the_bound(cli, workdir):
    done = cli("compress", *_digits(workdir), "-o", "n.mvae", "--model", "model",
               "--max-error", "3", cwd=workdir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "near-lossless, every pixel within 3 (largest error 3)" in done.stdout
    done = cli("decompress", "n.mvae", "-o", "near-out", "--model", "model", cwd=workdir)
    assert done.returncode == 0 and done.stdout.strip().endswith("(near-lossless)"), done
    for i, name in enumerate(_digits(workdir)):
        original = np.asarray(Image.open(workdir / name)).astype(int)
        decoded = np.asarray(Image.open(workdir / "near-out" / f"{i:05d}.png"))
        assert np.abs(decoded - original).max() <= 3
        assert np.array_equal(decoded, Bins(3).quantize(original.astype(np.uint8)))


@pytest.mark.parametrize("k", ["0", "128", "-1", "two"])
def test_a_bad_max_error_is_one_line_and_writes_nothing(cli, workdir, k):
    _fails(cli, workdir, "--max-error must be" if k == "two" else "largest error must be 1..127",
           "compress", *_digits(workdir), "-o", "bad-k.mvae", "--model", "model",
           f"--max-error={k}")  # fmt: skip
    assert not (workdir / "bad-k.mvae").exists()
    both = cli("compress", *_digits(workdir), "-o", "x.mvae", "--lossy", "--max-error", "2",
               cwd=workdir)  # fmt: skip
    assert both.returncode == 2 and "--max-error and --lossy are two modes" in both.stderr


def test_a_served_stream_decompresses_on_the_command_line(cli, workdir):
    from mnist_vae.tracking.serving import VAEPyfunc

    digit = np.asarray(Image.open(workdir / _digits(workdir)[0]), dtype=np.float32) / 255
    stream = (
        VAEPyfunc()
        .load_folder(workdir / "model")
        .predict(None, digit[None], {"mode": "compress"})[0]
    )
    (workdir / "one.z").write_bytes(base64.b64decode(stream))
    done = cli("decompress", "one.z", "-o", "one", "--model", "model", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in (workdir / "one").glob("*.png")] == ["00000.png"]


def test_the_served_model_is_logged_again_with_the_current_code(workdir, tmp_path, monkeypatch):
    from mnist_vae.tracking.pyfunc import main as relog

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert relog([str(workdir / "model")]) == 0
    runs.configure(tmp_path)
    client = mlflow.MlflowClient()
    (version,) = client.search_model_versions(f"name = '{runs.REGISTERED_MODEL}'")
    run = client.get_run(version.run_id)
    assert run.data.tags[runs.MODEL_SHA_TAG] == runs.file_sha256(workdir / "model/model.pt")
    served = mlflow.pyfunc.load_model(f"models:/{runs.REGISTERED_MODEL}/{version.version}")
    digits = np.stack([np.asarray(Image.open(workdir / name)) for name in _digits(workdir)[:2]])
    streams = served.predict(digits / 255, params={"mode": "compress", "max_error": 3})
    back = served.predict(np.array(streams), params={"mode": "decompress"})  # MLflow's schema
    assert np.array_equal(np.round(back * 255).astype(np.uint8), Bins(3).quantize(digits))
    mlflow.set_tracking_uri(None)
