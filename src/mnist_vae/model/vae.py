"""The convolutional VAE, in two architectures.

One uniform API (after pythae): ``encode``, ``decode``, ``reconstruct``,
``sample``, ``interpolate``. The ``VAEConfig`` that built a model is saved
as JSON beside its weights, so a model folder describes itself and loads back
without the params file.

An architecture is a table of encoder convolutions plus an optional dense layer
between them and the latent heads; the decoder mirrors it. ``conv`` is the
original student project's encoder. ``fast`` (the default) halves the image
twice with two 4x4 stride-2 convolutions and adds a 256-unit dense layer: about
a third of the original's multiply-adds per image, so on a laptop CPU it sees
three times the images in the same time, and the dense layer lets the decoder
spend its capacity where the pixels are (see the README's Results).

Shapes are derived from the config, never typed in: the encoder's output size
follows from the image size and the layer table, and each transposed
convolution of the decoder picks the output padding that lands it exactly on
the size its mirror layer started from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..params import MAX_RATE, Params
from .autoregressive import PixelHead
from .folder import load_module, save_model_folder
from .likelihoods import Likelihood, likelihood
from .lossy_decoder import LossyDecoder

Layers = tuple[tuple[int, int, int], ...]  # (out_channels, kernel, stride) per encoder layer


@dataclass(frozen=True)
class Architecture:
    layers: Layers
    hidden: int = 0
    """units of the dense layer between the convolutions and the latent heads (0: none)"""


# The original student project's encoder: 16@7x7, 32@5x5 stride 2, 64@3x3 stride 2, 128@3x3.
CONV_LAYERS: Layers = ((16, 7, 1), (32, 5, 2), (64, 3, 2), (128, 3, 1))

ARCHITECTURES: dict[str, Architecture] = {
    "fast": Architecture(layers=((32, 4, 2), (64, 4, 2)), hidden=256),
    "conv": Architecture(layers=CONV_LAYERS),
}


@dataclass(frozen=True)
class VAEConfig:
    latent_dim: int = 10
    arch: str = "fast"
    in_channels: int = 1
    image_size: int = 28
    negative_slope: float = 0.2
    likelihood: str = "bce"
    """what the decoder's output means (``likelihoods``; the ``train.loss`` trained with)"""
    sampler_components: int = 0
    """Gaussians in the mixture that ``ConvVAE.sample`` draws latents from, fitted to the
    training set's codes after training (``sampler``); 0: the N(0, I) prior"""
    decoder: str = "factorized"
    """``factorized``: every pixel's distribution from z alone; ``autoregressive``: also from
    the pixels above and to its left (``autoregressive``)"""
    head_features: int = 16
    """autoregressive: channels the decoder hands the pixel head at each pixel"""
    head_hidden: int = 32
    """autoregressive: units of the pixel head's two hidden layers"""
    context_radius: int = 3
    """autoregressive: the context is the known pixels of the ``2r + 1``-wide window around
    a pixel (r = 3, raster: the 24 pixels above and to its left)"""
    pass_schedule: str = "raster"
    """autoregressive: the order pixels are decoded in (``autoregressive.PASS_SCHEDULES``):
    ``raster``, one pixel at a time; ``passes-N``, N passes of many pixels each"""
    lossy_decoder: bool = False
    """whether the model carries the lossy codec's own decoder (``lossy_decoder``),
    trained for squared error after the VAE; without it a code decodes to the model's
    mean image"""


def _padding(kernel: int) -> int:
    """'Same' padding for odd kernels; for even ones, the padding that halves at stride 2."""
    return (kernel - 1) // 2


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * _padding(kernel) - kernel) // stride + 1


class VAEOutput(NamedTuple):
    """What ``forward`` returns: a reconstruction through one posterior sample, and the
    posterior it was drawn from (a tuple, so DDP and ``torch.compile`` see its tensors)."""

    decoded: torch.Tensor
    """the decoder's output: the likelihood's parameters per pixel (Bernoulli logits for
    ``bce``), ``[N, channels, H, W]``"""
    mean: torch.Tensor
    """posterior mean, ``[N, latent_dim]``"""
    logvar: torch.Tensor
    """posterior log-variance, ``[N, latent_dim]``"""

    def float(self) -> VAEOutput:
        """All three in float32 (after bfloat16 autocast; a no-op otherwise)."""
        return VAEOutput(*(t.float() for t in self))


