"""Integer arithmetic for everything that decides a probability the entropy coder sees.

An entropy coder needs bit-exact probabilities on both sides. Floating-point networks
are not bit-exact across CPUs, kernels, thread counts, devices and torch versions: a
matrix product sums in another order under AVX-512 than under AVX2, over 4 threads than
over 1, and ``exp`` or ``sigmoid`` differ in the last bit between vectorised and scalar
kernels. So the codecs compute their probabilities here, from integers only (after
Ballé, Johnston and Minnen 2019, "Integer networks for data compression with
latent-variable models", applied to a network trained in floating point):

* ``ExactNetwork`` runs the trained encoder and decoder with weights rounded to
  integers (a power-of-two scale per layer) on activations rounded to multiples of
  ``2^-ACTIVATION_BITS``. The products and sums are carried out in float64, whose
  integers are exact up to 2^53: each layer's scale is chosen so that no partial sum of
  any output can exceed 2^52 (checked when the weights are converted), so every
  summation order, kernel, thread count and device gives the same integers. Between
  layers only correctly rounded IEEE operations (a product by the leaky slope, a power
  of two, rounding to an integer) touch the numbers, which are the same everywhere.
* ``Table`` replaces each transcendental function (sigmoid, exp, log, the normal
  CDF, softplus) by integers sampled on a grid and interpolated linearly in integer
  arithmetic. A table is computed once per process with the platform's ``math`` library
  and rounded to integers; ``Table.margin`` measures how far its exact values stay
  from a rounding boundary: at least 17 ulps for every table
  (tests/test_fixed_point.py), so any libm within that of this one's gives the same
  integers.

Everything downstream (the pixel likelihoods in ``exact_likelihoods``, the quantized
Gaussians of the latents in ``codec``, the lossy code's entropy model in
``lossy``) is integer arithmetic on torch ``int64`` tensors, exact on every platform.

Why not the other remedy, probabilities computed in floating point and rounded to a
coarse grid with a margin: a test set asks for about 1.6 billion probabilities, and a
value within a kernel's error of a grid boundary somewhere among them is to be expected;
integers leave nothing to chance. The cost is float64 products (exact where float32's
would not be) instead of float32's oneDNN kernels; README (Compression) gives the rate
and speed measured before and after.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATION_BITS = 16  # activations are multiples of 2^-16
ACTIVATION_RANGE = 2**10  # and are clamped to +-1024 (far beyond what the network reaches)
EXACT_LIMIT = 2**52  # the largest partial sum a layer may reach (float64 is exact to 2^53)
LATENT_LIMIT = 16  # latents enter the decoder clamped to +-16 (the codecs' grids end at 8)
PROBABILITY_BITS = 30  # the tables' values in [0, 1] are integers out of 2^30


def rounded(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, ties to even: the same on every device."""
    return torch.round(x)


@dataclass(frozen=True)
class Table:
    """A function sampled at ``lo + i 2^-step_bits`` (``i = 0..n``) and stored as the
    integers ``round(f(x) 2^value_bits)``; ``__call__`` interpolates it linearly in
    integer arithmetic and is constant beyond the ends."""

    values: torch.Tensor  # int64, n + 1 entries
    slopes: torch.Tensor  # int64, the differences of neighbours (0 after the last)
    lo: int  # in units of 2^-step_bits
    step_bits: int
    value_bits: int
    exact: tuple[float, ...]  # f(x) 2^value_bits before rounding, for the margin

    @classmethod
    def of(
        cls, f: Callable[[float], float], lo: float, hi: float, step_bits: int, value_bits: int
    ) -> Table:
        start, stop = round(lo * 2**step_bits), round(hi * 2**step_bits)
        exact = tuple(f(i / 2**step_bits) * 2**value_bits for i in range(start, stop + 1))
        values = torch.tensor([round(v) for v in exact], dtype=torch.int64)
        slopes = torch.cat([torch.diff(values), torch.zeros(1, dtype=torch.int64)])
        return cls(values, slopes, start, step_bits, value_bits, exact)

    def __call__(self, x: torch.Tensor, x_bits: int) -> torch.Tensor:
        """f at ``x 2^-x_bits`` (``x`` int64) as an integer out of ``2^value_bits``."""
        shift = x_bits - self.step_bits
        if shift < 0:
            raise ValueError("the argument is coarser than the table's grid")
        position = (x - (self.lo << shift)).clamp_(0, (len(self.values) - 1) << shift)
        index = position >> shift
        y = torch.take(self.slopes, index).mul_(position.bitwise_and_((1 << shift) - 1))
        return y.bitwise_right_shift_(shift).add_(torch.take(self.values, index))

    def margin(self) -> float:
        """The smallest distance of an exact value from a rounding boundary (a half-integer),
        relative to the value: how wrong a platform's libm may be before an entry changes."""
        return min(abs(v - math.floor(v) - 0.5) / max(abs(v), 1.0) for v in self.exact)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


