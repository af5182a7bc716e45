"""The autoregressive pixel head: each pixel's distribution also sees pixels already known.

A factorized decoder gives every pixel its distribution from ``z`` alone, so it pays again
for what the neighbouring pixels already said (where a stroke's edge is, how thick it is).
The head (after PixelVAE, Gulrajani et al. 2017, kept local) reads, for each pixel, the
decoder's ``features`` channels there and the ``context``: the pixels of a ``(2r + 1)``-wide
window around it that are known before it, and turns them with a small per-pixel network
into the likelihood's parameters.

**Which pixels are known first is the pass schedule** (``PASS_SCHEDULES``). Pixels are
decoded in passes; a pass predicts all of its pixels at once from the pixels of earlier
passes, so decoding takes as many sequential steps as the schedule has passes:

* ``raster``: one pixel per pass, 784 passes; the context is the ``r`` rows above and the
  ``r`` pixels to the left (PixelCNN's order);
* ``passes-N`` (N = 2, 4, 8, 16): the 4 x 4 lattice's 16 offsets, coarse to fine
  (``COARSE_TO_FINE``), cut into N passes. ``passes-2`` is the checkerboard (He et al.
  2021), ``passes-4`` the 2 x 2 lattice (even rows and columns, then odd-odd, then the
  rest), ``passes-16`` every offset of the 4 x 4 lattice alone. A pixel sees its whole
  window, below and to the right too, wherever the pixel there came in an earlier pass,
  and which pass it is in (one input per pass).

Trained with teacher forcing, the whole image at once: the true pixels are the context,
each masked to what its pixel's pass knows. Decoded, ``run_passes`` runs the passes over a
batch of images, each reading only pixels that are already known. It is the one loop over
the passes: the pictures (``decode``, in floats) and the lossless codec (in integers,
``fixed_point``) each give it what a pass needs, and because the per-pixel network runs on
rows of ``features + context + pass`` numbers either way, a pixel's parameters are the
same whether its image is done at once or a pass at a time.

A pixel enters the context as its grey level ``k / 256`` (integers ``k`` 0..255, so the
integer network reads it exactly as ``k << 8`` at ``2^-16``); outside the image it is 0,
black, as MNIST's border is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..params import PASS_SCHEDULES
from .likelihoods import LEVELS, pixel_rows

CONTEXT_SCALE = 256
"""a grey level ``k`` enters the context as ``k / CONTEXT_SCALE``"""

PASS_ROWS = 65_536
"""pictures are drawn in chunks of images whose passes hold at most about this many pixels:
a pass of a million rows (10,000 pictures under ``passes-8``) leaves the cache and took
twice as long per pixel (Results: pass schedules). The raster head's passes stay whole."""

COARSE_TO_FINE = (
    (0, 0), (2, 2), (0, 2), (2, 0), (1, 1), (3, 3), (1, 3), (3, 1),
    (0, 1), (2, 3), (0, 3), (2, 1), (1, 0), (3, 2), (1, 2), (3, 0),
)  # fmt: skip
"""the offsets of a 4 x 4 block in decoding order: the 2 x 2 lattice's corners, its centres,
then the rest; ``passes-N`` puts ``16 / N`` consecutive offsets in each pass"""


def causal_offsets(radius: int) -> list[tuple[int, int]]:
    """The window's (row, column) offsets that come before its centre in raster order."""
    rows = [(dy, dx) for dy in range(-radius, 0) for dx in range(-radius, radius + 1)]
    return rows + [(0, dx) for dx in range(-radius, 0)]


def window_offsets(radius: int) -> list[tuple[int, int]]:
    """Every offset of the ``(2r + 1)``-wide window but its centre."""
    span = range(-radius, radius + 1)
    return [(dy, dx) for dy in span for dx in span if (dy, dx) != (0, 0)]


