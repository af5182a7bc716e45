"""Lossless compression with the trained VAE: bits-back coding with ANS (Townsend et al. 2019).

One ANS stack (``constriction.stream.stack.AnsCoder``) holds the whole file. To add an
image ``x`` it **pops** a latent ``z`` with the posterior q(z|x) (reading bits that are
already on the stack), **pushes** ``x`` with the decoder's p(x|z) and **pushes** ``z`` with
the prior p(z). The net cost is -log p(x|z) - log p(z) + log q(z|x): a one-sample
negative ELBO, in bits. Decompression runs the same steps backwards: pop ``z`` with the
prior, pop ``x`` with p(x|z), push ``z`` back with q(z|x), returning the bits that the
compressor borrowed. The stack starts with a few fixed words for the first pops to read,
and ends with exactly those words again, which decompression checks.

The latent lives on a grid of step ``2^-LATENT_BITS`` (in units of the prior's standard
deviation) over +-``LATENT_RANGE``, fine enough that the rate stays within a fraction of a
percent of the continuous negative ELBO. The prior is N(0, I) integrated over the grid's
cells (one table for every latent); a posterior q(z|x) is integrated over a window of
+-``POSTERIOR_WIDTH`` of its standard deviations (the mass beyond is far below what the
coder can represent). The pixels are a categorical over their values.

An 8-bit pixel is sent as up to three symbols: whether it is 0 (four in five MNIST pixels
are), then, if not, which of 16 bins of 16 values it is in, then its place in the bin. That
is the same distribution (p(k) = p(not 0) p(bin | not 0) p(k | bin)) at a small part of the
work of a 256-entry table for every pixel: one CDF value per pixel, 32 more per non-zero
one. A posterior's window of latent grid points is popped the same way, its bucket of 16
points, then the point.

**A file decodes anywhere the model is.** Every probability the coder sees is an integer
computed in integer arithmetic (``fixed_point``): the encoder and decoder run as an
``fixed_point.ExactNetwork``, and the posterior, the prior and the pixel
likelihood turn its integer outputs into integer frequencies through tables. So the
frequencies, hence the bits, are the same whatever the CPU kernels (pinned, native,
scalar), the thread count, the batch, the device or the torch version
(``portability`` runs the matrix). Every mismatch that remains possible (another
model, damaged bytes) ends in ``errors.CodecError``, never in wrong images: the
header carries the weights' sha256 and a checksum of the original pixels.

**An autoregressive model** (``autoregressive``) gives each pixel's distribution from
z and the pixels known before it, in the passes of its schedule (784 of one pixel in
raster order; or 2 to 16 of many pixels). Compression knows every pixel, so it computes
all of a group's parameters at once and pushes the pixels pass by pass, the last first;
decompression pops the first pass of every image in the group, then the second with what
the first gave, and so on (``PixelHead.run_passes``): one step per pass, each over all of
the group's images. The pixel head runs in integers like the rest, and a pixel's integers
are the same whether computed with the whole image or a pass at a time (the sums are
exact), so the two sides agree. Its groups are larger (``AUTOREGRESSIVE_BATCH``): fewer
steps.

Images are coded in groups that grow from one image, doubling up to the model's group
size (``BATCH``, ``AUTOREGRESSIVE_BATCH``): a group's latents are popped before its pixels
are pushed, so the grouping is part of the stream; the network computes the same integers
however it is batched.

**A decoder's work is bounded by the file's size.** Bits-back decoding pushes each group's
latents back onto the stack it pops from, so garbage words never run out: a header that
lies about its count could keep a decoder busy for ever. So a file lists the words each
coding group adds to the stack, and every group adds at least ``MIN_SHARE`` of its images'
raw pixel bits (the encoder pads a group that the model codes in fewer: in practice only
blank or near-blank pictures). A decoder checks the list against the header and the file's
length before decoding anything (a count the words cannot hold is refused at once: at most
one image per ``min_words``), and the stack's size at the end of every group, so a lie is
found within the first group it touches; and it reads groups of its model's size only. The
work of decoding a file of B bytes is thus at most that of about B / (4 ``min_words``)
images: twice the digits a valid file of B bytes holds.

The file format is ``container``'s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import constriction
import numpy as np
import torch

from ..errors import CodecError
from ..model.autoregressive import CONTEXT_SCALE
from ..model.likelihoods import LEVELS, likelihood, pixel_rows
from ..model.vae import ConvVAE, load_model
from . import exact_likelihoods
from .container import (
    BATCH,
    LATENT_RANGE,
    LOSSLESS,
    MODES,
    NEAR_LOSSLESS,
    Header,
    pixels_digest,
    weights_sha256,
)
from .exact_likelihoods import BIN
from .fixed_point import ACTIVATION_BITS, PROBABILITY_BITS, ExactNetwork, tables
from .near_lossless import MAX_ERROR, Bins, check_max_error

LATENT_BITS = 8  # latent grid step 2^-8 prior standard deviations
GRID = LATENT_RANGE << LATENT_BITS  # grid points -GRID..GRID
BUCKET = 16  # a posterior's window is popped as a bucket of 16 grid points, then the point
ONE_STD = torch.ones(1, dtype=torch.int64) << 20  # 1/std of the prior at 2^-20
POSTERIOR_WIDTH = 7  # a posterior's window: +-7 of its standard deviations (2.6e-12 outside)
LOG_VARIANCE = (-14, 2)  # a posterior's log-variance is clamped to this range
PUSH_ROWS = 16384
"""compression computes the pixel tables of about this many pixels at once"""
AUTOREGRESSIVE_BATCH = 500
"""an autoregressive model decodes a group's images a pass at a time (784 steps for the
raster head): larger groups make fewer steps"""
MIN_SHARE = 12
"""every image costs at least 1/12 of its raw pixel bits (``min_words``: 64 bytes for a grey
28 x 28 digit, whose model codes it in about 110; 8 for a binary one)"""
PAD_LEVELS = 1 << 16
PAD = constriction.stream.model.Uniform(PAD_LEVELS)
"""a padding symbol (16 bits), and the count of them that ends every coding group"""
PAD_SEED = 0x4D564145  # "MVAE": the seed of the padding's values
ONE = 1 << ACTIVATION_BITS
"""1 in the integer network's arithmetic"""
CONTEXT_UNIT = ONE // CONTEXT_SCALE
"""grey level ``k`` enters the pixel head's context as ``k / 256``: ``k * CONTEXT_UNIT`` at
``2^-ACTIVATION_BITS``"""


