"""Lossy compression with the trained VAE: the posterior mean, quantized and entropy-coded.

An image becomes its code: the posterior mean of q(z|x), divided by a step and rounded to
integers, one per latent dimension. The integers are entropy-coded with ``constriction``,
each dimension under its own categorical distribution over the grid; decoding maps each
integer to its cell's centroid under that distribution and decodes it with the model's
lossy decoder, trained for squared error on the training codes at every level
(``lossy_decoder``, ``fit_lossy_decoder``), rounded to 8 bits. A model without one
decodes the mean image of p(x|z) (at the coarsest levels, the average of the mean images
at several points of the cell: ``points_per_code``).

Which distribution codes the integers (the entropy model, named in every stream):

* ``mixture`` (the default when the model has one): the marginals of the Gaussian mixture
  that ``sampler`` fitted to the posterior means of the training images, integrated
  over each grid cell. It is fitted to exactly what is quantized, and it is stored with
  the weights, so any copy of the model decodes.
* ``prior``: the prior N(0, I) integrated the same way. It is what the VAE was trained
  with, but the posterior means spread less than the prior (their spread plus the
  posterior's own variance makes it), and a dimension the model does not use still costs
  bits under the prior; the README (Compression) gives the measured difference.

The rate is a level ``0..MAX_RATE``: the grid step is ``2^(1 - rate/2)`` prior standard
deviations (level 0: 2, level 12: 1/32), so each level up costs about half a bit more
per dimension that the model uses. Codes are clamped to +-``LATENT_RANGE`` standard
deviations (the posterior means of MNIST stay well inside).

Two layouts, both measured by their bytes:

* **the whole set** (``compress``/``decompress``): the file header of ``codec`` (mode
  1 or 2, the rate level in its ``latent_bits`` byte, a checksum of the codes) and one ANS
  stream holding every code;
* **one stream per image** (``compress_each``/``decompress_each``): ``STREAM_HEADER`` = 3
  bytes (one holding the bits ``110`` (``101`` in format version 1), the entropy model in
  bit 4 and the rate level in the low four bits; then the first two bytes of the weights'
  sha256) and the image's code in a prefix (Huffman) code per dimension, built by
  ``constriction`` from the same probabilities, in as few whole bytes as it needs: ANS
  would end each image with about 2.8 bytes of coder state, a prefix code loses a
  fraction of a bit per dimension.
  A stream decodes alone; it has no checksum (it would cost more than the code), so a
  damaged one is caught only when its bytes are not exactly one code's, and a model whose
  sha256 shares the first two bytes is not told apart.

The entropy model never comes from the network: its probabilities are the mixture's (or
the prior's) numbers rounded to fixed point and integrated over the cells in integer
arithmetic (``integer_masses``, the normal CDF from ``fixed_point``'s table), so
the codes decode the same on every platform (``portability``). The picture a code
decodes to is the float decoder's, rounded to 8 bits.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import constriction
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CodecError
from ..invariant import pinned_arithmetic
from ..model.sampler import posterior_means
from ..model.vae import ConvVAE, load_model
from ..params import MAX_RATE, LossyParams
from .container import (
    BATCH,
    LATENT_RANGE,
    LOSSY_MIXTURE,
    LOSSY_PRIOR,
    MODES,
    Header,
    check_model,
    weights_sha256,
)
from .fixed_point import tables

DEFAULT_RATE = LossyParams().rate
ENTROPY_MODELS = {"mixture": LOSSY_MIXTURE, "prior": LOSSY_PRIOR}
_STREAM = struct.Struct("<B2s")
STREAM_HEADER = _STREAM.size
_STREAM_MAGIC, _MAGIC_BITS, _PRIOR_FLAG, _RATE_BITS = 0xC0, 0xE0, 0x10, 0x0F
_STREAM_MAGIC_V1 = 0xA0  # format version 1 (before portable decoding): refused
AVERAGED_BELOW = 4  # the rate levels whose codes decode to an average of images
LEARNED_BATCH = 250
"""codes the lossy decoder pictures at a time: its transposed convolutions' activations
stay in the CPU's caches, 2.2 times faster than 1,000 at a time (2-core Xeon)"""


