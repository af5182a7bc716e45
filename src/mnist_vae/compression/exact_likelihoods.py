"""The pixel likelihoods in integer arithmetic: the frequencies the lossless coder sees.

``likelihoods`` defines each distribution in floating point, for training and
evaluation. Here the same distributions are computed from the
``fixed_point.ExactNetwork``'s integer outputs (rows of ``channels`` int64
parameters at ``2^-ACTIVATION_BITS`` per pixel) with integer operations and
``fixed_point``'s tables only, so every platform gets the same integers. A table is
unnormalized (the coder normalizes), int64 below 2^53 (exact as the float64 that
``constriction`` takes), and may hold zeros: the coder still gives every value a little
probability, so no image is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..model.likelihoods import _MIN_CONCENTRATION, _MIN_LOG_SCALE, LEVELS, MIXTURE
from . import kernels
from .fixed_point import (
    ACTIVATION_BITS,
    PROBABILITY_BITS,
    SCALE_RANGE,
    SIGMOID_RANGE,
    log_fixed,
    tables,
)

ARGUMENT_BITS = 20  # the tables' arguments are at 2^-20
WEIGHT_BITS = 16  # a mixture's weights are integers out of about 2^16
BIN = 16  # the values 1..255 of a non-zero pixel are coded as 16 bins of 16, then the value


def _bernoulli(rows: torch.Tensor) -> torch.Tensor:
    """p(0), p(1) from the logit: the sigmoid table at -l and l."""
    sigmoid = tables()["sigmoid"]
    u = rows << (ARGUMENT_BITS - ACTIVATION_BITS)
    return torch.cat([sigmoid(-u, ARGUMENT_BITS), sigmoid(u, ARGUMENT_BITS)], dim=-1)


def _beta_binomial(rows: torch.Tensor) -> torch.Tensor:
    """By the ratio of neighbours, p(k+1) / p(k) = (n-k)(k+a) / ((k+1)(n-1-k+b)), summed in
    the log domain (the log table), p(k) from the exp table after the largest is
    subtracted. The concentrations a, b are softplus of the parameters (the softplus table,
    linear beyond it) plus the float likelihood's minimum."""
    u = rows << (ARGUMENT_BITS - ACTIVATION_BITS)
    linear = u << (PROBABILITY_BITS - ARGUMENT_BITS)
    softplus = torch.where(
        u > (SIGMOID_RANGE << ARGUMENT_BITS), linear, tables()["softplus"](u, ARGUMENT_BITS)
    )
    concentration = softplus + round(_MIN_CONCENTRATION * 2**PROBABILITY_BITS)  # at 2^-30
    a, b = concentration[:, :1], concentration[:, 1:]
    n, bits = LEVELS - 1, PROBABILITY_BITS
    k = torch.arange(n, dtype=torch.int64, device=rows.device) << bits
    counts = log_fixed((n << bits) - k, bits, ARGUMENT_BITS) - log_fixed(
        k + (1 << bits), bits, ARGUMENT_BITS
    )  # log((n - k) / (k + 1)), the same for every pixel
    steps = (
        log_fixed(k + a, bits, ARGUMENT_BITS)
        - log_fixed(((n - 1) << bits) - k + b, bits, ARGUMENT_BITS)
        + counts
    )
    log_p = torch.cat([torch.zeros_like(a), steps.cumsum(-1)], dim=-1)
    return tables()["exp_neg"](log_p.amax(-1, keepdim=True) - log_p, ARGUMENT_BITS)


@functools.cache
def _inner_edges() -> np.ndarray:
    """The 255 inner bin edges ``(2k + 1) / 255 - 1`` in [-1, 1] units, rounded to
    ``2^-ACTIVATION_BITS`` in integer arithmetic."""
    k = np.arange(LEVELS - 1, dtype=np.int64)
    numerator = (2 * k + 1 - (LEVELS - 1)) << ACTIVATION_BITS
    return (2 * numerator + (LEVELS - 1)) // (2 * (LEVELS - 1))