def gaussian_cdf(mean: torch.Tensor, inv_std: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """The integer CDF of N(mean, std) of each row (``mean`` in grid steps at
    ``2^-ACTIVATION_BITS``, ``inv_std`` = 1/std in prior units at ``2^-20``) at the cell
    edges ``edges`` (``[rows, E]``; edge ``j`` is the one below grid point ``j``), from the
    normal CDF table; 0 at and below the grid's first edge, 2^30 beyond its last (the end
    cells take the tails)."""
    at = (2 * edges - 1) << (ACTIVATION_BITS - 1)
    # (edge - mean) / (std 2^LATENT_BITS): at 2^-(16 + 20 + LATENT_BITS), then at 2^-20
    t = ((at - mean[:, None]) * inv_std[:, None]) >> (ACTIVATION_BITS + LATENT_BITS)
    cdf = tables()["normal_cdf"](t, 20)
    cdf = torch.where(edges <= -GRID, 0, cdf)
    return torch.where(edges > GRID, 1 << PROBABILITY_BITS, cdf)


@dataclass(frozen=True)
class Window:
    """Each latent's posterior on the grid, over a window of ``width`` points from ``low``
    (whole buckets, inside the grid), popped in two symbols: its bucket of ``BUCKET`` points
    (``buckets``: the table), then the point in the bucket (``places``). The same
    probability as one table of ``width`` points, at about ``width / BUCKET + BUCKET`` CDF
    values per latent instead of ``width``."""

    low: np.ndarray
    mean: torch.Tensor
    inv_std: torch.Tensor
    buckets: np.ndarray

    @property
    def width(self) -> int:
        return BUCKET * self.buckets.shape[1]

    def places(self, bucket: np.ndarray) -> np.ndarray:
        """The table of the points in each latent's bucket ``bucket``, ``[rows, BUCKET]``;
        at least 1 each, so that a bucket the coder popped against its zero probability
        (from the words of other images, in compression) still has a table."""
        low = torch.from_numpy(self.low)[:, None]
        edges = low + BUCKET * torch.from_numpy(bucket.astype(np.int64))[:, None]
        edges = edges + torch.arange(BUCKET + 1)
        table = torch.diff(gaussian_cdf(self.mean, self.inv_std, edges), dim=1)
        return _floats(table.clamp_(min=1))

    def pop(self, coder, categorical) -> np.ndarray:
        """The grid points (``[rows]``, int64) read off the stack: bits back."""
        bucket = coder.decode(categorical, self.buckets)
        return self.low + BUCKET * bucket + coder.decode(categorical, self.places(bucket))

    def push(self, coder, categorical, z: np.ndarray) -> None:
        """Put the bits of grid points ``z`` back: the inverse of ``pop``."""
        offset = z - self.low
        if not np.all((offset >= 0) & (offset < self.width)):
            raise ValueError("a latent outside its posterior's window")
        bucket, place = (offset // BUCKET).astype(np.int32), (offset % BUCKET).astype(np.int32)
        coder.encode_reverse(place, categorical, self.places(bucket))
        coder.encode_reverse(bucket, categorical, self.buckets)


class BitsBackCodec:
    """Lossless coding of ``uint8`` images ``[N, H, W]`` with values ``0..levels-1``."""

    def __init__(self, model: ConvVAE, loss: str, model_sha256: bytes) -> None:
        self.model = model.eval()
        self.head = model.pixel_head
        self.loss = loss
        self.levels = likelihood(loss).levels
        if self.levels is None:
            raise CodecError(f"a model trained with train.loss {loss!r} cannot code pixels")
        self.split_zero = self.levels > 2  # 8-bit pixels: "is it 0?" first, then the value
        self.grey_step = (LEVELS - 1) // (self.levels - 1)  # a symbol's grey level per unit
        self.model_sha256 = model_sha256
        self.batch = BATCH if self.head is None else AUTOREGRESSIVE_BATCH
        self.min_words = min_words(model.image_shape, self.levels)
        self.network = ExactNetwork(model)
        self.categorical = constriction.stream.model.Categorical(perfect=False)
        edges = torch.arange(-GRID, GRID + 2)[None]  # the cells of every grid point
        prior = torch.diff(gaussian_cdf(torch.zeros(1, dtype=torch.int64), ONE_STD, edges))
        self.prior = constriction.stream.model.Categorical(_floats(prior[0]), perfect=False)

    @classmethod
    def from_folder(cls, folder: str | Path) -> BitsBackCodec:
        """The codec of a model folder: its likelihood, and its weights' sha256 for the header."""
        model = load_model(folder)
        return cls(model, model.config.likelihood, weights_sha256(folder))

    # The pieces both directions share --------------------------------------------------
    def _posterior(self, images: np.ndarray) -> Window:
        """q(z|x) on the grid, one row per latent, from the exact encoder: a window of the
        grid's points around each mean (a common width, at most the whole grid)."""
        pixels = torch.from_numpy(images.astype(np.int64)) * self.grey_step
        mean, logvar = self.network.encode(pixels.unsqueeze(1))
        bound = LATENT_RANGE << ACTIVATION_BITS
        mean = mean.flatten().clamp(-bound, bound)
        low_lv, high_lv = (v << ACTIVATION_BITS for v in LOG_VARIANCE)
        half_logvar = logvar.flatten().clamp(low_lv, high_lv) >> 1
        exp = tables()["exp"]
        inv_std = exp(-half_logvar, ACTIVATION_BITS) >> 4  # 1/std at 2^-20
        std = exp(half_logvar, ACTIVATION_BITS)  # at 2^-24
        half = ((POSTERIOR_WIDTH * std) >> (24 - LATENT_BITS)) + 2  # grid points each side
        # Whole buckets, inside the grid: the coder may pop any bucket or place its table
        # lists (constriction gives even a zero a little probability), so every place of
        # every bucket must be a grid point. The widest window leaves out the grid's last
        # point (a posterior 8 prior deviations from 0 on a dimension it does not use).
        width = min(-(-int(2 * half.max() + 1) // BUCKET) * BUCKET, 2 * GRID)
        grid_mean = mean << LATENT_BITS  # in grid steps at 2^-16
        centre = (grid_mean + (1 << (ACTIVATION_BITS - 1))) >> ACTIVATION_BITS
        low = (centre - width // 2).clamp(-GRID, GRID - width + 1)
        edges = low[:, None] + BUCKET * torch.arange(width // BUCKET + 1)
        buckets = torch.diff(gaussian_cdf(grid_mean, inv_std, edges), dim=1)
        return Window(low.numpy(), grid_mean, inv_std, _floats(buckets))

    def _decoded(self, z: np.ndarray, count: int) -> torch.Tensor:
        """The exact decoder's output for grid latents ``z``: the parameters of every pixel
        (factorized) or the features the pixel head reads (autoregressive)."""
        latent = torch.from_numpy(z.astype(np.int64)).view(count, -1)
        return self.network.decode(latent, LATENT_BITS)

    def _push_image_pixels(self, coder, x: np.ndarray, decoded: torch.Tensor, bins: Bins) -> None:
        """Push a group's pixels ``x`` (the reconstruction: each pixel its bin's centre) as
        their bins. Factorized: all at once. Autoregressive: the parameters of every pixel
        at once (the pixels are the context, masked to what each pixel's pass knows), pushed
        pass by pass from the last, so that decoding pops the first pass of every image
        first; the tables of about ``PUSH_ROWS`` pixels are computed together (the same
        integers, fewer calls)."""
        symbols = bins.symbols(x)
        if self.head is None:
            self._push_positions(coder, symbols.reshape(1, -1), pixel_rows(decoded), bins)
            return
        n = len(x)
        grey = torch.from_numpy(x.astype(np.int64)).unsqueeze(1) * self.grey_step
        # In float64, which holds these integers exactly: the integer network's arithmetic.
        canvas = self.head.canvas((grey * CONTEXT_UNIT).double())
        features = decoded.flatten(2).double()
        passes = self.head.passes  # [passes, m]
        by_pass = torch.from_numpy(symbols.reshape(n, -1))[:, passes].transpose(0, 1)
        step = max(1, PUSH_ROWS // by_pass[0].numel())
        for start in reversed(range(0, len(passes), step)):
            part = slice(start, start + step)
            rows = self.head.pass_rows(features, canvas, part, ONE)  # [k, n, m, inputs]
            parameters = self.network.pixel_parameters(rows.flatten(0, 2))
            self._push_positions(coder, by_pass[part].flatten(1).numpy(), parameters, bins)

    def _pop_image_pixels(
        self, coder, decoded: torch.Tensor, shape: tuple, bins: Bins
    ) -> np.ndarray:
        """Pop a group's pixels, ``[n, H, W]`` (each its bin's centre); autoregressive: pass
        by pass (``PixelHead.run_passes``), each pass's parameters from the pixels of the
        passes popped before it."""
        if self.head is None:
            symbols = self._pop_pixels(coder, pixel_rows(decoded), bins)
            return bins.reconstruct(symbols).reshape(shape)

        def step(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            symbols = self._pop_pixels(coder, self.network.pixel_parameters(rows), bins)
            pixels = torch.from_numpy(bins.reconstruct(symbols))
            return pixels, pixels.long() * self.grey_step

        return self.head.run_passes(decoded.flatten(2), step, ONE).numpy().reshape(shape)

    def _zero_frequencies(self, rows: exact_likelihoods.Rows, bins: Bins) -> np.ndarray:
        """Frequencies of (not bin 0, bin 0) for each pixel: the first symbol of an 8-bit
        pixel. Here and below every frequency is at least 1 (out of about 2^46): a value
        the model rules out entirely still codes, and a row is never all zeros."""
        table = exact_likelihoods.zero_frequencies(self.loss, rows, bins.edges)
        return _floats(table.clamp_(min=1))

    def _value_frequencies(self, rows: torch.Tensor) -> np.ndarray:
        """Frequencies of both values of a binary pixel."""
        return _floats(exact_likelihoods.frequencies(self.loss, rows).clamp_(min=1))

    def _group_frequencies(
        self, rows: exact_likelihoods.Rows, index: np.ndarray, bins: Bins
    ) -> np.ndarray:
        """Frequencies of the groups of 16 bins of the pixels ``index``, not in bin 0 (their
        second symbol; lossless, each bin one level: the groups are 1..16, 17..32, ...,
        241..255)."""
        table = exact_likelihoods.bin_frequencies(self.loss, rows, bins.edges, index)
        return _floats(table.clamp_(min=1))

    def _in_group_frequencies(
        self, rows: exact_likelihoods.Rows, index: np.ndarray, groups: np.ndarray, bins: Bins
    ) -> np.ndarray:
        """Frequencies of the 16 bins in each pixel's group (their third symbol)."""
        table = exact_likelihoods.in_bin_frequencies(self.loss, rows, groups, bins.edges, index)
        return _floats(table.clamp_(min=1))

    def _push_positions(self, coder, values: np.ndarray, rows: torch.Tensor, bins: Bins) -> None:
        """Push the pixels of ``k`` passes, their bins ``values`` ``[k, n]`` with their
        parameter ``rows``, pass after pass, the last first: per pass, whether each pixel is
        in bin 0, then each other pixel's group of 16 bins, then its place in the group
        (``_pop_pixels`` pops them in that order). Lossless, a bin is a grey level."""
        k, n = values.shape
        flat = values.reshape(-1).astype(np.int32)
        if not self.split_zero:
            table = self._value_frequencies(rows)
            for p in reversed(range(k)):
                coder.encode_reverse(
                    flat[p * n : (p + 1) * n], self.categorical, table[p * n : (p + 1) * n]
                )
            return
        nonzero = flat != 0
        rows = exact_likelihoods.prepared(self.loss, rows)  # shared by the three symbols
        zero_table = self._zero_frequencies(rows, bins)
        value = flat[nonzero] - 1
        groups, places = value // BIN, value % BIN
        index = np.flatnonzero(nonzero)
        several = _groups(bins) > 1  # else (k >= 8) every bin is in group 0: nothing to send
        group_table = self._group_frequencies(rows, index, bins) if several else None
        place_table = self._in_group_frequencies(rows, index, groups, bins)
        ends = np.cumsum(nonzero.reshape(k, n).sum(1))  # nonzero pixels up to each pass's end
        for p in reversed(range(k)):
            at = slice(p * n, (p + 1) * n)
            some = slice(ends[p - 1] if p else 0, ends[p])
            if ends[p] > some.start:  # pushed first: popped after the zero flags that locate them
                coder.encode_reverse(places[some], self.categorical, place_table[some])
                if several:
                    coder.encode_reverse(groups[some], self.categorical, group_table[some])
            flags = (~nonzero[at]).astype(np.int32)
            coder.encode_reverse(flags, self.categorical, zero_table[at])

    def _pop_pixels(self, coder, rows: torch.Tensor, bins: Bins) -> np.ndarray:
        """The bins of a pass's pixels, ``int32``: the inverse of ``_push_positions``."""
        if not self.split_zero:
            return coder.decode(self.categorical, self._value_frequencies(rows))
        rows = exact_likelihoods.prepared(self.loss, rows)  # shared by the three symbols
        flags = coder.decode(self.categorical, self._zero_frequencies(rows, bins))
        values = np.zeros(len(rows), dtype=np.int32)
        nonzero = flags == 0
        index = np.flatnonzero(nonzero)
        if len(index):
            groups = (
                coder.decode(self.categorical, self._group_frequencies(rows, index, bins))
                if _groups(bins) > 1
                else np.zeros(len(index), np.int32)
            )
            places = coder.decode(
                self.categorical, self._in_group_frequencies(rows, index, groups, bins)
            )
            values[nonzero] = 1 + BIN * groups + places
            if values.max() >= bins.count:  # a place past the last bin: only in damaged words
                raise ValueError("a pixel's bin beyond the last")
        return values

    def _startup_words(self) -> np.ndarray:
        """Fixed words for the first image's latent pops (more than the largest they need)."""
        latent_dim = self.model.config.latent_dim
        bits = latent_dim * (LATENT_RANGE.bit_length() + LATENT_BITS + 2)
        words = np.random.default_rng(0).integers(1, 1 << 32, 2 + bits // 32 + 2, np.uint32)
        return words

    # Compression -----------------------------------------------------------------------
    def compress(
        self,
        images: np.ndarray,
        progress: Callable[[int], object] | None = None,
        max_error: int = 0,
    ) -> bytes:
        """The file of ``images``; ``progress`` is called with each coding group's number of
        images as it is done (a bar's ``update``). With ``max_error`` k from 1 to 127 the
        file is near-lossless: every pixel comes back within k grey levels
        (``near_lossless``; ``Bins(k).quantize`` gives the pixels it decodes to)."""
        bins = self._bins(max_error)
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim != 3 or len(images) == 0:
            raise CodecError(f"expected images as an array N x H x W; got shape {images.shape}")
        if images.max(initial=0) >= self.levels:
            raise CodecError(
                f"pixel values go up to {images.max()}; this model codes values "
                f"0..{self.levels - 1}"
            )
        count, height, width = images.shape
        if (1, height, width) != self.model.image_shape:
            _, h, w = self.model.image_shape
            raise CodecError(f"this model codes {h} x {w} images; got {height} x {width}")
        pixels = bins.quantize(images)  # what the decoder will give: the images when lossless
        floor = self._min_words(bins)
        coder = constriction.stream.stack.AnsCoder(self._startup_words())
        sizes = []  # the words each group adds to the stack
        for group, part in enumerate(coding_groups(count, self.batch)):
            x = pixels[part]
            n = len(x)
            before = coder.num_words()
            z = self._posterior(x).pop(coder, self.categorical)  # bits back
            self._push_image_pixels(coder, x, self._decoded(z, n), bins)
            coder.encode_reverse((z + GRID).astype(np.int32), self.prior)
            _pad(coder, before + n * floor, group)
            sizes.append(coder.num_words() - before)
            if progress:
                progress(n)
        header = Header(
            self.model_sha256, count, height, width, self.levels, self.batch, LATENT_BITS,
            pixels_digest(pixels), LOSSLESS if bins.max_error == 0 else NEAR_LOSSLESS,
        )  # fmt: skip
        prefix = [bins.max_error] if bins.max_error else []  # a near-lossless file's bound
        words = np.concatenate([np.array(prefix + sizes, np.uint32), coder.get_compressed()])
        return header.pack() + words.astype("<u4").tobytes()

    def _bins(self, max_error: int) -> Bins:
        """The bins pixels are coded in; a CodecError where this model cannot."""
        bins = Bins(check_max_error(max_error))
        if bins.max_error and not self.split_zero:
            raise CodecError("a model of binary pixels codes them losslessly only (no max_error)")
        return bins

    def _min_words(self, bins: Bins) -> int:
        """The fewest words an image adds to a file coded in ``bins``."""
        if bins.max_error == 0:
            return self.min_words
        return min_words(self.model.image_shape, bins.count)

    # Decompression ---------------------------------------------------------------------
    def decompress(
        self, data: bytes, progress: Callable[[int], object] | None = None
    ) -> np.ndarray:
        """The images of a file, every pixel checked (of a near-lossless one: the pixels
        its encoder meant, each within the file's bound); ``progress`` as for ``compress``."""
        header, words = Header.unpack(data)
        if header.mode not in (LOSSLESS, NEAR_LOSSLESS):
            raise CodecError(
                f"a {MODES[header.mode]} file: decode it with mnist_vae.compression.lossy"
            )
        header.check_model(self.model_sha256)
        _, h, w = self.model.image_shape
        if (header.height, header.width, header.levels) != (h, w, self.levels):
            raise CodecError(
                f"the file holds {header.height} x {header.width} images with {header.levels} "
                f"values per pixel; this model codes {h} x {w} with {self.levels}"
            )
        if header.latent_bits != LATENT_BITS:
            raise CodecError(f"latent grid 2^-{header.latent_bits} is not supported")
        if header.batch != self.batch:
            raise CodecError(
                f"the header is damaged: coding groups of {header.batch:,} images (this model's "
                f"files have groups of {self.batch})"
            )
        bins = Bins(0)
        if header.mode == NEAR_LOSSLESS:
            bins, words = self._bins_of(words), words[1:]
        groups, ends, words = self._bounded(header.count, words, self._min_words(bins))
        coder = constriction.stream.stack.AnsCoder(words)
        latent_dim = self.model.config.latent_dim
        decoded = []  # last group first; memory grows with the images actually decoded
        try:
            for group in reversed(range(len(groups))):
                n = groups[group].stop - groups[group].start
                _unpad(coder, group)
                z = coder.decode(self.prior, n * latent_dim) - GRID
                x = self._pop_image_pixels(coder, self._decoded(z, n), (n, h, w), bins)
                decoded.append(x.astype(np.uint8))
                self._posterior(decoded[-1]).push(coder, self.categorical, z)
                if coder.num_words() != ends[group]:
                    raise ValueError("a coding group that does not end where the file says")
                if progress:
                    progress(n)
        except (ValueError, RuntimeError) as error:  # constriction's word on invalid data
            raise CodecError(f"the coder words are damaged ({error})") from None
        images = np.concatenate(decoded[::-1])
        if not np.array_equal(coder.get_compressed(), self._startup_words()) or (
            pixels_digest(images) != header.checksum
        ):
            raise CodecError("the decoded images fail the checksum: the file is damaged")
        return images

    def _bins_of(self, words: np.ndarray) -> Bins:
        """A near-lossless file's bins, from its first word; a CodecError if it is no bound."""
        if not self.split_zero:
            raise CodecError("a near-lossless file, and this model codes binary pixels")
        if not 1 <= int(words[0]) <= MAX_ERROR:
            raise CodecError(
                f"the file is damaged: a near-lossless file's largest error must be "
                f"1..{MAX_ERROR}; it says {int(words[0]):,}"
            )
        return Bins(int(words[0]))

    def _bounded(
        self, count: int, words: np.ndarray, least: int
    ) -> tuple[list[slice], np.ndarray, np.ndarray]:
        """A file's coding groups, the stack's size where each one's decoding must end, and
        the stack; a CodecError before any decoding unless the groups' sizes fit the file,
        each holding at least ``least`` words per image."""
        start = len(self._startup_words())
        if count * least > len(words) - start:
            raise CodecError(
                f"the header claims {count:,} images, more than the file's {4 * len(words):,} "
                f"bytes of words can hold (at least {4 * least} each): the file is damaged"
            )
        groups = list(coding_groups(count, self.batch))
        sizes, stack = words[: len(groups)].astype(np.int64), words[len(groups) :]
        floor = np.array([(g.stop - g.start) * least for g in groups], np.int64)
        ends = start + np.cumsum(sizes) - sizes  # the stack's size before each group
        if (sizes < floor).any() or start + sizes.sum() != len(stack):
            raise CodecError("the file is damaged: its coding groups do not add up to its words")
        return groups, ends, stack


def _groups(bins: Bins) -> int:
    """The groups of ``BIN`` bins that the bins other than bin 0 make."""
    return -(-(bins.count - 1) // BIN)


def min_words(image_shape: tuple[int, ...], symbols: int) -> int:
    """The fewest words an image of ``image_shape`` adds to a file when each pixel is one of
    ``symbols`` (its values; near-lossless, its bins): ``MIN_SHARE`` of its raw bits (``log2
    symbols`` a pixel), at least one."""
    raw_bits = int(np.prod(image_shape) * math.log2(symbols))
    return max(1, raw_bits // (32 * MIN_SHARE))


def _pad(coder, target: int, group: int) -> None:
    """End coding group ``group`` with padding symbols, then their count, so that the stack
    holds at least ``target`` words (only the count where it does already); the fewest
    that reach it."""
    pads = 0
    if coder.num_words() < target:
        pads = 2 * (target - coder.num_words()) - 2  # 16 bits each: about 2 per word
        while True:
            trial = coder.clone()
            _push_padding(trial, pads, group)
            if trial.num_words() >= target:
                break
            pads += 1
    _push_padding(coder, pads, group)


def _padding(group: int) -> np.random.Generator:
    """The padding's values: pseudo-random, because the next group's latents are popped
    from them (a run of equal symbols would pick latents from one end of their windows,
    costing bits; random ones cost nothing, bits-back takes them back)."""
    return np.random.default_rng([PAD_SEED, group])


def _push_padding(coder, pads: int, group: int) -> None:
    if pads >= PAD_LEVELS:  # a group of 500 digits needs at most about 16,000
        raise CodecError(f"{pads:,} padding symbols do not fit a group's count")
    values = _padding(group)
    mask = values.integers(0, PAD_LEVELS, 1, dtype=np.int32)
    coder.encode_reverse(values.integers(0, PAD_LEVELS, pads, dtype=np.int32), PAD)
    coder.encode_reverse((pads + mask) % PAD_LEVELS, PAD)


def _unpad(coder, group: int) -> None:
    """Pop coding group ``group``'s padding, ``ValueError`` unless it is that padding."""
    values = _padding(group)
    mask = values.integers(0, PAD_LEVELS, 1, dtype=np.int32)
    pads = int((coder.decode(PAD, 1) - mask)[0] % PAD_LEVELS)
    expected = values.integers(0, PAD_LEVELS, pads, dtype=np.int32)
    if pads and not np.array_equal(coder.decode(PAD, pads), expected):
        raise ValueError("a group's padding is not padding")


def coding_groups(count: int, largest: int) -> Iterator[slice]:
    """The coding groups of ``count`` images: sizes 1, 2, 4, ... doubling up to ``largest``,
    then ``largest`` each. A group's latent pops read bits that the images before it pushed,
    so a first group of 100 would read from an almost empty stack (decoding garbage latents
    that then cost their images dearly; still lossless, only larger)."""
    start, size = 0, 1
    while start < count:
        size = min(size, largest)
        yield slice(start, min(count, start + size))
        start, size = start + size, 2 * size


def _floats(frequencies: torch.Tensor) -> np.ndarray:
    """Integer frequencies (below 2^53) as the float64 array constriction takes: exact."""
    return np.ascontiguousarray(frequencies.to(torch.float64).numpy())


def no_codec_reason(loss: str, binary: bool) -> str | None:
    """Why a model trained with ``loss`` cannot code these pixels (None when it can): ``mse``
    is no likelihood, ``bce`` codes binary pixels only, the 8-bit likelihoods grey ones."""
    levels = likelihood(loss).levels
    if levels is not None and (levels == 2) == binary:
        return None
    pixels = "binary" if binary else "grey"
    return f"a model trained with train.loss {loss} on {pixels} pixels is no codec for them"


@dataclass(frozen=True)
class RoundTrip:
    data: bytes
    images: int
    pixels: int
    compress_seconds: float
    decompress_seconds: float

    @property
    def bits_per_pixel(self) -> float:
        """The rate: every byte of the file (header and start-up words too) over the pixels."""
        return 8 * len(self.data) / self.pixels

    def metrics(self, nelbo_bits_per_pixel: float, iwae_bits_per_pixel: float) -> dict:
        """The reproducible figures (no clock): the rate beside the model's bounds."""
        return {
            "lossless": True,
            "bits_per_pixel": self.bits_per_pixel,
            "bytes": len(self.data),
            "nelbo_bits_per_pixel": nelbo_bits_per_pixel,
            "iwae_bits_per_pixel": iwae_bits_per_pixel,
            "gap_to_nelbo": self.bits_per_pixel / nelbo_bits_per_pixel - 1,
        }

    def speed(self) -> dict[str, float]:
        return {
            "compress_images_per_second": self.images / self.compress_seconds,
            "decompress_images_per_second": self.images / self.decompress_seconds,
        }


def round_trip(folder: str | Path, images: np.ndarray, max_error: int = 0) -> RoundTrip:
    """Compress ``images`` with the model in ``folder`` (near-lossless within ``max_error``
    when it is not 0), decompress them with a codec built afresh from the folder, and check
    every pixel: the original, or its bin's centre (a mismatch is a ``CodecError``)."""
    start = time.perf_counter()
    data = BitsBackCodec.from_folder(folder).compress(images, max_error=max_error)
    middle = time.perf_counter()
    decoded = BitsBackCodec.from_folder(folder).decompress(data)
    end = time.perf_counter()
    expected = Bins(max_error).quantize(images)
    if not np.array_equal(decoded, expected):  # the checksum makes this unreachable; be sure
        raise CodecError("the round trip did not give every pixel back")
    if np.abs(decoded.astype(np.int16) - images).max(initial=0) > max_error:
        raise CodecError(f"a pixel came back more than {max_error} levels away")
    return RoundTrip(data, len(images), images.size, middle - start, end - middle)
