"""The pixel likelihoods in integers: the float distributions, to within what no rate can
see, from integer operations only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mnist_vae.compression import exact_likelihoods
from mnist_vae.compression.fixed_point import ACTIVATION_BITS
from mnist_vae.model.likelihoods import LIKELIHOODS, pixel_rows

CODING = ["bce", "beta_binomial", "logistic_mixture"]


def _integer_params(name: str, n: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    shape = (n, LIKELIHOODS[name].channels, 28, 28)
    params = 2 * torch.randn(shape, generator=generator, dtype=torch.float64)
    return torch.round(params * 2**ACTIVATION_BITS).long()


@pytest.mark.parametrize("name", CODING)
def test_the_integer_frequencies_are_the_distribution(name):
    """What the coder sees, computed in integers from integer parameters, is the float
    distribution of the same parameters within 1e-4 bits per pixel (the codec's rate)."""
    integer = _integer_params(name)
    table = exact_likelihoods.frequencies(name, pixel_rows(integer))
    assert table.dtype == torch.int64 and (table >= 0).all() and table.max() < 2**53
    integer_log_p = torch.log(table.double() / table.sum(-1, keepdim=True))
    exact = LIKELIHOODS[name].log_probs(integer.double() / 2**ACTIVATION_BITS).flatten(0, 1)
    kl = (exact.exp() * (exact - integer_log_p.clamp(min=-40))).sum(-1) / math.log(2)
    assert kl.mean() < 1e-4


@pytest.mark.parametrize("name", ["beta_binomial", "logistic_mixture"])
def test_the_zero_split_is_the_full_table_split(name):
    rows = pixel_rows(_integer_params(name))
    table = exact_likelihoods.frequencies(name, rows)
    zero = exact_likelihoods.zero_frequencies(name, rows)
    assert torch.equal(zero[:, 1], table[:, 0])
    assert torch.equal(zero[:, 0], table[:, 1:].sum(1))


@pytest.mark.parametrize("name", ["beta_binomial", "logistic_mixture"])
def test_prepared_rows_and_their_subsets_give_the_integers_of_the_rows(name):
    """The codec prepares a pass's rows once for the three symbols of its pixels (a
    mixture's weights and scales) and reads the rows of the pixels that are not 0 by
    ``index``: every table as from the rows themselves, or from those rows alone."""
    rows = pixel_rows(_integer_params(name, n=1))
    some = np.arange(3, len(rows), 7)
    groups = np.arange(len(some)) % 16
    prepared = exact_likelihoods.prepared(name, rows)
    assert torch.equal(
        exact_likelihoods.frequencies(name, prepared), exact_likelihoods.frequencies(name, rows)
    )
    for table in ("zero_frequencies", "bin_frequencies"):
        f = getattr(exact_likelihoods, table)
        assert torch.equal(f(name, prepared), f(name, rows)), table
        expected = f(name, rows[torch.from_numpy(some)])
        assert torch.equal(f(name, prepared, index=some), expected), table
        assert torch.equal(f(name, rows, index=some), expected), table
    f = exact_likelihoods.in_bin_frequencies
    expected = f(name, rows[torch.from_numpy(some)], groups)
    assert torch.equal(f(name, prepared, groups, index=some), expected)
    assert torch.equal(f(name, rows, groups, index=some), expected)