def step(rate: int) -> float:
    """The grid step of a rate level, in prior standard deviations: ``2^(1 - rate/2)``,
    computed with correctly rounded operations only (a power of two, a square root), so
    the same on every platform."""
    check_rate(rate)
    return 2.0 ** (1 - rate // 2) / (math.sqrt(2.0) if rate % 2 else 1.0)


def points_per_code(rate: int) -> int:
    """How many points of its cell a code decodes to (their images averaged): 16 at level 0,
    halving each level up to 1 (the centroid) from level ``AVERAGED_BELOW``.

    The image that minimizes the expected squared error given a code is the average image
    over the cell, not the image of the cell's average: the decoder draws a sharp digit,
    and a coarse cell holds several. Measured on 1,000 test digits with the trained model,
    averaging lifts the PSNR by 1.3 dB at level 0, 0.9 at level 1, 0.5 at level 2 and 0.15
    at level 3; eight points would add under 0.1 dB at level 4 and nothing at level 6, at
    eight times the decoder's work."""
    check_rate(rate)
    return 2 ** max(0, AVERAGED_BELOW - rate)


def check_rate(rate: int) -> None:
    if not (isinstance(rate, int) and 0 <= rate <= MAX_RATE):
        raise CodecError(f"the rate level must be an integer from 0 to {MAX_RATE}; got {rate!r}")


def _ndtr(x: np.ndarray) -> np.ndarray:
    return torch.special.ndtr(torch.from_numpy(x)).numpy()


def _ndtri(p: np.ndarray) -> np.ndarray:
    return torch.special.ndtri(torch.from_numpy(p)).numpy()


def integer_masses(
    weights: np.ndarray, means: np.ndarray, stds: np.ndarray, edges: np.ndarray
) -> np.ndarray:
    """What the coder sees: each dimension's marginal mass in each cell ``[dims, cells]``,
    in integer arithmetic (``fixed_point``), the same on every platform. The mixture's
    numbers are rounded to fixed point first (weights at 2^-20, means, stds and the finite
    edges at 2^-16), each component's CDF at the edges comes from the normal table; the
    result is exact integers as float64 (below 2^51)."""
    w = torch.from_numpy(np.rint(np.asarray(weights, np.float64) * 2.0**20)).long()
    m = torch.from_numpy(np.rint(np.asarray(means, np.float64) * 2.0**16)).long()
    s = torch.from_numpy(np.rint(np.asarray(stds, np.float64) * 2.0**16)).long().clamp(min=1)
    inner = torch.from_numpy(np.rint(edges[1:-1] * 2.0**16)).long()
    t = ((inner - m[..., None]) << 20) // s[..., None]  # [K, dims, cells - 1] at 2^-20
    cdf = tables()["normal_cdf"](t, 20)
    cdf = torch.cat(
        [torch.zeros_like(cdf[..., :1]), cdf, torch.full_like(cdf[..., :1], 1 << 30)], -1
    )
    mass = (w[:, None, None] * torch.diff(cdf, dim=-1)).sum(0)
    return mass.double().numpy()


def exact_stds(scale_tril: torch.Tensor) -> np.ndarray:
    """The standard deviations ``sqrt(diag(L L^T))`` of Gaussians given by Cholesky factors
    ``[K, d, d]``, in integer arithmetic (the factors rounded to 2^-16, an exact integer
    square root): the same on every platform."""
    fixed = torch.round(scale_tril.double() * 2.0**16).long()
    squares = (fixed * fixed).sum(-1).flatten().tolist()
    roots = [math.isqrt(v) for v in squares]
    return np.array(roots, np.float64).reshape(scale_tril.shape[:-1]) / 2.0**16


class _Mixture(NamedTuple):
    """A Gaussian mixture behind a ``FactorizedCoder``, its dimensions per component
    taken as independent: log weights ``[K]``, means and stds ``[K, dims]``, the grid's cell
    edges ``[cells + 1]`` and each component's CDF at them ``[K, dims, cells + 1]``."""

    log_weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    edges: np.ndarray
    cdf: np.ndarray


class FactorizedCoder:
    """Integer vectors coded one dimension at a time, dimension ``i`` under its own
    categorical over ``-radius..radius`` (``probabilities[i]``); shared by the VAE's code and
    the PCA baseline, so both pay the same coder."""

    def __init__(
        self, probabilities: np.ndarray, centroids: np.ndarray, mixture: _Mixture | None = None
    ) -> None:
        dims, size = probabilities.shape
        self.radius = (size - 1) // 2
        self.dims = dims
        self.centroids = centroids
        """``[dims, cells]``: the value each cell decodes to (the model's mean in the cell)"""
        self.probabilities = probabilities
        self.mixture = mixture
        self._trees: tuple[list, list] | None = None
        self.models = [
            constriction.stream.model.Categorical(row, perfect=False) for row in probabilities
        ]

    @classmethod
    def gaussian_mixture(
        cls, weights: np.ndarray, means: np.ndarray, stds: np.ndarray, step: float, bound: float
    ) -> FactorizedCoder:
        """Each dimension's marginal of a Gaussian mixture (``weights [K]``, ``means`` and
        ``stds [K, dims]``) integrated over the cells of a grid of ``step`` that covers
        ``+-bound``; the end cells take the tails. A cell decodes to the marginal's mean
        within it, not to its centre: at coarse steps the mass of a cell sits towards zero,
        and the centroid is what minimizes the squared error there."""
        radius = math.ceil(bound / step)
        edges = (np.arange(-radius, radius + 2) - 0.5) * step
        edges[0], edges[-1] = -np.inf, np.inf
        t = (edges - means[..., None]) / stds[..., None]  # [K, dims, cells + 1]
        cdf = _ndtr(t)
        mass = np.einsum("k,kdc->dc", weights, np.diff(cdf, axis=-1))  # for the centroids
        # the integral of z N(z; m, s) over a cell: m (its mass) - s (the density's change)
        first = means[..., None] * np.diff(cdf, axis=-1) - stds[..., None] * np.diff(
            np.exp(-0.5 * np.square(t)) / math.sqrt(2 * math.pi), axis=-1
        )
        centres = np.arange(-radius, radius + 1) * step
        tiny = mass < 1e-12  # no mass the float can tell: decode to the cell's centre
        centroids = np.where(
            tiny, centres, np.einsum("k,kdc->dc", weights, first) / np.where(tiny, 1.0, mass)
        )
        mixture = _Mixture(np.log(weights), means, stds, edges, cdf)
        return cls(integer_masses(weights, means, stds, edges), centroids, mixture)

    def points(self, codes: np.ndarray, count: int) -> np.ndarray:
        """``count`` points ``[n, count, dims]`` in each code's cell, spread by the mixture
        restricted to the cell, so that the mean of a function over them estimates its
        conditional mean given the code (``LossyCodec.images`` averages decoded images).

        Deterministic: the points are quantiles, not random draws. Each component's share of
        the cell (its mass in the cell; within a component the dimensions are taken as
        independent, each the component's marginal) gives it that share of the ``count``
        points (systematic resampling); the ``m`` points a component gets are the quantiles
        ``(j + 1/2) / m`` of its distribution in the cell, dimension ``d`` visiting them in
        the order ``j (2 d + 1) + d mod m`` (a rank-1 lattice, so that the points do not sit
        on a diagonal)."""
        if self.mixture is None:
            raise ValueError("this coder has no mixture to spread points by")
        log_weights, means, stds, edges, cdf = self.mixture
        cells = self._check(codes)  # [n, dims]
        dims = np.arange(self.dims)
        inside = cdf[:, dims, cells + 1] - cdf[:, dims, cells]  # [K, n, dims]
        log_share = log_weights[:, None] + np.log(np.maximum(inside, 1e-300)).sum(-1)  # [K, n]
        share = np.exp(log_share - log_share.max(0))
        cumulative = np.cumsum(share / share.sum(0), axis=0).T  # [n, K]
        slots = (np.arange(count) + 0.5) / count
        component = np.minimum((cumulative[:, None, :] < slots[:, None]).sum(-1), len(means) - 1)
        # each slot's rank among the slots of its component, and how many those are
        same = component[:, :, None] == component[:, None, :]  # [n, count, count]
        rank = (same & np.tri(count, k=-1, dtype=bool)).sum(-1)[..., None]
        many = same.sum(-1)[..., None]
        quantile = ((rank * (2 * dims + 1) + dims) % many + 0.5) / many  # [n, count, dims]
        k, c = component[..., None], cells[:, None, :]
        low, high = cdf[k, dims, c], cdf[k, dims, c + 1]
        u = np.clip(low + quantile * (high - low), 1e-300, 1 - 1e-16)
        z = means[k, dims] + stds[k, dims] * _ndtri(u)
        return np.clip(z, edges[c], edges[c + 1])  # float's rounding stays in the cell

    def values(self, codes: np.ndarray) -> np.ndarray:
        """What integer codes ``[n, dims]`` decode to: each cell's centroid."""
        return self.centroids[np.arange(self.dims), codes + self.radius]

    def quantize(self, values: np.ndarray, step: float) -> np.ndarray:
        """``values / step`` rounded to the grid, clamped to its ends, as int32."""
        return np.clip(np.rint(values / step), -self.radius, self.radius).astype(np.int32)

    def _check(self, codes: np.ndarray) -> np.ndarray:
        if codes.ndim != 2 or codes.shape[1] != self.dims:
            raise CodecError(f"expected codes of shape n x {self.dims}; got {codes.shape}")
        return codes.astype(np.int32) + self.radius

    def encode(self, codes: np.ndarray) -> np.ndarray:
        """Every code in one ANS stack: the words (``uint32``)."""
        symbols = self._check(codes)
        coder = constriction.stream.stack.AnsCoder()
        for i in reversed(range(self.dims)):  # pushed last to first: popped first to last
            coder.encode_reverse(np.ascontiguousarray(symbols[:, i]), self.models[i])
        return coder.get_compressed()

    def decode(self, words: np.ndarray, count: int) -> np.ndarray:
        """``count`` codes from the words. A count that the words cannot hold is refused
        before anything is allocated: every code costs at least the bits of each
        dimension's likeliest cell (its probability padded by the coder's resolution)."""
        likeliest = self.probabilities.max(1) / self.probabilities.sum(1)
        padding = self.probabilities.shape[1] * 2.0**-24
        bits = -np.log2(np.minimum(1.0, likeliest + padding)).sum()
        if count * bits > 32 * len(words) + 96:  # the coder's state: up to 64 bits of slack
            raise CodecError(
                f"the header claims {count:,} images, more than the file's {4 * len(words):,} "
                "bytes of codes can hold: the file is damaged"
            )
        coder = constriction.stream.stack.AnsCoder(words)
        try:
            columns = [coder.decode(model, count) for model in self.models]
        except (ValueError, RuntimeError) as error:
            raise CodecError(f"the coder words are damaged ({error})") from None
        if not coder.is_empty():
            raise CodecError("the coder words are damaged: bits are left after the last code")
        return np.stack(columns, axis=1) - self.radius

    def encode_each(self, codes: np.ndarray) -> list[bytes]:
        """One stream per code: a prefix (Huffman) code per dimension, as few whole bytes as
        its bits need. ANS would leave about 2.8 bytes of final state per image, a prefix
        code loses a fraction of a bit per dimension instead (measured in the README)."""
        trees = self._huffman()[0]
        streams = []
        for row in self._check(codes):
            coder = constriction.symbol.QueueEncoder()
            for symbol, tree in zip(row.tolist(), trees, strict=True):
                coder.encode_symbol(symbol, tree)
            words, bits = coder.get_compressed_and_bitrate()
            streams.append(words.astype("<u4").tobytes()[: (bits + 7) // 8])
        return streams

    def decode_one(self, data: bytes) -> np.ndarray:
        padded = data + bytes(-len(data) % 4)
        coder = constriction.symbol.QueueDecoder(np.frombuffer(padded, "<u4").astype(np.uint32))
        try:
            row = np.array([coder.decode_symbol(tree) for tree in self._huffman()[1]], np.int32)
        except (ValueError, RuntimeError) as error:
            raise CodecError(f"the stream is damaged ({error})") from None
        if self.encode_each((row - self.radius)[None])[0] != data:  # bytes beyond the code
            raise CodecError("the stream is damaged: it does not end where its code ends")
        return row - self.radius

    def _huffman(self) -> tuple[list, list]:
        """The prefix codes of the dimensions (built on first use: the whole-set layout needs
        none), for encoding and decoding."""
        if self._trees is None:
            floor = np.maximum(self.probabilities, 1e-300)  # every cell gets a code
            self._trees = (
                [constriction.symbol.huffman.EncoderHuffmanTree(row) for row in floor],
                [constriction.symbol.huffman.DecoderHuffmanTree(row) for row in floor],
            )
        return self._trees


def codes_digest(codes: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(codes, dtype="<i4").tobytes()).digest()[:8]


@dataclass(frozen=True)
class Setting:
    """What a stream was coded with: the rate level and the entropy model."""

    rate: int
    entropy: str

    @property
    def mode(self) -> int:
        return ENTROPY_MODELS[self.entropy]


class LossyCodec:
    """Lossy coding of ``uint8`` images ``[N, H, W]`` (values 0..255) through the VAE's code."""

    def __init__(self, model: ConvVAE, model_sha256: bytes) -> None:
        self.model = model.eval()
        self.model_sha256 = model_sha256
        self._coders: dict[Setting, FactorizedCoder] = {}
        # The last images' posterior means and the last codes' pictures, by the sha256 of
        # their bytes: a sweep codes the same images at every level and decodes the same
        # codes from two layouts (the networks are deterministic, so a hit is the same array).
        self._means: tuple[bytes, np.ndarray] | None = None
        self._pictures: tuple[bytes, np.ndarray] | None = None

    @classmethod
    def from_folder(cls, folder: str | Path) -> LossyCodec:
        return cls(load_model(folder), weights_sha256(folder))

    @property
    def has_mixture(self) -> bool:
        return bool(self.model.config.sampler_components)

    def setting(self, rate: int = DEFAULT_RATE, entropy: str | None = None) -> Setting:
        """``entropy`` None: the mixture when the model has one, else the prior."""
        check_rate(rate)
        entropy = entropy or ("mixture" if self.has_mixture else "prior")
        if entropy not in ENTROPY_MODELS:
            raise CodecError(f"unknown entropy model {entropy!r}; known: mixture, prior")
        if entropy == "mixture" and not self.has_mixture:
            raise CodecError("this model has no fitted mixture (model.sampler_components = 0)")
        return Setting(rate, entropy)

    def coder(self, setting: Setting) -> FactorizedCoder:
        if setting not in self._coders:
            if setting.entropy == "mixture":
                weights = self.model.sampler_weights.double().numpy()
                means = self.model.sampler_means.double().numpy()
                stds = exact_stds(self.model.sampler_scale_tril)
            else:
                d = self.model.config.latent_dim
                weights, means, stds = np.ones(1), np.zeros((1, d)), np.ones((1, d))
            self._coders[setting] = FactorizedCoder.gaussian_mixture(
                weights, means, stds, step(setting.rate), LATENT_RANGE
            )
        return self._coders[setting]

    # Images <-> integer codes ----------------------------------------------------------
    def _check_images(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        _, h, w = self.model.image_shape
        if images.ndim != 3 or len(images) == 0 or images.shape[1:] != (h, w):
            raise CodecError(f"expected images as an array N x {h} x {w}; got {images.shape}")
        if images.dtype != np.uint8:
            raise CodecError(f"expected 8-bit images (uint8); got {images.dtype}")
        return images

    def codes(self, images: np.ndarray, setting: Setting) -> np.ndarray:
        """The quantized posterior means ``[N, latent_dim]`` (int32) of 8-bit images."""
        images = self._check_images(images)
        key = _digest(images)
        if self._means is None or self._means[0] != key:
            self._means = key, self._posterior_means(images)
        return self.coder(setting).quantize(self._means[1], step(setting.rate))

    @torch.no_grad()
    def _posterior_means(self, images: np.ndarray) -> np.ndarray:
        means = []
        for start in range(0, len(images), BATCH * 10):
            x = torch.from_numpy(images[start : start + BATCH * 10].astype(np.float32) / 255)
            means.append(self.model.encode(x.unsqueeze(1))[0])
        return torch.cat(means).double().numpy()

    def images(self, codes: np.ndarray, setting: Setting) -> np.ndarray:
        """The 8-bit images ``[N, H, W]`` that ``codes`` decode to: the model's lossy decoder
        at the cell's centroid and the level when it has one (``lossy_decoder``); else
        the decoder's mean image at the centroid, or below level ``AVERAGED_BELOW`` the
        average of the mean images at ``points_per_code`` points of the cell."""
        codes = np.ascontiguousarray(codes, dtype=np.int32)
        key = _digest(codes, f"{setting.rate} {setting.entropy}".encode())
        if self._pictures is None or self._pictures[0] != key:
            self._pictures = key, self._pictures_of(codes, setting)
        return self._pictures[1].copy()

    @torch.no_grad()
    def _pictures_of(self, codes: np.ndarray, setting: Setting) -> np.ndarray:
        coder, count = self.coder(setting), points_per_code(setting.rate)
        learned = self.model.lossy_decoder
        if learned is not None:  # trained for the average over the cell: one picture each
            count = 1
        # Each distinct code once: at the coarse levels many digits share one (and the
        # autoregressive decoder's pictures take a step per pass of its schedule).
        codes, inverse = np.unique(codes, axis=0, return_inverse=True)
        pictures = []
        chunk = LEARNED_BATCH if learned is not None else BATCH * 10 // count
        for start in range(0, len(codes), chunk):
            part = codes[start : start + chunk]
            if learned is not None:
                z = torch.from_numpy(coder.values(part).astype(np.float32))
                mean = learned(z, torch.full((len(z),), setting.rate)).squeeze(1)
            elif count == 1:
                z = torch.from_numpy(coder.values(part).astype(np.float32))
                mean = self.model.mean_image(z, exact=False).squeeze(1)
            else:
                z = torch.from_numpy(coder.points(part, count).astype(np.float32)).flatten(0, 1)
                mean = self.model.mean_image(z, exact=False).squeeze(1)
                mean = mean.unflatten(0, (len(part), count)).mean(1)
            pictures.append(mean)
        pictures = torch.round(torch.cat(pictures) * 255).clamp_(0, 255).to(torch.uint8)
        return pictures.numpy()[inverse.reshape(-1)]

    # The whole set -----------------------------------------------------------------------
    def compress(
        self, images: np.ndarray, rate: int = DEFAULT_RATE, entropy: str | None = None
    ) -> bytes:
        setting = self.setting(rate, entropy)
        codes = self.codes(images, setting)
        _, h, w = self.model.image_shape
        header = Header(
            self.model_sha256, len(codes), h, w, 256, BATCH, rate, codes_digest(codes),
            setting.mode,
        )  # fmt: skip
        return header.pack() + self.coder(setting).encode(codes).astype("<u4").tobytes()

    def decompress(self, data: bytes) -> np.ndarray:
        header, words = Header.unpack(data)
        if header.mode not in ENTROPY_MODELS.values():
            raise CodecError(f"a {MODES[header.mode]} file: decompress it without --lossy")
        header.check_model(self.model_sha256)
        _, h, w = self.model.image_shape
        if (header.height, header.width) != (h, w):
            raise CodecError(
                f"the file holds {header.height} x {header.width} images; this model codes "
                f"{h} x {w}"
            )
        entropy = next(name for name, mode in ENTROPY_MODELS.items() if mode == header.mode)
        setting = self.setting(header.latent_bits, entropy)
        codes = self.coder(setting).decode(words, header.count)
        if codes_digest(codes) != header.checksum:
            raise CodecError("the decoded codes fail the checksum: the file is damaged")
        return self.images(codes, setting)

    # One stream per image ----------------------------------------------------------------
    def compress_each(
        self, images: np.ndarray, rate: int = DEFAULT_RATE, entropy: str | None = None
    ) -> list[bytes]:
        setting = self.setting(rate, entropy)
        flags = _STREAM_MAGIC | setting.rate | (_PRIOR_FLAG if setting.entropy == "prior" else 0)
        head = _STREAM.pack(flags, self.model_sha256[:2])
        return [
            head + body for body in self.coder(setting).encode_each(self.codes(images, setting))
        ]

    def decompress_each(self, streams: list[bytes]) -> np.ndarray:
        codes, settings = [], []
        for number, data in enumerate(streams):
            try:
                setting, code = self._read_stream(data)
            except CodecError as error:
                raise CodecError(f"stream {number}: {error}") from None
            codes.append(code)
            settings.append(setting)
        images = np.empty((len(streams), *self.model.image_shape[1:]), dtype=np.uint8)
        for setting in set(settings):  # streams may differ in rate: decode each group at once
            index = [i for i, s in enumerate(settings) if s == setting]
            images[index] = self.images(np.stack([codes[i] for i in index]), setting)
        return images

    def _read_stream(self, data: bytes) -> tuple[Setting, np.ndarray]:
        if not is_image_stream(data):
            raise CodecError("not an mnist-vae image stream (a lossy stream of one image)")
        if data[0] & _MAGIC_BITS == _STREAM_MAGIC_V1:
            raise CodecError(
                "a one-image stream of format version 1 (before portable decoding: read it with "
                "mnist-vae 0.1); this mnist-vae reads version 2"
            )
        flags, model = _STREAM.unpack(data[:STREAM_HEADER])
        check_model(model, self.model_sha256)
        entropy = "prior" if flags & _PRIOR_FLAG else "mixture"
        setting = self.setting(flags & _RATE_BITS, entropy)
        return setting, self.coder(setting).decode_one(data[STREAM_HEADER:])


@pinned_arithmetic()  # the same bits on any number of threads (invariant.py)
def fit_lossy_decoder(
    model: ConvVAE,
    images: torch.Tensor,
    epochs: int,
    seed: int,
    binarize: str = "none",
    batch_size: int = 128,
    lr: float = 1e-3,
    progress: Callable[[Iterable], Iterable] = iter,
) -> list[float]:
    """Give the trained ``model`` its lossy decoder and train it: for each training image
    (``[N, 1, H, W]`` in [0, 1]) at a random level, its code's centroid in, the image out,
    squared error, Adam at ``lr`` cosine-decayed to 0; ``progress`` wraps each epoch's
    batches. With ``binarize="dynamic"`` the targets are the images drawn once as Bernoulli
    pixels (the lossy codec then sees binary digits). Returns each epoch's mean squared error
    (pixels in [0, 1])."""
    if binarize == "dynamic":
        images = torch.bernoulli(images, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)  # the new head's initial weights
    decoder = model.add_lossy_decoder()
    codec = LossyCodec(model, b"")
    means = posterior_means(model, images)
    centroids = []
    for rate in range(MAX_RATE + 1):
        coder = codec.coder(codec.setting(rate))
        centroids.append(torch.from_numpy(coder.values(coder.quantize(means, step(rate)))))
    centroids = torch.stack(centroids).float()  # [levels, N, latent_dim]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    per_epoch = math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * per_epoch)
    decoder.train()
    errors = []
    for _ in range(epochs):
        total = 0.0
        for index in progress(torch.randperm(len(images), generator=generator).split(batch_size)):
            levels = torch.randint(0, MAX_RATE + 1, (len(index),), generator=generator)
            loss = F.mse_loss(decoder(centroids[levels, index], levels), images[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        errors.append(total / len(images))
    decoder.eval()
    return errors


def _digest(array: np.ndarray, extra: bytes = b"") -> bytes:
    """What an array holds, exactly: its shape, type and bytes."""
    head = f"{array.shape} {array.dtype}".encode() + extra
    return hashlib.sha256(head + np.ascontiguousarray(array).tobytes()).digest()


def is_image_stream(data: bytes) -> bool:
    """Whether ``data`` starts like a one-image stream, of this format version or the first
    (a whole-set file starts with ``M``)."""
    return len(data) >= STREAM_HEADER and data[0] & _MAGIC_BITS in (_STREAM_MAGIC, _STREAM_MAGIC_V1)