@dataclass(frozen=True)
class Mixture:
    """A logistic mixture's integers, one row per pixel, ready for its CDF: the weights
    from the exp table (out of about ``2^WEIGHT_BITS``), the means clamped to +-8 and the
    inverse scales (the log-scales clamped to [-7, 7], the float likelihood's floor; a
    logistic wider than e^7 is flat over the 256 levels either way) at ``2^-20``.

    A pixel's symbols (whether it is 0, its bin, its place in the bin) each need the CDF
    at other edges of the same mixture: ``prepared`` computes this once for all three
    (one ``kernels`` call), and each table reads the rows it needs by index."""

    weights: np.ndarray  # [M, K] int64
    means: np.ndarray  # [M, K], at 2^-ACTIVATION_BITS
    inv_scales: np.ndarray  # [M, K], at 2^-20

    @classmethod
    def of(cls, rows: torch.Tensor) -> Mixture:
        """From the exact network's parameter rows ``[M, 3 K]`` (``kernels.mixture``)."""
        return cls(*kernels.mixture(np.ascontiguousarray(rows.numpy()), *_mixture_arguments()))

    def __len__(self) -> int:
        return len(self.weights)

    def frequencies(
        self, levels: np.ndarray, starts: np.ndarray, count: int, index: np.ndarray
    ) -> torch.Tensor:
        """``symbol_frequencies`` of rows ``index``, in one ``kernels.mixture_frequencies``
        call: each logistic's CDF at the inner edge of each level from the sigmoid table,
        weighted; the total at edge 255."""
        table = kernels.mixture_frequencies(
            *self._arrays, index, levels, starts, count, *_cdf_arguments()
        )
        return torch.from_numpy(table)

    @property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.weights, self.means, self.inv_scales


@functools.cache
def _mixture_arguments() -> tuple:
    """``kernels.mixture``'s arguments after the rows: the components, the tables, the
    weights' bits, the means' and log-scales' clamps."""
    t = tables()
    return (
        MIXTURE,
        kernels.table_arguments(t["exp_neg"], ACTIVATION_BITS),
        kernels.table_arguments(t["exp"], ACTIVATION_BITS),
        WEIGHT_BITS,
        8 << ACTIVATION_BITS,
        (int(_MIN_LOG_SCALE) << ACTIVATION_BITS, SCALE_RANGE << ACTIVATION_BITS),
    )


@functools.cache
def _cdf_arguments() -> tuple:
    """The kernels' arguments after a mixture's arrays and levels: the inner edges, the
    sigmoid table, the shifts."""
    return (
        _inner_edges(),
        kernels.table_arguments(tables()["sigmoid"], ARGUMENT_BITS),
        2 * ACTIVATION_BITS + 4 - ARGUMENT_BITS,  # (edge - mean) / scale at 2^-20
        PROBABILITY_BITS,
    )


Rows = torch.Tensor | Mixture
"""a likelihood's parameters per pixel: the exact network's rows, or a ``prepared`` mixture"""


def prepared(loss: str, rows: torch.Tensor) -> Rows:
    """``rows`` with what every CDF of them shares computed once (a logistic mixture's
    weights and scales); the rows themselves for the other likelihoods."""
    return Mixture.of(rows) if loss == "logistic_mixture" else rows


def _mixture(rows: Rows) -> Mixture:
    return rows if isinstance(rows, Mixture) else Mixture.of(rows)


def _logistic_mixture(rows: Rows) -> torch.Tensor:
    return symbol_frequencies("logistic_mixture", rows, np.concatenate([[BELOW], LOSSLESS_EDGES]))


LOSSLESS_EDGES = np.arange(LEVELS, dtype=np.int64)
"""Symbol edges (``symbol_frequencies``) when each grey level is its own symbol"""


BELOW = -1
"""a level below level 0: the CDF there is 0"""


