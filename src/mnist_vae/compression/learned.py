"""The learned transform codecs that learned compression measures itself by, trained on the
training digits: Ballé et al. 2018's factorized prior (``bmshj2018-factorized``) and scale
hyperprior (``bmshj2018-hyperprior``), Minnen et al. 2018's mean-scale hyperprior
(``mbt2018-mean``), as CompressAI builds them, with one grey channel in and out.

A model needs its input to be a multiple of its downsampling factor (16 for the factorized
prior, 64 for the hyperpriors), so a 28 x 28 digit is padded with black, the digits'
background, to 32 x 32 or 64 x 64 (``pad``). The padding travels through the codec and
its bits are in the stream, but the loss, the rate per pixel and the distortion count only
the digit's 784 pixels: the decoded picture is cropped back to 28 x 28 before anything is
measured.

Every rate is the bytes of real streams from CompressAI's own entropy coder (``compress``
after ``update``), one stream per digit (``pack``: its strings, each but the last
preceded by its length); every distortion is that of the images decoded from those bytes,
after checking that they are the pictures the encoder meant. (CompressAI's coder is a
64-bit rANS that ends every string on its 8-byte state: a digit costs the factorized prior
at least 8 bytes, a hyperprior, with two strings, at least 16.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from compressai.models import (
    CompressionModel,
    FactorizedPrior,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from compressai.models.utils import conv, deconv

from ..errors import CodecError
from ..invariant import pinned_arithmetic
from ..params import LEARNED_CODECS, LearnedBaselinesParams

SIDE = 28
PIXELS = SIDE * SIDE
MODELS: dict[str, type[CompressionModel]] = {
    "bmshj2018-factorized": FactorizedPrior,
    "bmshj2018-hyperprior": ScaleHyperprior,
    "mbt2018-mean": MeanScaleHyperprior,
}
assert tuple(MODELS) == LEARNED_CODECS
AUX_LR = 1e-2
"""Adam's rate for the entropy bottleneck's quantiles"""
SETTLED = 0.1
"""after training, the quantiles take up to ``settle_steps`` more steps, until the aux loss is
below this: quantiles off target widen or clip the entropy coder's tables"""


def build(name: str, channels: int, latent_channels: int) -> CompressionModel:
    """CompressAI's model ``name`` with ``N = channels``, ``M = latent_channels``, its first
    convolution reading one grey channel and its last writing one."""
    model = MODELS[name](N=channels, M=latent_channels)
    model.g_a[0] = conv(1, channels)
    model.g_s[-1] = deconv(channels, 1)
    return model


def padded_side(model: CompressionModel) -> int:
    """The side of the square the digits are padded to: the next multiple of the model's
    downsampling factor."""
    factor = model.downsampling_factor
    return math.ceil(SIDE / factor) * factor


def pad(x: torch.Tensor, side: int) -> torch.Tensor:
    """Digits ``[B, 1, 28, 28]`` in [0, 1] centred on a black ``side x side`` square."""
    before = (side - SIDE) // 2
    after = side - SIDE - before
    return F.pad(x, (before, after, before, after))


def crop(x: torch.Tensor) -> torch.Tensor:
    """The digit back out of ``pad``'s square."""
    before = (x.shape[-1] - SIDE) // 2
    return x[..., before : before + SIDE, before : before + SIDE]


