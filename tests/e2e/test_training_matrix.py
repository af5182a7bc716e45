"""Every part the pipeline trains gives the same bits on 1, 2, 3 and 4 threads, each thread
count in a new process (``python -m mnist_vae.reproducibility``), on a slice of MNIST."""

from __future__ import annotations

import pandas as pd
import pytest

from mnist_vae import CPU_KERNELS, reproducibility
from mnist_vae.data import download_mnist
from mnist_vae.environment import PINNED

pytestmark = pytest.mark.slow


@pytest.mark.skipif(CPU_KERNELS != PINNED, reason="the claim is the pinned kernels'")
def test_every_part_trains_to_the_same_bits_on_one_to_four_threads(mnist_mirror, tmp_path):
    data = download_mnist(tmp_path / "mnist", [str(mnist_mirror)], progress=False)
    table = reproducibility.matrix(data, 256, list(reproducibility.PARTS))
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print("\n" + table.to_string(index=False))
    assert list(table["part"]) == list(reproducibility.PARTS)
    assert (table["outcome"] == "same bits").all(), table
