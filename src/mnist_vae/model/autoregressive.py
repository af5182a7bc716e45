"""The autoregressive pixel head: each pixel's distribution also sees the pixels already coded.

A factorized decoder gives every pixel its distribution from ``z`` alone, so it pays again
for what the pixel to the left and the one above already said (where a stroke's edge is,
how thick it is). The head (after PixelVAE, Gulrajani et al. 2017, kept local) reads, for
each pixel, the decoder's ``features`` channels there and the ``context``: the pixels of a
``(2r + 1)``-wide window that come before it in raster order (the ``r`` rows above it and
the ``r`` pixels to its left), and turns them with a small per-pixel network into the
likelihood's parameters.

Trained with teacher forcing, the whole image at once (the true pixels are the context).
Decoded, it runs one position at a time over a batch of images: 784 small steps, each
reading only pixels that are already known. Both read the context with the same index
table (``PixelHead.context``), and the floating-point and the integer network
(``fixed_point``) both run the per-pixel network on rows of ``features + context``
numbers, so a position's parameters are the same whether the image is done at once or a
pixel at a time.

A pixel enters the context as its grey level ``k / 256`` (integers ``k`` 0..255, so the
integer network reads it exactly as ``k << 8`` at ``2^-16``); outside the image it is 0,
black, as MNIST's border is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .likelihoods import LEVELS, pixel_rows

CONTEXT_SCALE = 256
"""a grey level ``k`` enters the context as ``k / CONTEXT_SCALE``"""


def causal_offsets(radius: int) -> list[tuple[int, int]]:
    """The window's (row, column) offsets that come before its centre in raster order."""
    rows = [(dy, dx) for dy in range(-radius, 0) for dx in range(-radius, radius + 1)]
    return rows + [(0, dx) for dx in range(-radius, 0)]


class PixelHead(nn.Module):
    """The per-pixel network: ``features + context`` numbers in, ``channels`` out."""

    def __init__(
        self, features: int, channels: int, hidden: int, radius: int, size: int, slope: float
    ) -> None:
        super().__init__()
        self.radius, self.size = radius, size
        offsets = causal_offsets(radius)
        self.network = nn.Sequential(
            nn.Linear(features + len(offsets), hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, channels),
        )
        # Index of each (offset, position) in the padded canvas, flattened: [context, H * W].
        self.width = width = size + 2 * radius  # the canvas: radius columns each side, radius above
        rows = torch.arange(size).repeat_interleave(size)
        cols = torch.arange(size).repeat(size)
        index = [(rows + radius + dy) * width + cols + radius + dx for dy, dx in offsets]
        self.register_buffer("index", torch.stack(index), persistent=False)

    def canvas(self, levels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[N, 1, H, W]`` (in context units) padded with the zeros that the window
        reads beyond the image, flattened: ``[N, (H + r) * (W + 2 r)]``."""
        r = self.radius
        return nn.functional.pad(levels[:, 0], (r, r, r, 0)).flatten(1)

    def empty_canvas(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """A canvas of ``n`` black images, for decoding into (same dtype as ``like``)."""
        rows = self.size + self.radius
        return torch.zeros(n, rows * self.width, dtype=like.dtype, device=like.device)

    def context(self, canvas: torch.Tensor, position: int | None = None) -> torch.Tensor:
        """The context of every pixel, ``[N, H * W, context]``, or of one position,
        ``[N, context]``."""
        if position is None:
            return canvas[:, self.index].transpose(1, 2)
        return canvas[:, self.index[:, position]]

    def set_pixel(self, canvas: torch.Tensor, position: int, value: torch.Tensor) -> None:
        """Write the decoded pixels of one position into the canvas (in context units)."""
        row, col = divmod(position, self.size)
        canvas[:, (row + self.radius) * self.width + col + self.radius] = value

    def _canvas_of(self, x: torch.Tensor) -> torch.Tensor:
        """The canvas of images ``x`` (``[N, 1, H, W]`` in [0, 1])."""
        return self.canvas(torch.round(x * (LEVELS - 1)) / CONTEXT_SCALE)

    def forward(self, features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the parameters ``[N, channels, H, W]`` of every pixel of images
        ``x`` (``[N, 1, H, W]`` in [0, 1]) given the decoder's ``features`` there."""
        context = self.context(self._canvas_of(x)).flatten(0, 1)
        out = self.network(torch.cat([pixel_rows(features), context], 1))
        return self._as_images(out, features.shape)

    def context_share(self, x: torch.Tensor) -> torch.Tensor:
        """The context's share of the first layer (its bias included) at every pixel of
        images ``x``: ``[N, H * W, hidden]``. It does not depend on ``z``, so scoring many
        codes against one image (``shared_forward``) computes it once."""
        first, split = self.network[0], self._split
        return nn.functional.linear(
            self.context(self._canvas_of(x)), first.weight[:, split:], first.bias
        )

    def shared_forward(self, features: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
        """Teacher forcing for ``m`` codes per image: ``features`` ``[N * m, F, H, W]`` (the
        codes of image ``i`` in rows ``i * m`` to ``i * m + m - 1``) and the images'
        ``context_share`` ``[N, H * W, hidden]``; the parameters ``[N * m, channels, H, W]``.
        The same numbers as ``forward`` up to rounding (the first layer in two parts)."""
        first, split = self.network[0], self._split
        n, hw = share.shape[:2]
        rows = features.flatten(2).transpose(1, 2)  # [N * m, H * W, F]
        hidden = torch.matmul(rows, first.weight[:, :split].T).view(n, -1, hw, share.shape[2])
        out = self.network[1:]((hidden + share.unsqueeze(1)).flatten(0, 1))
        return self._as_images(out, features.shape)

    @property
    def _split(self) -> int:
        """Where the features end and the context begins in the first layer's inputs."""
        return self.network[0].in_features - len(self.index)

    @staticmethod
    def _as_images(out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Per-pixel rows of parameters back to images: ``[N, channels, H, W]``."""
        n, _, h, w = shape
        return out.reshape(n, h * w, -1).transpose(1, 2).reshape(n, -1, h, w)

    def decode(
        self, features: torch.Tensor, choose: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Images ``[N, 1, H, W]`` in [0, 1] decoded a position at a time: ``choose`` turns one
        position's parameters (``[N, channels]``) into its pixel values in [0, 1].

        The features' share of the first layer is computed for every position at once; a
        step adds the context's share and runs the rest of the network on ``N`` rows."""
        n, _, h, w = features.shape
        first, rest = self.network[0], self.network[1:]
        split = self._split
        known = nn.functional.linear(pixel_rows(features), first.weight[:, :split], first.bias)
        known = known.view(n, h * w, -1)
        canvas = self.empty_canvas(n, features)
        image = torch.empty(n, h * w, dtype=features.dtype, device=features.device)
        for position in range(h * w):
            context = self.context(canvas, position)
            hidden = torch.addmm(known[:, position], context, first.weight[:, split:].T)
            image[:, position] = choose(rest(hidden))
            levels = torch.round(image[:, position] * (LEVELS - 1))
            self.set_pixel(canvas, position, levels / CONTEXT_SCALE)
        return image.view(n, 1, h, w)