def symbol_frequencies(
    loss: str,
    rows: Rows,
    levels: np.ndarray,
    starts: np.ndarray | None = None,
    count: int | None = None,
    index: np.ndarray | None = None,
) -> torch.Tensor:
    """The integer probability of the grey levels between neighbouring edges of
    ``levels``, ``[M, count - 1]``. Edge ``l`` lies between levels ``l`` and ``l + 1``
    (so the CDF there is the mass of levels ``0..l``; edge 255 is the total, ``BELOW``
    none of it). Row ``i`` reads ``count`` edges from ``levels[starts[i]]`` (from the
    first, and all of them, by default; the last repeated past the end). ``index`` takes
    those rows only. The logistic mixture evaluates its CDF at those edges only; the others
    sum their full table."""
    levels = np.asarray(levels, dtype=np.int64)
    count = len(levels) if count is None else count
    m = len(rows) if index is None else len(index)
    starts = np.zeros(m, np.int64) if starts is None else np.asarray(starts, np.int64)
    if loss == "logistic_mixture":
        everything = np.arange(len(rows)) if index is None else np.asarray(index, np.int64)
        return _mixture(rows).frequencies(levels, starts, count, everything)
    some = rows if index is None else rows[torch.as_tensor(index)]
    position = np.minimum(starts[:, None] + np.arange(count), len(levels) - 1)
    cumulative = frequencies(loss, some).cumsum(1)
    cumulative = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative], 1)
    return torch.diff(cumulative.gather(1, _on(some, levels[position] + 1)), dim=1)


def zero_frequencies(
    loss: str, rows: Rows, edges: np.ndarray = LOSSLESS_EDGES, index: np.ndarray | None = None
) -> torch.Tensor:
    """Integer probabilities of (not symbol 0, symbol 0) per pixel row, ``[M, 2]``: most MNIST
    pixels are 0, so the coder sends that first and needs more only for the others.

    A pixel is coded as one of ``len(edges)`` symbols, symbol ``s`` holding the grey levels
    above edge ``edges[s - 1]`` up to edge ``edges[s]`` (``symbol_frequencies``' edges;
    the last is 255). Lossless, ``LOSSLESS_EDGES``: each level is its own symbol; near-lossless
    (``near_lossless.Bins``), a bin of levels. ``index``: those rows only."""
    levels = np.array([BELOW, edges[0], edges[-1]])
    return symbol_frequencies(loss, rows, levels, index=index).flip(1)


def bin_frequencies(
    loss: str, rows: Rows, edges: np.ndarray = LOSSLESS_EDGES, index: np.ndarray | None = None
) -> torch.Tensor:
    """Integer probabilities of the bins of 16 symbols of a pixel that is not symbol 0,
    ``[M, bins]``: bin ``c`` holds the symbols ``16 c + 1 .. 16 c + 16`` (lossless: 16 bins,
    the last one the values 241..255). A symbol is coded as its bin, then its place in the
    bin (``in_bin_frequencies``): the same probability, at 32 CDF values per pixel instead
    of 255."""
    below = edges[: len(edges) - 1 : BIN]  # the edge below each bin's first symbol
    return symbol_frequencies(loss, rows, np.concatenate([below, edges[-1:]]), index=index)


def in_bin_frequencies(
    loss: str,
    rows: Rows,
    bins: torch.Tensor | np.ndarray,
    edges: np.ndarray = LOSSLESS_EDGES,
    index: np.ndarray | None = None,
) -> torch.Tensor:
    """Integer probabilities of the 16 symbols of each row's bin ``bins`` (``[M]``),
    ``[M, 16]`` (0 for the places past the last symbol)."""
    starts = BIN * np.asarray(bins, dtype=np.int64)
    return symbol_frequencies(loss, rows, edges, starts, BIN + 1, index)


def _on(rows: Rows, edges: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(edges)).to(rows.device)


_TABLES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "bce": _bernoulli,
    "beta_binomial": _beta_binomial,
    "logistic_mixture": _logistic_mixture,
}


def frequencies(loss: str, rows: torch.Tensor) -> torch.Tensor:
    """The integer probability of every value of each pixel row, ``[M, levels]``, for the
    likelihood of ``train.loss`` ``loss``."""
    return _TABLES[loss](rows)
