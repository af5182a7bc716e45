"""A logistic mixture's integer CDF, compiled: one call per table instead of a hundred.

The lossless codec decodes a pass of pixels at a time (784 passes per coding group under
the raster head), and each pass needs the CDF of every pixel's mixture at a few edges.
Written as tensor operations, one such table took about twenty operations of a few
microseconds each, whatever the batch, and a decoded pass about a hundred (Results: pass
schedules). Here the same integer arithmetic (``exact_likelihoods.Mixture``'s) runs as
loops that numba compiles once (cached beside this file), one call per table.

The integers are the same as the tensor code's, on every CPU: there is no floating point
in these loops, and int64 sums do not depend on their order. ``tests/test_kernels.py``
checks the kernels against ``fixed_point.Table`` and the mixture's formula in tensors.
"""

from __future__ import annotations

import numba
import numpy as np

from .fixed_point import Table


def table_arguments(table: Table, x_bits: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """What ``_lookup`` needs to evaluate ``table`` at arguments at ``2^-x_bits``."""
    shift = x_bits - table.step_bits
    if shift < 0:
        raise ValueError("the argument is coarser than the table's grid")
    return table.values.numpy(), table.slopes.numpy(), table.lo, shift


@numba.njit(cache=True, nogil=True)
def _lookup(values, slopes, lo, shift, x):  # pragma: no cover - compiled
    """``Table.__call__`` for one integer: linear between the entries, constant beyond."""
    position = min(max(x - (lo << shift), 0), (len(values) - 1) << shift)
    index = position >> shift
    return ((slopes[index] * (position & ((1 << shift) - 1))) >> shift) + values[index]


@numba.njit(cache=True, nogil=True)
def mixture(rows, components, exp_neg, exp, weight_bits, mean_limit, log_scale_range):
    """The weights, clamped means and inverse scales of mixture rows ``[M, 3 K]`` (int64
    logits, means, log-scales at the network's ``2^-16``): ``Mixture.of``'s integers.
    ``exp_neg`` and ``exp`` are ``table_arguments`` of those tables at ``2^-16``."""
    m, k = len(rows), components
    weights = np.empty((m, k), np.int64)
    means = np.empty((m, k), np.int64)
    inv_scales = np.empty((m, k), np.int64)
    low, high = log_scale_range
    for r in range(m):
        top = rows[r, 0]
        for c in range(1, k):
            top = max(top, rows[r, c])
        total = 0
        for c in range(k):
            weights[r, c] = _lookup(*exp_neg, top - rows[r, c])
            total += weights[r, c]
        for c in range(k):
            weights[r, c] = (weights[r, c] << weight_bits) // total
            means[r, c] = min(max(rows[r, k + c], -mean_limit), mean_limit)
            log_scale = min(max(rows[r, 2 * k + c], low), high)
            inv_scales[r, c] = _lookup(*exp, -log_scale) >> 4
    return weights, means, inv_scales


@numba.njit(cache=True, nogil=True)
def mixture_frequencies(
    weights,
    means,
    inv_scales,
    rows,
    levels,
    starts,
    count,
    edges,
    sigmoid,
    product_shift,
    total_shift,
):  # pragma: no cover - compiled
    """The mixture's integer probability between neighbouring grey-level edges,
    ``[len(rows), count - 1]``, of mixture rows ``rows``: output row ``i`` reads the
    ``count`` levels from ``levels[starts[i]]`` (the last level repeated past the end).
    The CDF at level ``l`` is each logistic's at ``edges[l]`` (the edge between levels
    ``l`` and ``l + 1``) from the sigmoid table, weighted; 0 below level 0, the total at
    and past the last edge. ``sigmoid`` is ``table_arguments`` of the sigmoid table at
    the scale of ``(edge - mean) * inv_scale >> product_shift``.

    A symbol's table in one call: no CDF array, no difference, no copies of rows (the
    CDF is written out here, not in a helper: numba ran that ten times slower)."""
    k = weights.shape[1]
    out = np.empty((len(rows), count - 1), np.int64)
    last = len(levels) - 1
    for i in range(len(rows)):
        r = rows[i]
        below = 0
        for j in range(count):
            level = levels[min(starts[i] + j, last)]
            acc = 0
            if level >= len(edges):
                for c in range(k):
                    acc += weights[r, c]
                acc <<= total_shift
            elif level >= 0:
                edge = edges[level]
                for c in range(k):
                    u = ((edge - means[r, c]) * inv_scales[r, c]) >> product_shift
                    acc += _lookup(*sigmoid, u) * weights[r, c]
            if j:
                out[i, j - 1] = acc - below
            below = acc
    return out
