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
    at other edges of the same mixture: ``prepared`` computes this once for all three.
    Indexing takes some rows, as on the parameter rows. Both are one ``kernels`` call."""

    weights: np.ndarray  # [M, K] int64
    means: np.ndarray  # [M, K], at 2^-ACTIVATION_BITS
    inv_scales: np.ndarray  # [M, K], at 2^-20

    device = torch.device("cpu")

    @classmethod
    def of(cls, rows: torch.Tensor) -> Mixture:
        """From the exact network's parameter rows ``[M, 3 K]`` (``kernels.mixture``)."""
        t = tables()
        return cls(*kernels.mixture(
            np.ascontiguousarray(rows.numpy()),
            MIXTURE,
            kernels.table_arguments(t["exp_neg"], ACTIVATION_BITS),
            kernels.table_arguments(t["exp"], ACTIVATION_BITS),
            WEIGHT_BITS,
            8 << ACTIVATION_BITS,
            (int(_MIN_LOG_SCALE) << ACTIVATION_BITS, SCALE_RANGE << ACTIVATION_BITS),
        ))  # fmt: skip

    def __len__(self) -> int:
        return len(self.weights)

    def __getitem__(self, index: torch.Tensor | np.ndarray) -> Mixture:
        index = np.asarray(index)
        return Mixture(self.weights[index], self.means[index], self.inv_scales[index])

    def cdf(self, levels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The CDF at grey-level edges ``levels`` (``cdf_at``'s), ``[M, E]``: each
        logistic's CDF at the inner edge of each level from the sigmoid table, weighted;
        the total at edge 255 (``kernels.mixture_cdf``)."""
        levels = np.asarray(levels, dtype=np.int64)
        cdf = kernels.mixture_cdf(
            self.weights, self.means, self.inv_scales,
            np.ascontiguousarray(levels.reshape(-1, levels.shape[-1])),
            _inner_edges(),
            kernels.table_arguments(tables()["sigmoid"], ARGUMENT_BITS),
            2 * ACTIVATION_BITS + 4 - ARGUMENT_BITS,  # (edge - mean) / scale at 2^-20
            PROBABILITY_BITS,
        )  # fmt: skip
        return torch.from_numpy(cdf)


Rows = torch.Tensor | Mixture
"""a likelihood's parameters per pixel: the exact network's rows, or a ``prepared`` mixture"""


def prepared(loss: str, rows: torch.Tensor) -> Rows:
    """``rows`` with what every CDF of them shares computed once (a logistic mixture's
    weights and scales); the rows themselves for the other likelihoods."""
    return Mixture.of(rows) if loss == "logistic_mixture" else rows


def _mixture(rows: Rows) -> Mixture:
    return rows if isinstance(rows, Mixture) else Mixture.of(rows)


def _logistic_mixture(rows: Rows) -> torch.Tensor:
    cdf = _mixture(rows).cdf(LOSSLESS_EDGES)
    return torch.diff(cdf, dim=1, prepend=torch.zeros_like(cdf[:, :1]))


LOSSLESS_EDGES = np.arange(LEVELS, dtype=np.int64)
"""Symbol edges (``cdf_at``) when each grey level is its own symbol"""


def cdf_at(loss: str, rows: Rows, at: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The CDF of each pixel row at grey-level edges ``at`` (NumPy ``[E]``, the same for
    every row, or a tensor ``[M, E]``, one set per row), ``[M, E]``: edge ``i`` lies between
    levels ``i`` and ``i + 1``, so its CDF is the mass of levels ``0..i``; edge 255 is the
    total. The logistic mixture evaluates its CDF at those edges only; the others sum their
    full table."""
    if loss == "logistic_mixture":
        return _mixture(rows).cdf(at)
    cumulative = frequencies(loss, rows).cumsum(1)
    index = _on(rows, at).expand(len(rows), -1) if isinstance(at, np.ndarray) else at
    return cumulative.gather(1, index)


def zero_frequencies(loss: str, rows: Rows, edges: np.ndarray = LOSSLESS_EDGES) -> torch.Tensor:
    """Integer probabilities of (not symbol 0, symbol 0) per pixel row, ``[M, 2]``: most MNIST
    pixels are 0, so the coder sends that first and needs more only for the others.

    A pixel is coded as one of ``len(edges)`` symbols, symbol ``s`` holding the grey levels
    above edge ``edges[s - 1]`` up to edge ``edges[s]`` (``cdf_at``'s edges; the last is
    255). Lossless, ``LOSSLESS_EDGES``: each level is its own symbol; near-lossless
    (``near_lossless.Bins``), a bin of levels."""
    cdf = cdf_at(loss, rows, edges[[0, -1]])
    return torch.stack([cdf[:, 1] - cdf[:, 0], cdf[:, 0]], dim=1)


def bin_frequencies(loss: str, rows: Rows, edges: np.ndarray = LOSSLESS_EDGES) -> torch.Tensor:
    """Integer probabilities of the bins of 16 symbols of a pixel that is not symbol 0,
    ``[M, bins]``: bin ``c`` holds the symbols ``16 c + 1 .. 16 c + 16`` (lossless: 16 bins,
    the last one the values 241..255). A symbol is coded as its bin, then its place in the
    bin (``in_bin_frequencies``): the same probability, at 32 CDF values per pixel instead
    of 255."""
    below = edges[: len(edges) - 1 : BIN]  # the edge below each bin's first symbol
    cdf = cdf_at(loss, rows, np.concatenate([below, edges[-1:]]))
    return torch.diff(cdf, dim=1)


def in_bin_frequencies(
    loss: str, rows: Rows, bins: torch.Tensor, edges: np.ndarray = LOSSLESS_EDGES
) -> torch.Tensor:
    """Integer probabilities of the 16 symbols of each row's bin ``bins`` (``[M]``),
    ``[M, 16]`` (0 for the places past the last symbol)."""
    position = BIN * bins.to(rows.device)[:, None] + torch.arange(BIN + 1, device=rows.device)
    at = _on(rows, edges)[position.clamp(max=len(edges) - 1)]
    return torch.diff(cdf_at(loss, rows, at), dim=1)


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
