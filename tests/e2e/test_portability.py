"""A file decodes under every setting this machine can emulate, not only where written."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from mnist_vae.compression import portability
from mnist_vae.model.vae import VAEConfig, save_model
from mnist_vae.training.loop import seeded_model


@pytest.mark.slow
def test_every_file_decodes_exactly_under_every_setting(mnist_mirror, tmp_path):
    """Lossless, near-lossless (k = 4) and lossy files written under two settings (pinned
    AVX2 kernels at 2 threads; native kernels with ATen's scalar ones at 1 thread), each
    decoded by the ``mnist-vae`` command in a new process under seven: 1, 2 and 4 threads,
    one core, native kernels (AVX-512 where the CPU has it), scalar ATen kernels, oneDNN
    capped at SSE4.1. Lossless: every pixel back; near-lossless: every pixel its bin's
    centre. Lossy: the codes back (or the file would be refused), the picture where it was
    written to within one grey level in one pixel of ten thousand, or in one pixel where
    there are fewer (the float decoder's rounding; measured: 3 of 392,000 pixels of 500
    digits, under oneDNN at SSE4.1 only). Seven digits: coding groups of 1, 2 and 4
    images, 3 x 784 steps a file (each step costs nearly the same for 1 image as for 40, so
    more digits cost time, not cases)."""
    raw = gzip.decompress((mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes())
    digits = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:7]
    folder = tmp_path / "model"
    config = VAEConfig(
        latent_dim=6, likelihood="logistic_mixture", sampler_components=3, decoder="autoregressive"
    )  # the default decoder: its 784 steps per group must agree everywhere
    save_model(seeded_model(config, 0), folder)
    table = portability.matrix(folder, digits, tmp_path / "work")
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print("\n" + table.to_string(index=False))
    assert len(table) == len(portability.SETTINGS) * len(portability.WRITERS) * 3
    exact = table["file"].str.split(",").str[0].isin(portability.EXACT)
    assert exact.sum() == len(table) * 2 // 3
    assert (table[exact]["outcome"] == "exact").all(), table[exact]
    for outcome in table[~exact]["outcome"]:
        assert outcome == "exact" or outcome.endswith("by 1 at most"), outcome
        allowed = max(1, digits.size // 10_000)
        assert outcome == "exact" or int(outcome.split()[0]) <= allowed, outcome