SIGMOID_RANGE = 24  # beyond +-24 the sigmoid is 0 or 1 at 2^-30
EXP_RANGE = 32  # exp(-t) for t in [0, 32]; beyond, 0 at 2^-30
SCALE_RANGE = 7  # exp(x) for x in [-7, 7]: the logistics' inverse scales
NORMAL_RANGE = 9  # the normal CDF on [-9, 9]


@cache
def tables() -> dict[str, Table]:
    """Every table the codecs use, built on first use (about 0.1 s here)."""
    return {
        "sigmoid": Table.of(_sigmoid, -SIGMOID_RANGE, SIGMOID_RANGE, 8, PROBABILITY_BITS),
        "softplus": Table.of(_softplus, -SIGMOID_RANGE, SIGMOID_RANGE, 8, PROBABILITY_BITS),
        "exp_neg": Table.of(lambda t: math.exp(-t), 0, EXP_RANGE, 10, PROBABILITY_BITS),
        "exp": Table.of(math.exp, -SCALE_RANGE, SCALE_RANGE, 10, 24),
        "log_mantissa": Table.of(math.log, 1, 2, 12, PROBABILITY_BITS),
        "normal_cdf": Table.of(_normal_cdf, -NORMAL_RANGE, NORMAL_RANGE, 10, PROBABILITY_BITS),
    }


def log_fixed(x: torch.Tensor, x_bits: int, out_bits: int) -> torch.Tensor:
    """log(x 2^-x_bits) for positive int64 ``x`` (below 2^53), at ``2^-out_bits``: the
    exponent taken exactly (``frexp`` of a float64 integer is exact), the mantissa's
    logarithm from the table."""
    mantissa, exponent = torch.frexp(x.double())  # x = mantissa 2^exponent, mantissa in [1/2, 1)
    m = rounded(torch.ldexp(mantissa, torch.tensor(21))).long()  # mantissa 2^21 in [2^20, 2^21)
    log_m = tables()["log_mantissa"](m, 20)  # log of m 2^-20 in [1, 2): exponent - 1 left
    ln2 = round(math.log(2.0) * 2**PROBABILITY_BITS)
    total = log_m + (exponent.long() - 1 - x_bits) * ln2
    return total >> (PROBABILITY_BITS - out_bits)


# The network ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layer:
    """One affine layer in integers: ``weight`` at ``2^-weight_bits``, ``bias`` at
    ``2^-(in_bits + weight_bits)``, and
    the requantisation back to ``2^-ACTIVATION_BITS``, with the leaky slope fused."""

    module: nn.Module  # the float layer (its kind, stride, padding)
    weight: torch.Tensor  # float64 holding integers
    bias: torch.Tensor  # float64 holding integers
    in_bits: int  # the input's fraction bits
    weight_bits: int
    slope: float | None  # the leaky ReLU that follows it, if any

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m, w, b = self.module, self.weight, self.bias  # the bias in the sum: exact too
        if isinstance(m, nn.Linear):
            acc = F.linear(x, w, b)
        elif isinstance(m, nn.ConvTranspose2d):
            acc = F.conv_transpose2d(
                x, w, b, m.stride, m.padding, m.output_padding, m.groups, m.dilation
            )
        else:
            acc = F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
        # In place from here: the same correctly rounded operations on every device.
        if self.slope is not None:  # x, or x times the slope below 0 (one rounded product)
            acc = F.leaky_relu(acc, self.slope, inplace=True)
        scale = 2.0 ** (ACTIVATION_BITS - self.in_bits - self.weight_bits)
        limit = float(ACTIVATION_RANGE << ACTIVATION_BITS)
        return acc.mul_(scale).round_().clamp_(-limit, limit)


def _fan_in_sums(weight: torch.Tensor, transposed: bool) -> list[float]:
    """For each output, the sum of the absolute weights that one output value sums over,
    computed exactly rounded (``math.fsum``), so the same on every platform."""
    w = weight.detach().double().abs()
    rows = w.transpose(0, 1).flatten(1) if transposed else w.flatten(1)  # [out, fan-in]
    return [math.fsum(row) for row in rows.tolist()]


