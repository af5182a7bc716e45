"""Integer arithmetic for the coders' probabilities: tables that no libm could change, a
network whose integers do not depend on how it is batched, close to the float one."""

from __future__ import annotations

import pytest
import torch

from mnist_vae.compression.fixed_point import (
    ACTIVATION_BITS,
    ExactNetwork,
    Table,
    log_fixed,
    tables,
)
from mnist_vae.model.vae import VAEConfig
from mnist_vae.training.loop import seeded_model

ULP = 2.0**-52  # a double's relative spacing


@pytest.mark.parametrize("name", sorted(tables()))
def test_no_table_entry_is_within_ten_ulps_of_a_rounding_boundary(name):
    """A libm (or a vectorised kernel) within ten ulps of this one's values gives the same
    integers (the smallest margin measured here: 17 ulps, the softplus table)."""
    margin = tables()[name].margin()
    print(f"{name}: margin {margin / ULP:.0f} ulps")
    assert margin > 10 * ULP


def test_a_table_interpolates_in_integers_and_clamps_at_its_ends():
    table = Table.of(lambda x: x * x, -2, 2, 2, 8)  # x^2 at quarters, out of 2^8
    x = torch.tensor([-3 << 4, -2 << 4, 1 << 4, (1 << 4) + 2, 5 << 4])  # at 2^-4
    assert table(x, 4).tolist() == [1024, 1024, 256, 256 + (((400 - 256) * 2) >> 2), 1024]


def test_the_integer_logarithm_is_the_logarithm():
    x = torch.tensor([1, 3, 255 << 10, 7 << 40, 2**52 - 1])
    got = log_fixed(x, 10, 20).double() / 2**20
    expected = torch.log(x.double() / 2**10)
    assert torch.allclose(got, expected, atol=2e-6)


@pytest.fixture(scope="module")
def model():
    return seeded_model(VAEConfig(latent_dim=6, likelihood="logistic_mixture"), 0).eval()


def test_the_exact_network_is_the_float_network(model):
    network = ExactNetwork(model)
    pixels = torch.randint(0, 256, (8, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    mean, logvar = network.encode(pixels)
    with torch.no_grad():
        float_mean, float_logvar = model.encode(pixels.float() / 255)
    scale = 2.0**-ACTIVATION_BITS
    assert torch.allclose(mean.double() * scale, float_mean.double(), atol=1e-3)
    assert torch.allclose(logvar.double() * scale, float_logvar.double(), atol=1e-3)
    z = torch.randint(-512, 512, (8, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        float_params = model.decode(z.float() / 256)
    assert torch.allclose(network.decode(z, 8).double() * scale, float_params.double(), atol=1e-3)


def test_the_exact_network_gives_the_same_integers_in_any_batch(model):
    """Each image's integers alone, in a batch of 37, in another order: identical (a float
    network's batch changes which kernel runs, hence the last bits)."""
    network = ExactNetwork(model)
    pixels = torch.randint(0, 256, (37, 1, 28, 28), generator=torch.Generator().manual_seed(2))
    batch_mean, _ = network.encode(pixels)
    one_by_one = torch.cat([network.encode(pixels[i : i + 1])[0] for i in range(37)])
    order = torch.randperm(37, generator=torch.Generator().manual_seed(3))
    assert torch.equal(batch_mean, one_by_one)
    assert torch.equal(network.encode(pixels[order])[0], batch_mean[order])
    z = batch_mean >> (ACTIVATION_BITS - 8)
    assert torch.equal(network.decode(z, 8)[5:6], network.decode(z[5:6], 8))


def test_the_exact_network_gives_the_same_integers_on_any_thread_count(model):
    network = ExactNetwork(model)
    pixels = torch.randint(0, 256, (64, 1, 28, 28), generator=torch.Generator().manual_seed(4))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            results.append(network.decode(network.encode(pixels)[0] >> 8, 8))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r, results[0]) for r in results)
