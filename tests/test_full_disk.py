"""A full disk while writing outputs: one clear error, and nothing half-written where the
pipeline or the command line reads it.

Each case runs in a new process whose output folder is a 32 MiB tmpfs, mounted in a private
mount namespace (``unshare``: no root needed where user namespaces are allowed, and nothing
outside the process sees it), then filled to the last byte before the write under test.
Where namespaces are not allowed, the process runs with ``RLIMIT_FSIZE`` 0 instead: every
write fails (``EFBIG``, "File too large") through the same code. The process reports, as
JSON, the exit status or error, and every file left in the folder with its sha256; an old
output seeded there before the disk filled must come through unchanged.

Run as a script, this file is that process: ``python tests/test_full_disk.py CASE FOLDER
WORKDIR``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TMPFS_SIZE = "32m"
NO_SPACE = ("No space left on device", "File too large")


def _namespaces_work(folder: Path) -> bool:
    """Whether this machine lets a process mount a tmpfs in its own mount namespace."""
    probe = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "mount", "-t", "tmpfs", "-o", "size=4k",
         "tmpfs", str(folder)],
        capture_output=True, timeout=60,
    )  # fmt: skip
    return probe.returncode == 0


@pytest.fixture(scope="module")
def on_full_disk(tmp_path_factory):
    """``on_full_disk(case, workdir)``: the report of ``case`` run with its output folder on
    a full disk."""
    probe = tmp_path_factory.mktemp("probe")
    tmpfs = shutil.which("unshare") is not None and _namespaces_work(probe)

    def run(case: str, workdir: Path) -> dict:
        folder = workdir / f"full-{case}"
        folder.mkdir()
        script = [sys.executable, __file__, case, str(folder), str(workdir)]
        if tmpfs:
            mount = f'mount -t tmpfs -o size={TMPFS_SIZE} tmpfs "$1" && shift && exec "$@"'
            command = ["unshare", "--mount", "--map-root-user", "sh", "-c", mount, "sh",
                       str(folder), *script]  # fmt: skip
            env = os.environ
        else:
            command, env = script, {**os.environ, "FULL_DISK_BY_RLIMIT": "1"}
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout.splitlines()[-1])
        print(case, "on", "a full tmpfs" if tmpfs else "RLIMIT_FSIZE 0", ":", report)
        return report

    return run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, mnist_mirror) -> Path:
    """A model folder (untrained, 8-bit), three digit PNGs and a file compressed from them."""
    from mnist_vae.cli import main
    from mnist_vae.model.vae import VAEConfig, save_model
    from mnist_vae.training.loop import seeded_model

    folder = tmp_path_factory.mktemp("full-disk")
    save_model(
        seeded_model(VAEConfig(latent_dim=4, likelihood="beta_binomial"), 0), folder / "model"
    )
    raw = gzip.decompress((mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes())
    digits = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:3]
    for i, digit in enumerate(digits):
        Image.fromarray(digit).save(folder / f"d{i}.png")
    pictures = [str(folder / f"d{i}.png") for i in range(3)]
    assert (
        main(
            ["compress", *pictures, "-o", str(folder / "d.mvae"), "--model", str(folder / "model")]
        )
        == 0
    )
    return folder


# -- in the process on the full disk ----------------------------------------------------


def _listing(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "filler"
    }


def _fill(folder: Path, room: int = 0) -> None:
    """Leave ``room`` bytes free in ``folder``'s file system (or, by RLIMIT, let no file grow
    past ``room`` bytes)."""
    if os.environ.get("FULL_DISK_BY_RLIMIT"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (room, resource.RLIM_INFINITY))
        return
    with open(folder / "filler", "wb", buffering=0) as filler:
        with contextlib.suppress(OSError):
            while True:
                filler.write(bytes(1 << 20))  # the last one short, then refused
        filler.truncate(max(0, filler.tell() - room))


def _act(case: str, folder: Path, workdir: Path) -> dict:
    """Seed an old output into ``folder``, fill the disk, write the new one over it."""
    import torch

    # the codecs' imports (joblib probes /dev/shm) write before the disk fills, not after
    import mnist_vae.compression.lossless
    import mnist_vae.compression.lossy  # noqa: F401
    from mnist_vae.cli import main
    from mnist_vae.errors import WriteError
    from mnist_vae.model.vae import load_model, save_model
    from mnist_vae.training.checkpoint import Checkpoint

    model = str(workdir / "model")
    pictures = [str(workdir / f"d{i}.png") for i in range(3)]
    if case == "compress":  # the CLI writes a compressed file
        shutil.copy(workdir / "d.mvae", folder / "d.mvae")
        _fill(folder)
        argv = ["compress", *pictures[:2], "-o", str(folder / "d.mvae"), "--force"]
    elif case == "decompress":  # the CLI writes a folder of pictures
        (folder / "out").mkdir()
        shutil.copy(workdir / "d0.png", folder / "out" / "00000.png")
        _fill(folder)
        argv = ["decompress", str(workdir / "d.mvae"), "-o", str(folder / "out"), "--force"]
    else:  # the train stage writes the model folder, and its checkpoint every epoch
        vae = load_model(model)
        if case == "model_folder":
            save_model(vae, folder / "model")
        checkpoint = Checkpoint(folder / "train.pt", "fingerprint")
        if case == "checkpoint":
            checkpoint.save({"epoch": 1, "model": vae.state_dict()})
        _fill(folder, room=64 << 10)  # config.json fits, the weights do not
        with torch.no_grad():
            for weight in vae.parameters():
                weight.add_(1.0)
        error, chain = None, []
        try:
            if case == "model_folder":
                save_model(vae, folder / "model")
            else:
                checkpoint.save({"epoch": 2, "model": vae.state_dict()})
        except WriteError as refused:
            error, cause = str(refused), refused.__cause__
            while cause is not None:
                chain, cause = [*chain, type(cause).__name__], cause.__cause__
        report = {"error": error, "caused by": chain, "files": _listing(folder)}
        if case == "checkpoint":
            report["epoch"] = (checkpoint.load() or {}).get("epoch")
        return report
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        status = main([*argv, "--model", model])
    return {"status": status, "stderr": errors.getvalue(), "files": _listing(folder)}


# -- the tests ---------------------------------------------------------------------------


def _old(workdir: Path, case: str) -> dict[str, str]:
    """What the folder held before the disk filled."""
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    if case == "compress":
        return {"d.mvae": digest(workdir / "d.mvae")}
    if case == "decompress":
        return {"out/00000.png": digest(workdir / "d0.png")}
    if case == "model_folder":
        return {f"model/{f.name}": digest(f) for f in sorted((workdir / "model").iterdir())}
    raise ValueError(case)  # the checkpoint: its epoch is read back instead


@pytest.mark.parametrize("case", ["compress", "decompress"])
def test_the_command_line_on_a_full_disk_says_so_in_one_line_and_keeps_the_old_output(
    case, workdir, on_full_disk
):
    report = on_full_disk(case, workdir)
    assert report["status"] == 1
    assert report["stderr"].count("\n") == 1, report["stderr"]  # one line, no traceback
    assert any(reason in report["stderr"] for reason in NO_SPACE), report["stderr"]
    assert f"mnist-vae {case}: error: cannot write" in report["stderr"]
    assert report["files"] == _old(workdir, case)  # no partial file, the old one whole


def test_a_model_folder_on_a_full_disk_is_refused_whole(workdir, on_full_disk):
    report = on_full_disk("model_folder", workdir)
    assert report["error"] and any(reason in report["error"] for reason in NO_SPACE)
    if "No space" in report["error"]:  # config.json fitted; torch's writer ran out of room
        assert report["caused by"] == ["OSError", "RuntimeError"]
    assert report["files"] == _old(workdir, "model_folder")  # the old folder, nothing beside


def test_a_checkpoint_on_a_full_disk_is_refused_and_the_last_one_kept(workdir, on_full_disk):
    report = on_full_disk("checkpoint", workdir)
    assert report["error"] and any(reason in report["error"] for reason in NO_SPACE)
    assert list(report["files"]) == ["train.pt"]  # no partial file beside it
    assert report["epoch"] == 1  # the last checkpoint, whole


def test_a_stage_reports_a_write_error_in_one_line(capsys):
    """What the train stage does with the model folder's error: one line, exit status 1."""
    from mnist_vae.errors import WriteError
    from mnist_vae.stage import run

    def main():
        raise WriteError.of(Path("data/model"), OSError(28, "No space left on device"))

    with pytest.raises(SystemExit) as exit:
        run(main, "train")
    assert exit.value.code == 1
    assert capsys.readouterr().err == (
        "train: error: cannot write data/model (No space left on device); it is left as it "
        "was: free some space on its disk (or write elsewhere) and run again\n"
    )


if __name__ == "__main__":
    case, folder, workdir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    print(json.dumps(_act(case, folder, workdir)))
