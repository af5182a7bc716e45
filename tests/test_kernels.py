"""The compiled likelihood kernels compute the integers of the tensor arithmetic they replace:
``fixed_point.Table``'s lookups and the logistic mixture's CDF, written out here in tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mnist_vae.compression import exact_likelihoods, kernels
from mnist_vae.compression.fixed_point import (
    ACTIVATION_BITS,
    PROBABILITY_BITS,
    SCALE_RANGE,
    tables,
)
from mnist_vae.model.likelihoods import _MIN_LOG_SCALE, LEVELS, MIXTURE


@pytest.mark.parametrize("name", sorted(tables()))
def test_the_compiled_lookup_is_the_table(name):
    """At the arguments the codecs use and finer, inside the table, between its entries
    and beyond both ends (where it is constant)."""
    table = tables()[name]
    span = len(table.values) - 1
    for extra_bits in (0, 6, 12):
        x_bits = table.step_bits + extra_bits
        lo = table.lo << extra_bits
        generator = np.random.default_rng(extra_bits)
        inside = generator.integers(lo, lo + (span << extra_bits), 300)
        x = np.concatenate([inside, [lo - 1, lo, lo + (span << extra_bits), lo - 10**9, 10**9]])
        expected = table(torch.from_numpy(x), x_bits).tolist()
        arguments = kernels.table_arguments(table, x_bits)
        assert [kernels._lookup(*arguments, int(v)) for v in x] == expected


def test_an_argument_coarser_than_the_table_is_refused():
    table = tables()["sigmoid"]
    with pytest.raises(ValueError, match="coarser"):
        kernels.table_arguments(table, table.step_bits - 1)


def _reference_cdf(rows: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The mixture's CDF at grey-level edges in tensor operations (exact_likelihoods'
    definition): weights from the exp table, clamped means, inverse scales, the sigmoid
    table at every edge, the total at edge 255."""
    t, bits = tables(), ACTIVATION_BITS
    logits, means, log_scales = rows.split(MIXTURE, dim=1)
    e = t["exp_neg"](logits.amax(1, keepdim=True) - logits, bits)
    weights = (e << exact_likelihoods.WEIGHT_BITS) // e.sum(1, keepdim=True)
    means = means.clamp(-8 << bits, 8 << bits)
    low, high = int(_MIN_LOG_SCALE) << bits, SCALE_RANGE << bits
    inv_scales = t["exp"](-log_scales.clamp(low, high), bits) >> 4
    inner = torch.from_numpy(exact_likelihoods._inner_edges())
    edges = inner[levels.clamp(max=LEVELS - 2)].expand(len(rows), -1)  # [M, E]
    u = (edges[:, None, :] - means[:, :, None]) * inv_scales[:, :, None]
    shift = 2 * bits + 4 - exact_likelihoods.ARGUMENT_BITS
    values = t["sigmoid"](u >> shift, exact_likelihoods.ARGUMENT_BITS)
    cdf = (values * weights[:, :, None]).sum(1)
    total = weights.sum(1, keepdim=True) << PROBABILITY_BITS
    return torch.where(levels < LEVELS - 1, cdf, total)


ROWS = st.integers(1, 6).flatmap(
    lambda m: arrays(np.int64, (m, 3 * MIXTURE), elements=st.integers(-(2**25), 2**25))
)


@settings(max_examples=60, deadline=None)
@given(rows=ROWS, data=st.data())
def test_the_mixture_kernels_give_the_tensor_arithmetic_integers(rows, data):
    """Any parameters (beyond every clamp too), any levels (below level 0 and past the
    last edge too), any rows, read from any start: the differences of the same CDF."""
    levels = data.draw(
        arrays(np.int64, data.draw(st.integers(1, 20)), elements=st.integers(-1, LEVELS - 1))
    )
    index = data.draw(
        arrays(np.int64, data.draw(st.integers(0, 8)), elements=st.integers(0, len(rows) - 1))
    )
    starts = data.draw(arrays(np.int64, len(index), elements=st.integers(0, len(levels) - 1)))
    count = data.draw(st.integers(2, len(levels) + 3))
    mixture = exact_likelihoods.Mixture.of(torch.from_numpy(rows))
    got = mixture.frequencies(levels, starts, count, index)
    read = torch.from_numpy(levels[np.minimum(starts[:, None] + np.arange(count), len(levels) - 1)])
    cdf = _reference_cdf(torch.from_numpy(rows[index]), read.clamp(min=0))
    expected = torch.diff(torch.where(read < 0, 0, cdf), dim=1)
    assert got.shape == (len(index), count - 1) and torch.equal(got, expected)