class ConvVAE(nn.Module):
    """Gaussian encoder q(z|x), decoder p(x|z) of the config's likelihood, N(0, I) prior,
    and optionally a Gaussian mixture over the codes for sampling (buffers ``sampler_*``)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.likelihood: Likelihood = likelihood(config.likelihood)
        arch = ARCHITECTURES[config.arch]
        act = lambda: nn.LeakyReLU(config.negative_slope)  # noqa: E731

        sizes = [config.image_size]  # spatial size entering each layer, then the output
        channels = [config.in_channels]
        encoder: list[nn.Module] = []
        for out_ch, kernel, stride in arch.layers:
            encoder += [nn.Conv2d(channels[-1], out_ch, kernel, stride, _padding(kernel)), act()]
            channels.append(out_ch)
            sizes.append(_conv_out(sizes[-1], kernel, stride))
        encoder.append(nn.Flatten())
        self.feature_shape = (channels[-1], sizes[-1], sizes[-1])
        n_features = channels[-1] * sizes[-1] ** 2
        if arch.hidden:
            encoder += [nn.Linear(n_features, arch.hidden), act()]
        self.encoder = nn.Sequential(*encoder)

        width = arch.hidden or n_features  # what the latent heads read and the decoder starts at
        self.to_mean = nn.Linear(width, config.latent_dim)
        self.to_logvar = nn.Linear(width, config.latent_dim)

        decoder: list[nn.Module] = [nn.Linear(config.latent_dim, width), act()]
        if arch.hidden:
            decoder += [nn.Linear(arch.hidden, n_features), act()]
        decoder.append(nn.Unflatten(1, self.feature_shape))
        autoregressive = config.decoder == "autoregressive"
        outputs = config.head_features if autoregressive else self.likelihood.channels
        for i in reversed(range(len(arch.layers))):
            _, kernel, stride = arch.layers[i]
            size_in, size_out, pad = sizes[i + 1], sizes[i], _padding(kernel)
            out_pad = size_out - ((size_in - 1) * stride - 2 * pad + kernel)
            out_ch = channels[i] * (outputs if i == 0 else 1)
            decoder.append(
                nn.ConvTranspose2d(channels[i + 1], out_ch, kernel, stride, pad, out_pad)
            )
            if i > 0 or autoregressive:
                decoder.append(act())
        self.decoder = nn.Sequential(*decoder)
        self.pixel_head: PixelHead | None = None
        if autoregressive:
            self.pixel_head = PixelHead(
                config.in_channels * config.head_features,
                self.likelihood.channels,
                config.head_hidden,
                config.context_radius,
                config.image_size,
                config.negative_slope,
                config.pass_schedule,
            )

        self.lossy_decoder: LossyDecoder | None = None
        if config.lossy_decoder:
            self.lossy_decoder = LossyDecoder(self.decoder, MAX_RATE + 1)

        k, d = config.sampler_components, config.latent_dim
        if k:  # weights, means and Cholesky factors of the covariances; set by sampler.fit
            self.register_buffer("sampler_weights", torch.full((k,), 1.0 / k))
            self.register_buffer("sampler_means", torch.zeros(k, d))
            self.register_buffer("sampler_scale_tril", torch.eye(d).repeat(k, 1, 1))

    def add_lossy_decoder(self) -> LossyDecoder:
        """Give the trained model its lossy decoder, a copy of its decoder as it is now (added
        after training, so that data-parallel training never sees unused weights)."""
        self.config = dataclasses.replace(self.config, lossy_decoder=True)
        self.lossy_decoder = LossyDecoder(self.decoder, MAX_RATE + 1)
        return self.lossy_decoder

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.in_channels, c.image_size, c.image_size)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each ``[N, latent_dim]``."""
        h = self.encoder(x)
        return self.to_mean(h), self.to_logvar(h)

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The likelihood's parameters per pixel (``bce``: Bernoulli logits ``[N, C, H, W]``).
        The autoregressive decoder's depend on the pixels before each one: ``x``, the images
        whose likelihood is wanted, is then required."""
        out = self.decoder(z)
        if self.pixel_head is None:
            return out
        if x is None:
            raise ValueError(
                "the autoregressive decoder's pixel distributions depend on the image: pass x "
                "(or decode pictures with mean_image)"
            )
        return self.pixel_head(out, x)

    def log_likelihood(
        self, z: torch.Tensor, x: torch.Tensor, loss: str | None = None
    ) -> torch.Tensor:
        """log p(x|z) in nats of each image under each of its ``m`` codes: ``z`` ``[N, m,
        latent_dim]``, ``x`` ``[N, C, H, W]``; ``[N, m]``. Under the likelihood of ``loss``
        (default: the model's own). The autoregressive head reads each image's context once
        for all its codes (``PixelHead.context_share``)."""
        n, m = z.shape[:2]
        params = self.decoder(z.flatten(0, 1))
        if self.pixel_head is not None:
            params = self.pixel_head.shared_forward(params, self.pixel_head.context_share(x))
        target = x.unsqueeze(1).expand(n, m, *x.shape[1:]).flatten(0, 1)
        nll = (likelihood(loss) if loss else self.likelihood).nll(params, target)
        return -nll.view(n, m)

    def mean_image(self, z: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """The model's picture of ``z``, in [0, 1]: the expected image under p(x|z) (for
        ``bce``: the pixel probabilities; ``exact=False``: a closed form where the exact mean
        is a long sum, see likelihoods). For the autoregressive decoder, the picture is built
        pass by pass, each pixel the expected value given ``z`` and the pixels of earlier
        passes (rounded to grey levels, as the head reads them)."""
        if self.pixel_head is None:
            return self.likelihood.mean(self.decode(z), exact)

        def expected(params: torch.Tensor) -> torch.Tensor:
            return self.likelihood.mean(params[:, :, None, None], exact).flatten()

        return self.pixel_head.decode(self.decoder(z), expected)

    @staticmethod
    def reparameterize(
        mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + eps * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        """A reconstruction through one posterior sample (noise from ``generator``)."""
        mean, logvar = self.encode(x)
        z = self.reparameterize(mean, logvar, generator)
        return VAEOutput(self.decode(z, x), mean, logvar)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The expected image decoded from the posterior mean (deterministic)."""
        mean, _ = self.encode(x)
        return self.mean_image(mean)

    @torch.no_grad()
    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` latent vectors ``[n, latent_dim]`` from the sampler's Gaussian mixture, or from
        the prior N(0, I) when the model has none."""
        device = next(self.parameters()).device
        eps = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        if not self.config.sampler_components:
            return eps
        component = torch.multinomial(self.sampler_weights, n, True, generator=generator)
        scale = self.sampler_scale_tril[component]
        return self.sampler_means[component] + (scale @ eps.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images decoded from ``sample_latents``."""
        return self.mean_image(self.sample_latents(n, generator))

    @torch.no_grad()
    def interpolate(self, x_start: torch.Tensor, x_end: torch.Tensor, steps: int) -> torch.Tensor:
        """Images along the straight line between two images' posterior means:
        ``[N, steps, C, H, W]`` for ``N`` pairs."""
        z0, _ = self.encode(x_start)
        z1, _ = self.encode(x_end)
        t = torch.linspace(0, 1, steps, device=z0.device).view(1, steps, 1)
        z = torch.lerp(z0.unsqueeze(1), z1.unsqueeze(1), t).flatten(0, 1)
        return self.mean_image(z).unflatten(0, (len(z0), steps))


DECODERS = ("factorized", "autoregressive")


def config_from_params(params: Params) -> VAEConfig:
    """The model a pipeline's params describe (before training: no lossy decoder yet)."""
    model = params.model
    return VAEConfig(
        params.latent_dim,
        model.arch,
        likelihood=params.train.loss,
        sampler_components=model.sampler_components,
        decoder=model.decoder,
        pass_schedule=model.pass_schedule,
        head_hidden=model.head_hidden,
    )


def build_model(config: VAEConfig) -> ConvVAE:
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.arch!r}; known: {sorted(ARCHITECTURES)}")
    if config.decoder not in DECODERS:
        raise ValueError(f"unknown decoder {config.decoder!r}; known: {DECODERS}")
    return ConvVAE(config)


def save_model(model: ConvVAE, folder: str | Path) -> Path:
    """Weights as a ``state_dict`` plus the config as JSON, in one folder."""
    return save_model_folder(folder, model.config, model.state_dict())


def load_model(folder: str | Path, map_location: str | torch.device = "cpu") -> ConvVAE:
    """Rebuild a model from its folder (weights read with ``weights_only=True``)."""
    return load_module(folder, lambda config: build_model(VAEConfig(**config)), map_location)
