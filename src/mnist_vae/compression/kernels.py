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
def mixture_cdf(weights, means, inv_scales, levels, edges, sigmoid, product_shift, total_shift):
    """The CDF of each mixture row at grey-level edges ``levels`` (``[1, E]`` for every
    row, or ``[M, E]`` one set per row; level ``i`` at ``edges[i]``, the edge between
    levels ``i`` and ``i + 1``; a level past the last edge is the total), ``[M, E]``:
    ``Mixture.cdf``'s integers. ``sigmoid`` is ``table_arguments`` of the sigmoid table
    at the scale of ``(edge - mean) * inv_scale >> product_shift``."""
    m, k = weights.shape
    shared = len(levels) == 1
    cdf = np.empty((m, levels.shape[1]), np.int64)
    for r in range(m):
        row = levels[0] if shared else levels[r]
        for j in range(len(row)):
            acc = 0
            if row[j] >= len(edges):
                for c in range(k):
                    acc += weights[r, c]
                cdf[r, j] = acc << total_shift
                continue
            edge = edges[row[j]]
            for c in range(k):
                u = ((edge - means[r, c]) * inv_scales[r, c]) >> product_shift
                acc += _lookup(*sigmoid, u) * weights[r, c]
            cdf[r, j] = acc
    return cdf
