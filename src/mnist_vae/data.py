"""MNIST: fetch from mirrors, verify, and load as tensors.

The four official files are fetched one by one, each from the first source that
serves bytes whose decompressed content has the official sha256. Sources are
tried in order: ``$MNIST_MIRROR`` when set (a URL or a local folder holding the
four ``.gz`` files), then the official mirrors torchvision uses. Everything is
written into a temporary folder beside the destination and renamed into place
only when all four files are verified, so a failed or corrupt download never
leaves partial output.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from . import files
from .errors import DownloadError
from .params import BINARIZATIONS
from .progress import progress_bar

MIRROR_ENV = "MNIST_MIRROR"

OFFICIAL_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# sha256 of the *decompressed* IDX files. The gzip containers differ between
# faithful mirrors (re-compression), the payload does not.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_CHUNK = 1 << 16


class ChecksumError(ValueError):
    """Fetched bytes decompress to something other than the official file."""


def default_sources() -> list[str]:
    """``$MNIST_MIRROR`` (when set) followed by the official mirrors."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    return ([mirror] if mirror else []) + list(OFFICIAL_MIRRORS)


def _is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in {"http", "https", "file", "ftp"}


def fetch(source: str, filename: str, timeout: float, progress: bool = True) -> bytes:
    """Return the raw bytes of ``filename`` from a mirror URL or a local folder."""
    if not _is_url(source):
        return (Path(source).expanduser() / filename).read_bytes()
    url = urllib.parse.urljoin(source.rstrip("/") + "/", filename)
    request = urllib.request.Request(url, headers={"User-Agent": "mnist-vae"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        chunks = []
        with progress_bar(progress, total=total, unit="B", unit_scale=True, desc=filename) as bar:
            while chunk := response.read(_CHUNK):
                chunks.append(chunk)
                bar.update(len(chunk))
    data = b"".join(chunks)
    if total is not None and len(data) != total:
        raise OSError(f"truncated: got {len(data)} of {total} bytes")
    return data


def verified_payload(raw: bytes, name: str) -> bytes:
    """Decompress ``raw`` and check it against the official sha256 of ``name``."""
    try:
        payload = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ChecksumError(f"not a valid gzip file ({exc})") from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != MNIST_SHA256[name]:
        raise ChecksumError(f"sha256 {digest[:12]}... does not match {MNIST_SHA256[name][:12]}...")
    return payload


def download_mnist(
    dest: str | Path,
    sources: Sequence[str] | None = None,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Fetch and verify the four MNIST files into ``dest`` (decompressed IDX), atomically."""
    dest = Path(dest)
    sources = list(sources) if sources is not None else default_sources()
    with files.replaced_folder(dest) as staging:
        for name in MNIST_SHA256:
            failures = []
            for source in sources:
                try:
                    payload = verified_payload(fetch(source, f"{name}.gz", timeout, progress), name)
                except (OSError, urllib.error.URLError, ChecksumError) as exc:
                    failures.append(f"  {source}: {exc}")
                    continue
                (staging / name).write_bytes(payload)
                print(f"{name}: verified, from {source}", flush=True)
                break
            else:
                raise DownloadError(
                    f"could not obtain a verified copy of {name}.gz. Tried:\n"
                    + "\n".join(failures)
                    + f"\nSet {MIRROR_ENV} to a mirror URL or to a local folder holding the four "
                    f"MNIST .gz files, e.g. {MIRROR_ENV}=../shared/data/mnist dvc repro"
                )
    return dest


def load_split(data_dir: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as ``uint8 [N, 28, 28]`` and labels as ``int64 [N]`` of ``split`` (train/test)."""
    images_name, labels_name = SPLIT_FILES[split]
    data_dir = Path(data_dir)
    return read_image_file(str(data_dir / images_name)), read_label_file(
        str(data_dir / labels_name)
    )


def to_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, H, W]`` to ``float32 [N, 1, H, W]`` grey levels in [0, 1]."""
    return images.unsqueeze(1).float().div_(255.0)


def seeded_subset(n_total: int, limit: int, seed: int) -> torch.Tensor:
    """Indices of a seeded random subset of size ``limit`` (all, in order, when 0)."""
    if limit <= 0 or limit >= n_total:
        return torch.arange(n_total)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=generator)[:limit].sort().values


def load_images(
    data_dir: str | Path, split: str, limit: int = 0, seed: int = 0, random_subset: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images and labels of a split; ``limit`` > 0 keeps a subset (seeded or the first)."""
    images, labels = load_split(data_dir, split)
    if random_subset:
        index = seeded_subset(len(images), limit, seed)
    else:
        index = torch.arange(min(limit, len(images)) if limit > 0 else len(images))
    return to_float(images[index]), labels[index]


# Binarised test images are drawn once, with this seed whatever the run's own seed, so
# every experiment is scored on the very same binary test set.
TEST_BINARIZATION_SEED = 0


def load_test_images(
    data_dir: str | Path, limit: int = 0, binarize: str = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` test images (all when 0), grey levels or, for ``binarize="dynamic"``,
    Bernoulli pixels drawn once with a fixed seed."""
    if binarize not in BINARIZATIONS:
        raise ValueError(f"unknown binarization {binarize!r}; expected one of {BINARIZATIONS}")
    images, labels = load_images(data_dir, "test", limit, random_subset=False)
    if binarize == "dynamic":
        images = torch.bernoulli(
            images, generator=torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
        )
    return images, labels


def to_symbols(images: torch.Tensor, levels: int) -> torch.Tensor:
    """Float images ``[N, 1, H, W]`` in [0, 1] as what a codec sends: ``uint8 [N, H, W]``
    with values ``0..levels-1`` (the grey levels for 256; 0 and 1 for binary pixels)."""
    return torch.round(images.squeeze(1) * (levels - 1)).to(torch.uint8)


def dataset_digest(data_dir: str | Path) -> str:
    """One sha256 over the four verified files' checksums: identifies the data a model saw."""
    data_dir = Path(data_dir)
    h = hashlib.sha256()
    for name in MNIST_SHA256:
        h.update(hashlib.sha256((data_dir / name).read_bytes()).digest())
    return h.hexdigest()


def batches(n: int, batch_size: int, order: torch.Tensor | None = None):
    """Index slices (or index tensors, given an ``order``) of consecutive batches, with sizes:
    how every loop here walks through images held in one tensor."""
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield (order[start:stop] if order is not None else slice(start, stop)), stop - start
