"""The sweep's cached SSIM and PSNR are torchmetrics' figures (``distortion``), bit for bit."""

import gzip

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.functional.image.ssim import _gaussian_kernel_2d

from mnist_vae.compression.distortion import distortion
from mnist_vae.compression.reference import Reference, _window_means


@pytest.fixture(scope="module")
def test_digits(mnist_mirror) -> np.ndarray:
    raw = gzip.decompress((mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:1200].copy()


@st.composite
def image_pairs(draw):
    """Originals and a decoded set: any size SSIM's window fits (at least 6 pixels a side),
    decoded anywhere from the originals themselves to unrelated noise."""
    n = draw(st.integers(1, 40))
    h, w = draw(st.integers(6, 30)), draw(st.integers(6, 30))
    seed, noise = draw(st.integers(0, 2**32 - 1)), draw(st.sampled_from([0, 1, 8, 60, 255]))
    rng = np.random.default_rng(seed)
    originals = rng.integers(0, 256, (n, h, w)).astype(np.uint8)
    decoded = np.clip(originals + rng.integers(-noise, noise + 1, originals.shape), 0, 255)
    return originals, decoded.astype(np.uint8)


@settings(max_examples=60, deadline=None)
@given(pair=image_pairs(), batch=st.integers(1, 50))
def test_the_figures_are_torchmetrics_bit_for_bit(pair, batch):
    originals, decoded = pair
    reference = Reference(originals, batch)
    assert reference.distortion(decoded) == distortion(originals, decoded, batch)
    assert reference.distortion(originals) == distortion(originals, originals, batch)


def test_one_reference_measures_many_decoded_sets_like_a_fresh_one(test_digits):
    rng = np.random.default_rng(0)
    reference = Reference(test_digits)
    for noise in (3, 40, 120):
        decoded = np.clip(test_digits + rng.integers(-noise, noise + 1, test_digits.shape), 0, 255)
        decoded = decoded.astype(np.uint8)
        assert reference.distortion(decoded) == distortion(test_digits, decoded)


def test_the_depthwise_window_sums_equal_the_one_channel_convolution():
    """What the speed rests on: each map as a channel of its own gives every sum exactly."""
    kernel = _gaussian_kernel_2d(1, [11, 11], [1.5, 1.5], torch.float32, "cpu")
    generator = torch.Generator().manual_seed(0)
    for scale in (1.0, 255.0, 255.0**2):
        maps = torch.rand(700, 1, 38, 38, generator=generator) * scale
        assert torch.equal(_window_means(maps, kernel), F.conv2d(maps, kernel))


def test_decoded_images_of_another_shape_are_refused(test_digits):
    with pytest.raises(ValueError, match="differ from originals"):
        Reference(test_digits).distortion(test_digits[:, :20])