def _integer_layer(
    module: nn.Module, in_bits: int, in_max: float, slope: float | None, factor: float = 1.0
) -> _Layer:
    """``module`` with weights ``factor w`` rounded to integers at the finest power-of-two
    scale for which every partial sum of an output stays within ``EXACT_LIMIT``; ``in_max``
    bounds the integer inputs."""
    transposed = isinstance(module, nn.ConvTranspose2d)
    weight = module.weight.detach().double() * factor
    fan_in = max(_fan_in_sums(weight, transposed)) + 2.0**-30
    bits = math.frexp(EXACT_LIMIT / (2 * in_max * fan_in))[1] - 1  # floor(log2(.)), exactly
    integer_weight = rounded(weight * 2.0**bits)
    outputs = integer_weight.shape[1 if transposed else 0]
    bias = module.bias.detach().double() if module.bias is not None else torch.zeros(outputs)
    integer_bias = rounded(bias * 2.0 ** (bits + in_bits))
    bound = max(_fan_in_sums(integer_weight, transposed)) * in_max + float(integer_bias.abs().max())
    if bound > EXACT_LIMIT:
        raise ValueError(f"layer {module}: partial sums could reach {bound:.3g} > 2^52")
    return _Layer(module, integer_weight, integer_bias, in_bits, bits, slope)


class ExactNetwork:
    """A trained ``model.ConvVAE``'s encoder and decoder in integer arithmetic: the
    same numbers from the same inputs on every platform. Inputs are 8-bit pixel values
    (integers ``0..255``) and latents as integers at ``2^-latent_bits``; outputs are
    integers at ``2^-ACTIVATION_BITS`` (int64)."""

    def __init__(self, model: nn.Module) -> None:
        slope = model.config.negative_slope
        self.encoder = self._chain(model.encoder, 0, 255.0, slope, factor=1 / 255)
        self.heads = [
            _integer_layer(head, ACTIVATION_BITS, ACTIVATION_RANGE << ACTIVATION_BITS, None)
            for head in (model.to_mean, model.to_logvar)
        ]
        head = getattr(model, "pixel_head", None)
        self.head = None
        if head is not None:
            in_max = float(ACTIVATION_RANGE << ACTIVATION_BITS)
            self.head = self._chain(head.network, ACTIVATION_BITS, in_max, slope, factor=1.0)
        self.model = model
        self._decoders: dict[int, list] = {}  # one chain per latent grid

    @staticmethod
    def _chain(
        sequential: nn.Sequential, in_bits: int, in_max: float, slope: float, factor: float
    ) -> list[nn.Module | _Layer]:
        """The layers of ``sequential`` in integers (the first one's input at ``in_bits``),
        each followed by its leaky ReLU; reshaping modules kept as they are."""
        modules = list(sequential)
        chain: list[nn.Module | _Layer] = []
        for i, module in enumerate(modules):
            if isinstance(module, nn.LeakyReLU):
                continue
            if not isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                chain.append(module)
                continue
            follows = modules[i + 1] if i + 1 < len(modules) else None
            act = slope if isinstance(follows, nn.LeakyReLU) else None
            chain.append(_integer_layer(module, in_bits, in_max, act, factor))
            in_bits, in_max, factor = ACTIVATION_BITS, ACTIVATION_RANGE << ACTIVATION_BITS, 1.0
        return chain

    @staticmethod
    def _run(chain: list, x: torch.Tensor) -> torch.Tensor:
        # No FFT or Winograd convolutions from cuDNN. Only where it runs: switching it
        # costs more than a pass of the pixel head on 500 pixels.
        exact = torch.backends.cudnn.flags(enabled=False) if x.is_cuda else nullcontext()
        with torch.no_grad(), exact:
            for layer in chain:
                x = layer(x)
        return x

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of 8-bit images ``[N, 1, H, W]`` (integers 0..255),
        int64 at ``2^-ACTIVATION_BITS``."""
        h = self._run(self.encoder, pixels.double())
        mean, logvar = (self._run([head], h) for head in self.heads)
        return mean.long(), logvar.long()

    def decode(self, z: torch.Tensor, latent_bits: int) -> torch.Tensor:
        """The decoder's output ``[N, channels, H, W]`` (int64 at ``2^-ACTIVATION_BITS``) for
        latents given as integers ``z`` at ``2^-latent_bits``, clamped to +-``LATENT_LIMIT``:
        the likelihood's parameters, or for an autoregressive model the features its pixel
        head reads (then ``pixel_parameters``)."""
        if latent_bits not in self._decoders:
            self._decoders[latent_bits] = self._chain(
                self.model.decoder, 0, float(LATENT_LIMIT << latent_bits),
                self.model.config.negative_slope, factor=2.0**-latent_bits,
            )  # fmt: skip
        limit = LATENT_LIMIT << latent_bits
        return self._run(self._decoders[latent_bits], z.clamp(-limit, limit).double()).long()

    def pixel_parameters(self, rows: torch.Tensor) -> torch.Tensor:
        """An autoregressive model's pixel head on integer rows of ``features + context``
        numbers at ``2^-ACTIVATION_BITS`` (``autoregressive``): the likelihood's
        parameters, ``[M, channels]`` int64. The products of a row sum exactly, so a pixel's
        parameters are the same whether its image is done at once or a pass at a time."""
        if self.head is None:
            raise ValueError("a factorized model has no pixel head")
        return self._run(self.head, rows.double()).long()