def pass_of_pixels(schedule: str, size: int) -> torch.Tensor:
    """The pass of every pixel of a ``size x size`` image, ``[size * size]`` int64."""
    if schedule == "raster":
        return torch.arange(size * size)
    if schedule not in PASS_SCHEDULES:
        raise ValueError(f"unknown pass schedule {schedule!r}; known: {PASS_SCHEDULES}")
    if size % 4:
        raise ValueError(f"a {schedule} head needs an image size divisible by 4; got {size}")
    passes = int(schedule.removeprefix("passes-"))
    rank = torch.empty(4, 4, dtype=torch.int64)
    for i, (dy, dx) in enumerate(COARSE_TO_FINE):
        rank[dy, dx] = i
    lattice = torch.arange(size) % 4
    return (rank[lattice][:, lattice] * passes // len(COARSE_TO_FINE)).flatten()


class PixelHead(nn.Module):
    """The per-pixel network: ``features + context + passes`` numbers in, ``channels`` out."""

    def __init__(
        self,
        features: int,
        channels: int,
        hidden: int,
        radius: int,
        size: int,
        slope: float,
        schedule: str = "raster",
    ) -> None:
        super().__init__()
        self.radius, self.size, self.schedule = radius, size, schedule
        raster = schedule == "raster"
        offsets = causal_offsets(radius) if raster else window_offsets(radius)
        pass_of = pass_of_pixels(schedule, size)
        count = int(pass_of.max()) + 1
        self.pass_inputs = 0 if raster else count
        self.network = nn.Sequential(
            nn.Linear(features + len(offsets) + self.pass_inputs, hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, channels),
        )
        # The canvas: the image with ``radius`` zeros on every side, flattened.
        self.width = width = size + 2 * radius
        rows = torch.arange(size).repeat_interleave(size)
        cols = torch.arange(size).repeat(size)
        index = [(rows + radius + dy) * width + cols + radius + dx for dy, dx in offsets]
        self.register_buffer("index", torch.stack(index), persistent=False)  # [context, H * W]
        self.register_buffer("target", (rows + radius) * width + cols + radius, persistent=False)
        # Whether each offset of each pixel is known before it: an earlier pass, or outside
        # the image (where the canvas holds zeros either way).
        known = []
        for dy, dx in offsets:
            inside = (rows + dy >= 0) & (rows + dy < size) & (cols + dx >= 0) & (cols + dx < size)
            neighbour = ((rows + dy) * size + cols + dx).clamp(0, size * size - 1)
            known.append(~inside | (pass_of[neighbour] < pass_of))
        self.register_buffer("known", torch.stack(known), persistent=False)  # [context, H * W]
        codes = (pass_of[:, None] == torch.arange(self.pass_inputs)).long()
        self.register_buffer("pass_code", codes, persistent=False)  # [H * W, passes]
        order = torch.argsort(pass_of, stable=True)
        self.register_buffer("passes", order.view(count, -1), persistent=False)
        """the pixels of each pass, ``[passes, pixels per pass]`` (every pass the same size)"""

    def canvas(self, levels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[N, 1, H, W]`` (in context units) padded with the zeros that the window
        reads beyond the image, flattened: ``[N, (H + 2 r) * (W + 2 r)]``."""
        r = self.radius
        return nn.functional.pad(levels[:, 0], (r, r, r, r)).flatten(1)

    def empty_canvas(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """A canvas of ``n`` black images, for decoding into (same dtype as ``like``)."""
        return torch.zeros(n, self.width**2, dtype=like.dtype, device=like.device)

    def context(self, canvas: torch.Tensor, unit: float | int = 1.0) -> torch.Tensor:
        """What every pixel reads besides the features, ``[N, H * W, context + passes]``:
        its window's pixels masked to those known before it, then its pass's one-hot code
        (``unit`` is 1 in the canvas's arithmetic: 1.0, or ``2^16`` for the integer network)."""
        parts = [self._window(canvas, self.index, self.known).transpose(1, 2)]
        if self.pass_inputs:
            code = (self.pass_code * unit).to(canvas.dtype)
            parts.append(code.expand(len(canvas), *code.shape))
        return torch.cat(parts, 2)

    @staticmethod
    def _window(canvas: torch.Tensor, index: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """The canvas at the window places ``index`` ``[context, pixels]``, zero where
        ``known`` says a pixel is not known before the one reading it: ``[N, context,
        pixels]``."""
        return canvas[:, index] * known.to(canvas.dtype)

    def pass_rows(
        self, features: torch.Tensor, canvas: torch.Tensor, passes: slice, unit: float | int = 1.0
    ) -> torch.Tensor:
        """Teacher forcing for the passes ``passes`` (every pixel known: compression): the
        rows ``run_passes`` gives its step for them, ``[k, N, m, inputs]``, from the decoder's
        ``features`` ``[N, F, H * W]`` and the images' ``canvas``. Built from those passes'
        pixels only, so a caller that takes a few passes at a time never holds the rows of
        every pixel."""
        pixels = self.passes[passes]  # [k, m]
        (k, m), (n, f) = pixels.shape, features.shape[:2]
        at = pixels.flatten()
        window = self._window(canvas, self.index[:, at], self.known[:, at])  # [N, C, k m]
        parts = [features[:, :, at].view(n, f, k, m), window.view(n, -1, k, m)]
        parts = [part.permute(2, 0, 3, 1) for part in parts]  # [k, N, m, inputs]
        if self.pass_inputs:
            code = (self.pass_code[at] * unit).to(canvas.dtype).view(k, 1, m, -1)
            parts.append(code.expand(k, n, m, -1))
        return torch.cat(parts, 3)

    def run_passes(
        self,
        features: torch.Tensor,
        step: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        unit: float | int = 1.0,
    ) -> torch.Tensor:
        """Decode images pass by pass: the one loop over the schedule. ``features`` ``[N, F,
        H * W]`` are the decoder's; ``step`` turns the rows of ``features + context +
        passes`` numbers of a pass's pixels (``[N * m, inputs]``, image by image) into their
        values (what the caller wants back) and grey levels ``0..255`` (which the next passes
        read); ``unit`` is 1 in the rows' arithmetic (1.0 in floats, ``2^16`` in the integer
        network's). Returns the values ``[N, H * W]``."""
        (n, f, _), (count, m) = features.shape, self.passes.shape
        canvas = self.empty_canvas(n, features)
        # Everything a pass reads, laid out as its rows: the features once, pass by pass
        # (each pass's contiguous, [N, m, F]), and the canvas places its window reads.
        by_pass = features[:, :, self.passes.flatten()].view(n, f, count, m)
        by_pass = by_pass.permute(2, 0, 3, 1).contiguous()  # [passes, N, m, F]
        window = self.index.T[self.passes].flatten(1)  # [passes, m * context]
        values = None
        scale = unit / CONTEXT_SCALE
        for k, pixels in enumerate(self.passes):
            parts = [by_pass[k], canvas.index_select(1, window[k]).view(n, m, -1)]
            if self.pass_inputs:
                code = features.new_zeros(n, m, self.pass_inputs)
                code[:, :, k] = unit
                parts.append(code)
            got, levels = step(torch.cat(parts, 2).view(n * m, -1))
            if values is None:
                values = torch.zeros(n, self.size**2, dtype=got.dtype, device=got.device)
            values[:, pixels] = got.view(n, m)
            canvas[:, self.target[pixels]] = (levels.view(n, m) * scale).to(canvas.dtype)
        return values

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
        return self.network[0].in_features - len(self.index) - self.pass_inputs

    @staticmethod
    def _as_images(out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Per-pixel rows of parameters back to images: ``[N, channels, H, W]``."""
        n, _, h, w = shape
        return out.reshape(n, h * w, -1).transpose(1, 2).reshape(n, -1, h, w)

    def decode(
        self, features: torch.Tensor, choose: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Images ``[N, 1, H, W]`` in [0, 1] decoded pass by pass: ``choose`` turns a pass's
        parameters (``[M, channels]``) into its pixel values in [0, 1]."""

        def step(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            values = choose(self.network(rows))
            return values, torch.round(values * (LEVELS - 1))

        n, _, h, w = features.shape
        chunk = max(1, PASS_ROWS // self.passes.shape[1])
        pictures = [self.run_passes(part.flatten(2), step) for part in features.split(chunk)]
        return torch.cat(pictures).view(n, 1, h, w)