def rate_distortion_loss(
    output: dict, x: torch.Tensor, lmbda: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CompressAI's training objective, bits per pixel + lmbda * 255^2 * MSE, over the digit's
    own 784 pixels: returns the loss, the bits per pixel and the MSE (pixels in [0, 1])."""
    bits = sum(-torch.log2(p).sum() for p in output["likelihoods"].values())
    bpp = bits / (len(x) * PIXELS)
    mse = F.mse_loss(crop(output["x_hat"]), x)
    return bpp + lmbda * 255**2 * mse, bpp, mse


@dataclass(frozen=True)
class Training:
    """What training a model took and where it ended (the last epoch's averages)."""

    epochs: int
    steps: int
    seconds: float
    loss: float
    bits_per_pixel: float
    mse: float
    aux_loss: float
    epoch_losses: tuple[float, ...]
    """each epoch's mean loss, to see it level off"""


@pinned_arithmetic()  # the same bits on any number of threads (invariant.py)
def train(
    model: CompressionModel,
    images: np.ndarray,
    lmbda: float,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    settle_steps: int,
    progress: Callable[[Iterable], Iterable] = iter,
) -> Training:
    """Train ``model`` on uint8 digits ``[N, 28, 28]`` for ``epochs`` with Adam at ``lr``
    (cosine-decayed to 0 over all steps) and the usual second optimizer for the entropy
    bottleneck's quantiles (its ``aux_loss``), then up to ``settle_steps`` of that optimizer
    alone (``SETTLED``); ``progress`` wraps each epoch's batches.
    Seeded: the same inputs give the same weights on the same machine, on any number of
    threads."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    side = padded_side(model)
    named = dict(model.named_parameters())
    aux = [p for n, p in named.items() if n.endswith(".quantiles")]
    main = [p for n, p in named.items() if not n.endswith(".quantiles")]
    optimizer = torch.optim.Adam(main, lr=lr)
    aux_optimizer = torch.optim.Adam(aux, lr=AUX_LR)
    per_epoch = math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * per_epoch)
    model.train()
    start = time.perf_counter()
    losses = []
    for _ in range(epochs):
        sums = torch.zeros(4, dtype=torch.float64)
        order = torch.randperm(len(x), generator=generator).split(batch_size)
        for batch in progress(order):
            target = x[batch]
            loss, bpp, mse = rate_distortion_loss(model(pad(target, side)), target, lmbda)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(main, 1.0)
            optimizer.step()
            schedule.step()
            aux_loss = model.aux_loss()
            aux_optimizer.zero_grad()
            aux_loss.backward()
            aux_optimizer.step()
            parts = [loss.item(), bpp.item(), mse.item(), aux_loss.item()]
            sums += torch.tensor(parts, dtype=torch.float64) * len(batch)
        means = (sums / len(x)).tolist()
        losses.append(means[0])
    for _ in range(settle_steps):
        aux_loss = model.aux_loss()
        if aux_loss.item() < SETTLED:
            break
        aux_optimizer.zero_grad()
        aux_loss.backward()
        aux_optimizer.step()
    means[3] = aux_loss.item()
    model.eval()
    model.update(force=True)  # the entropy coder's tables, from the trained densities
    seconds = time.perf_counter() - start
    return Training(epochs, epochs * per_epoch, seconds, *means, tuple(losses))


def pack(strings: Sequence[bytes]) -> bytes:
    """One digit's stream: its strings (the latent's, then the hyper-latent's), each but the
    last preceded by its length as a LEB128 varint."""
    out = bytearray()
    for string in strings[:-1]:
        n = len(string)
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)
        out += string
    return bytes(out + strings[-1])


def unpack(stream: bytes, count: int) -> list[bytes]:
    """``pack`` undone: the ``count`` strings of one stream."""
    strings, at = [], 0
    for _ in range(count - 1):
        n, shift = 0, 0
        while True:
            if at >= len(stream) or shift > 28:
                raise CodecError("a learned codec's stream ends inside a length")
            byte = stream[at]
            at += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if at + n > len(stream):
            raise CodecError("a learned codec's stream is shorter than its lengths")
        strings.append(stream[at : at + n])
        at += n
    return [*strings, stream[at:]]


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return crop(x).squeeze(1).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


@torch.no_grad()
def compress(model: CompressionModel, images: np.ndarray, batch: int = 500) -> list[bytes]:
    """One stream per uint8 digit (``pack``), by the model's own entropy coder."""
    side = padded_side(model)
    streams: list[bytes] = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start : start + batch]).float().div(255).unsqueeze(1)
        out = model.compress(pad(x, side))
        streams += [pack(parts) for parts in zip(*out["strings"], strict=True)]
    return streams


def _strings_per_stream(model: CompressionModel) -> int:
    return 2 if isinstance(model, ScaleHyperprior) else 1  # the hyperpriors add z's string


@torch.no_grad()
def decompress(model: CompressionModel, streams: Sequence[bytes], batch: int = 500) -> np.ndarray:
    """The uint8 digits ``[N, 28, 28]`` decoded from ``compress``'s streams."""
    side = padded_side(model) // model.downsampling_factor  # the first string's latent's side
    count = _strings_per_stream(model)
    decoded = [np.zeros((0, SIDE, SIDE), np.uint8)]
    for start in range(0, len(streams), batch):
        parts = [unpack(s, count) for s in streams[start : start + batch]]
        strings = [list(column) for column in zip(*parts, strict=True)]
        decoded.append(_to_uint8(model.decompress(strings, (side, side))["x_hat"]))
    return np.concatenate(decoded)


@torch.no_grad()
def intended(model: CompressionModel, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """The pictures the encoder means to send, without the entropy coder: the model's forward
    pass in eval mode, whose latents are rounded as ``compress`` rounds them. A stream decodes
    correctly when it gives exactly these."""
    side = padded_side(model)
    pictures = [np.zeros((0, SIDE, SIDE), np.uint8)]
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start : start + batch]).float().div(255).unsqueeze(1)
        pictures.append(_to_uint8(model(pad(x, side))["x_hat"].clamp(0, 1)))
    return np.concatenate(pictures)


@dataclass(frozen=True)
class Point:
    """One model at one lambda: how it was trained, its streams of the test digits and the
    digits decoded from them (checked against ``intended``)."""

    codec: str
    lmbda: float
    training: Training
    streams: list[bytes]
    decoded: np.ndarray


def sweep(
    name: str,
    params: LearnedBaselinesParams,
    train_images: np.ndarray,
    test_images: np.ndarray,
    progress: Callable[[str], Callable[[Iterable], Iterable]] = lambda _: iter,
) -> Iterator[Point]:
    """Model ``name`` at each of its lambdas (``params.lambdas_of``), largest first: the first
    trained from scratch for ``params.epochs``, each next one from the weights of the one
    before for ``params.fine_tune_epochs``; after each, the test digits coded, decoded and
    checked."""
    torch.manual_seed(params.seed)
    model = build(name, params.channels, params.latent_channels)
    for i, lmbda in enumerate(params.lambdas_of(name)):
        epochs = params.epochs if i == 0 else params.fine_tune_epochs
        training = train(
            model, train_images, lmbda, epochs, params.batch_size, params.lr, params.seed + i,
            params.settle_steps, progress(f"{name}, lambda {lmbda}"),
        )  # fmt: skip
        streams = compress(model, test_images)
        decoded = decompress(model, streams)
        if not np.array_equal(decoded, intended(model, test_images)):
            raise CodecError(f"{name} at lambda {lmbda}: a decoded stream differs from its image")
        yield Point(name, lmbda, training, streams, decoded)
