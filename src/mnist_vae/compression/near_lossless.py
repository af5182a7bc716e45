"""Near-lossless coding: every pixel back within ``k`` grey levels, guaranteed.

The grey levels are cut into bins of at most ``2k + 1`` levels (``Bins``), and a pixel is
sent as its bin and decoded as the bin's centre, within ``k`` of every level in the bin: the
bound holds by construction. 0 and 255 are centres, so MNIST's blank background and its
saturated strokes come back exactly.

``lossless.BitsBackCodec`` codes the bins as it codes grey levels, with the model's
likelihood summed over each bin (its CDF at the bin's edges, the same integer tables), and
z by bits-back. Everything the decoder recomputes reads the reconstruction, which it has,
not the original, which it has not: the posterior that bits-back borrows from, and the
pixel head's context. ``Bins(0)`` is lossless: each level its own bin.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import CodecError

LEVELS = 256  # 8-bit grey (this module stays free of torch: the command line imports it)

MAX_ERROR = 127
"""the largest bound a file may carry: bins of 255 levels, two of them"""
CURVE_ERRORS = (1, 2, 3, 4, 5, 7, 9, 12, 17, 23, 33, 48, 64, 101, 127)
"""the bounds of the rate-distortion curve (``rate_distortion``, and JPEG-LS at the same in
``baselines``): on MNIST's test digits their PSNRs are at most 3 dB apart below 50 dB
(20.7 dB at k = 127 up to 51.6 at k = 2; 56.9 at k = 1)"""


def check_max_error(max_error: object, lossless_allowed: bool = True) -> int:
    """``max_error`` as an int, or a one-line CodecError naming the range."""
    low = 0 if lossless_allowed else 1
    if isinstance(max_error, bool) or not isinstance(max_error, (int, np.integer)):
        raise CodecError(
            f"the largest error must be an integer {low}..{MAX_ERROR}; got {max_error!r}"
        )
    if not low <= max_error <= MAX_ERROR:
        hint = "" if lossless_allowed else " (leave it out for lossless)"
        raise CodecError(f"the largest error must be {low}..{MAX_ERROR}{hint}; got {max_error}")
    return int(max_error)


@dataclass(frozen=True)
class Bins:
    """The bins of 8-bit grey levels for a largest error ``max_error`` k (0: lossless).

    Black (0) and white (255) are bins' centres, so both come back exact: MNIST's
    background is 0 and its strokes mostly 252 to 255. From each end, bins of ``2k + 1``
    levels follow (the end bins are the half of one that fits: 0..k and 255-k..255); the
    levels left over in the middle make one narrower bin, decoded to its middle."""

    max_error: int

    def __post_init__(self) -> None:
        check_max_error(self.max_error)

    @property
    def width(self) -> int:
        return 2 * self.max_error + 1

    @cached_property
    def widths(self) -> np.ndarray:
        """The levels in each bin, from black up."""
        k, w = self.max_error, self.width
        if 2 * (k + 1) >= LEVELS:
            return np.array([k + 1, LEVELS - (k + 1)])
        middle = LEVELS - 2 * (k + 1)  # the levels between the end bins
        count = -(-middle // w)
        below = (count - 1) // 2  # full bins below the narrow one
        narrow = middle - (count - 1) * w
        return np.array([k + 1] + [w] * below + [narrow] + [w] * (count - 1 - below) + [k + 1])

    @property
    def count(self) -> int:
        """The symbols a pixel is coded as: 256 lossless, 86 for k = 1, 2 for k = 127."""
        return len(self.widths)

    @cached_property
    def edges(self) -> np.ndarray:
        """The grey-level edge above each bin (edge ``i`` lies between levels ``i`` and
        ``i + 1``; the last bin's is 255, the top): ``exact_likelihoods``' symbol edges."""
        return np.cumsum(self.widths) - 1

    @cached_property
    def centres(self) -> np.ndarray:
        """The grey level each bin decodes to, ``uint8``: 0, 255, and each other bin's
        middle level."""
        lows = self.edges + 1 - self.widths
        centres = lows + (self.widths - 1) // 2
        centres[0], centres[-1] = 0, LEVELS - 1
        return centres.astype(np.uint8)

    @cached_property
    def _symbol_of_level(self) -> np.ndarray:
        return np.repeat(np.arange(self.count, dtype=np.int32), self.widths)

    def symbols(self, images: np.ndarray) -> np.ndarray:
        """Each pixel's bin (``int32``, the shape of ``images``)."""
        return self._symbol_of_level[images]

    def reconstruct(self, symbols: np.ndarray) -> np.ndarray:
        """The decoded pixels of bins ``symbols``, ``uint8``."""
        return self.centres[symbols]

    def quantize(self, images: np.ndarray) -> np.ndarray:
        """What a decoder gives back for ``images``: every pixel within ``max_error``."""
        return self.reconstruct(self.symbols(images))
