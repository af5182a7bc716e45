"""Shared fixtures: tiny synthetic IDX/MNIST files and the offline MNIST mirror."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_vae import data

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n auto`` in pyproject's addopts) the workers share the cores,
    so each takes its share of the threads: for its own tensors, and through
    ``OMP_NUM_THREADS`` for the processes its tests start (two threads per worker on two
    cores cost twice the CPU for the same work). Outputs do not depend on it: the kernels
    are pinned (docs/reproducibility.md). Nothing where the environment sets the count.

    And every process waits for OpenMP work asleep (``OMP_WAIT_POLICY=PASSIVE``), not
    spinning: side by side on shared cores, spinning threads take the cores the other
    processes need (two trainings at once: 1.5 to 1.9 times the time per step,
    ``bench/parallel_training.py``; the same bits). Set here in the controller too, before
    it starts the workers, so that they load OpenMP with it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 or config.getoption("numprocesses", None) not in (None, 0):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


# The end-to-end files, longest first, in the order pytest-xdist deals them out (pyproject's
# addopts: --dist loadfile --no-loadscope-reorder): each worker starts one of the two
# longest and takes the next file when its own is nearly done; the unit files, many and
# short, come last and even out the ends.
E2E_ORDER = ["test_pipeline.py", "test_train_stage.py", "test_shared_tracking.py",
             "test_portability.py", "test_training_matrix.py"]  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return E2E_ORDER.index(name) if name in E2E_ORDER else len(E2E_ORDER)

    items.sort(key=rank)  # stable: the order within a file, and of the unit files, is kept


def idx_bytes(array: torch.Tensor) -> bytes:
    """Encode a uint8 tensor as an IDX file (the format of the MNIST files)."""
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(
        f">{array.dim()}I", *array.shape
    )
    return header + array.contiguous().numpy().tobytes()


@pytest.fixture
def tiny_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Four tiny IDX payloads under the official names, registered as the expected checksums.

    Returns the decompressed payloads; ``tmp_path / "mirror"`` holds them gzipped,
    laid out like an official mirror.
    """
    g = torch.Generator().manual_seed(0)
    payloads = {
        "train-images-idx3-ubyte": idx_bytes(
            torch.randint(0, 256, (12, 28, 28), generator=g, dtype=torch.uint8)
        ),
        "train-labels-idx1-ubyte": idx_bytes(torch.arange(12, dtype=torch.uint8) % 10),
        "t10k-images-idx3-ubyte": idx_bytes(
            torch.randint(0, 256, (5, 28, 28), generator=g, dtype=torch.uint8)
        ),
        "t10k-labels-idx1-ubyte": idx_bytes(torch.arange(5, dtype=torch.uint8)),
    }
    monkeypatch.setattr(
        data, "MNIST_SHA256", {k: hashlib.sha256(v).hexdigest() for k, v in payloads.items()}
    )
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, payload in payloads.items():
        (mirror / f"{name}.gz").write_bytes(gzip.compress(payload, mtime=0))
    return payloads


@pytest.fixture(scope="session")
def mnist_mirror() -> Path:
    """The real MNIST files offline: $MNIST_MIRROR, else ../shared/data/mnist beside the repo."""
    mirror = Path(os.environ.get(data.MIRROR_ENV) or ROOT.parent / "shared" / "data" / "mnist")
    if not all((mirror / f"{name}.gz").is_file() for name in data.MNIST_SHA256):
        pytest.skip(f"no local MNIST mirror at {mirror}; set {data.MIRROR_ENV}")
    return mirror.resolve()


_DECODER = (
    "import sys, numpy as np, torch\n"
    "torch.set_num_threads(int(sys.argv[4]))\n"
    "from mnist_vae.compression.lossless import BitsBackCodec\n"
    "codec = BitsBackCodec.from_folder(sys.argv[1])\n"
    "np.save(sys.argv[3], codec.decompress(open(sys.argv[2], 'rb').read()))\n"
)


@pytest.fixture
def decoded_elsewhere(tmp_path) -> Callable[[Path, bytes], np.ndarray]:
    """``decoded_elsewhere(folder, data)``: the images a fresh interpreter decodes from a
    lossless or near-lossless file ``data`` with the model in ``folder``, on another thread
    count than this process's (one, or two where this one has one, as under xdist on two
    cores)."""

    def decode(folder: Path, data: bytes) -> np.ndarray:
        stream, out = tmp_path / "elsewhere.mvae", tmp_path / "elsewhere.npy"
        stream.write_bytes(data)
        threads = 2 if torch.get_num_threads() == 1 else 1
        args = [str(folder), str(stream), str(out), str(threads)]
        subprocess.run([sys.executable, "-c", _DECODER, *args], check=True)
        return np.load(out)

    return decode
