"""Decoder designs at equal budget: the pass schedules of the pixel head (issue 44), and the
likelihoods of issue 24.

Every design is trained on the same images with the same budget (epochs, batch, Adam with
the cosine schedule, seed) and scored by the test negative ELBO in bits per pixel, which the
bits-back coder attains within a fraction of a percent (``bench/codec.py``).

``--set schedules`` (the default) compares the pixel head's pass schedules
(:mod:`mnist_vae.model.autoregressive`): ``raster`` (784 passes of one pixel) against 2, 4,
8 and 16 passes, with the factorized decoder as the floor of speed and the ceiling of rate.
For each it also runs the lossless codec on the first ``--codec-limit`` test digits (the
file's real bytes, every pixel checked, both speeds) and times the pictures
(``mean_image``, as ``generate`` and the served ``decode`` draw them, in batches of 1,000).

``--head-hidden`` sets the pixel head's width; ``--only "passes-8 per-pass"`` (a design run
only when named) gives each pass its own network of that width, a float-only trial. Each
pass head's row is followed by the bits per pixel of the pixels each of its passes decodes.

``--set likelihoods`` is issue 24's comparison:

- ``factorized``: today's decoder, every pixel from z alone;
- ``autoregressive``: the local pixel head (:mod:`mnist_vae.model.autoregressive`), each pixel
  also from the pixels above and to its left, for context radii 2 and 3 (r) and 32, 16 or
  8 feature channels from the decoder (f);
- ``hierarchical``: two stochastic layers, z2 -> z1 -> x, with the Markov posterior
  q(z1|x) q(z2|z1) that Bit-Swap (Kingma et al. 2019) needs to interleave its bits-back
  steps; its rate under Bit-Swap is this negative ELBO.

    python bench/decoders.py --epochs 3              # all 60,000 training images
    python bench/decoders.py --epochs 1 --train-limit 5000 --codec-limit 200
    python bench/decoders.py --set likelihoods --epochs 3
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnist_vae.compression.lossless import round_trip
from mnist_vae.data import batches, load_images, load_test_images, to_symbols
from mnist_vae.evaluation.metrics import bits_per_pixel
from mnist_vae.model.autoregressive import pass_of_pixels
from mnist_vae.model.likelihoods import likelihood
from mnist_vae.model.vae import ConvVAE, VAEConfig, build_model, save_model
from mnist_vae.params import PASS_SCHEDULES
from mnist_vae.training.loop import lr_schedule
from mnist_vae.training.losses import _gaussian_log_density, negative_elbo

LOSS = "logistic_mixture"
PIXELS = 28 * 28


class Hierarchical(nn.Module):
    """z2 (``latent_dim``) -> z1 (``inner_dim``) -> x, Gaussian layers, the default
    architecture's convolutions between z1 and x; q(z1|x), q(z2|z1)."""

    def __init__(self, latent_dim: int = 10, inner_dim: int = 32, width: int = 256) -> None:
        super().__init__()
        self.bottom = build_model(VAEConfig(inner_dim, "fast", likelihood=LOSS))  # q(z1|x), p(x|z1)
        act = nn.LeakyReLU(0.2)
        self.up = nn.Sequential(nn.Linear(inner_dim, width), act, nn.Linear(width, 2 * latent_dim))
        self.down = nn.Sequential(
            nn.Linear(latent_dim, width), act, nn.Linear(width, 2 * inner_dim)
        )
        self.lik = likelihood(LOSS)

    def nelbo(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        def sample(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
            return mean + torch.randn(mean.shape, generator=generator) * torch.exp(0.5 * logvar)

        m1, lv1 = self.bottom.encode(x)
        z1 = sample(m1, lv1)
        m2, lv2 = self.up(z1).chunk(2, dim=1)
        z2 = sample(m2, lv2)
        pm1, plv1 = self.down(z2).chunk(2, dim=1)
        zero = torch.zeros_like(z2)
        return (
            self.lik.nll(self.bottom.decode(z1), x)
            + _gaussian_log_density(z1, m1, lv1) - _gaussian_log_density(z1, pm1, plv1)
            + _gaussian_log_density(z2, m2, lv2) - _gaussian_log_density(z2, zero, zero)
        )  # fmt: skip


Loss = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""a batch's summed negative ELBO in nats, given the images and the noise generator"""


class PerPass(nn.Module):
    """A pass head's per-pixel network, one per pass (each initialised afresh): rows go to
    the network of the pass their one-hot code names. A float-only trial of capacity per
    pass at one network's cost per pixel; the integer codec does not take it."""

    def __init__(self, network: nn.Sequential, passes: int) -> None:
        super().__init__()
        self.passes = passes
        self.networks = nn.ModuleList(copy.deepcopy(network) for _ in range(passes))
        for layer in self.networks.modules():
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        which = rows[:, -self.passes :].argmax(1)
        parts = [(which == k).nonzero().squeeze(1) for k in range(self.passes)]
        outs = [net(rows[index]) for net, index in zip(self.networks, parts, strict=True)]
        out = rows.new_empty(len(rows), outs[0].shape[1])
        for index, part in zip(parts, outs, strict=True):
            out[index] = part
        return out


def per_pass(build: Callable[[], tuple[nn.Module, Loss]]) -> Callable:
    def wrapped() -> tuple[nn.Module, Loss]:
        model, loss = build()
        head = model.pixel_head
        head.network = PerPass(head.network, head.pass_inputs)
        return model, loss

    return wrapped


def flat_nelbo(config: VAEConfig) -> tuple[nn.Module, Loss]:
    model = build_model(config)

    def loss(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        output = model(x, generator)
        return negative_elbo(output, x, LOSS).loss * len(x)

    return model, loss


def designs(which: str, head_hidden: int = 32) -> dict[str, Callable[[], tuple[nn.Module, Loss]]]:
    def flat(**kwargs):
        return lambda: flat_nelbo(VAEConfig(10, "fast", likelihood=LOSS, **kwargs))

    def hierarchical():
        model = Hierarchical()
        return model, lambda x, g: model.nelbo(x, g).sum()

    if which == "schedules":
        wide = f" h={head_hidden}" if head_hidden != 32 else ""
        heads = {
            schedule + wide: flat(
                decoder="autoregressive", pass_schedule=schedule, head_hidden=head_hidden
            )
            for schedule in PASS_SCHEDULES
        }
        split = {
            f"{name} per-pass": per_pass(build)
            for name, build in heads.items()
            if not name.startswith("raster")
        }
        return {"factorized": flat()} | heads | split
    return {
        "factorized": flat(),
        "autoregressive r=2 f=32": flat(
            decoder="autoregressive", context_radius=2, head_features=32
        ),
        "autoregressive r=3 f=32": flat(decoder="autoregressive", head_features=32),
        "autoregressive r=3 f=16": flat(decoder="autoregressive"),  # the default
        "autoregressive r=3 f=8": flat(decoder="autoregressive", head_features=8),
        "hierarchical (2 layers)": hierarchical,
    }


def speeds(model: ConvVAE, test_x: torch.Tensor, codec_limit: int) -> dict:
    """The lossless codec's rate and speeds on the first ``codec_limit`` test digits, and
    the pictures' speed on 10,000 codes."""
    with tempfile.TemporaryDirectory() as folder:
        save_model(model, folder)
        images = to_symbols(test_x[:codec_limit], 256).numpy().astype(np.uint8)
        trip = round_trip(folder, images)  # decoded by a fresh codec, every pixel checked
    z = torch.randn(10_000, model.config.latent_dim, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.no_grad():
        for part in z.split(1000):
            model.mean_image(part)
    pictures = len(z) / (time.perf_counter() - start)
    return {"lossless_bpp": trip.bits_per_pixel, **trip.speed(), "pictures_per_second": pictures}


def bits_by_pass(model: ConvVAE, test_x: torch.Tensor, schedule: str) -> list[float]:
    """Bits per pixel of the test digits' pixels in each pass of ``schedule`` (for any head:
    the raster head's on the pixels a pass head would decode in each of its passes), one
    posterior sample per digit, as in the negative ELBO's reconstruction term."""
    group = pass_of_pixels(schedule, model.config.image_size)
    totals = [0.0] * (int(group.max()) + 1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for index, _ in batches(len(test_x), 1000):
            x = test_x[index]
            z = model.reparameterize(*model.encode(x), generator)
            params, pixels = model.decode(z, x).flatten(2), x.flatten(2)
            for g in range(len(totals)):
                chosen = group == g
                totals[g] += float(
                    model.likelihood.nll(params[..., chosen], pixels[..., chosen]).sum()
                )
    counts = torch.bincount(group).tolist()
    return [bits_per_pixel(t / len(test_x), c) for t, c in zip(totals, counts, strict=True)]


def run(
    name: str,
    build: Callable[[], tuple[nn.Module, Loss]],
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    codec_limit: int,
    save: str | None = None,
) -> dict:
    torch.manual_seed(0)
    model, loss = build()
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(train_x) / batch_size)
    scheduler = lr_schedule(optimizer, "cosine", steps)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for index, size in batches(len(train_x), batch_size, order):
            value = loss(train_x[index], generator) / size
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            scheduler.step()
    seconds = time.perf_counter() - start
    model.eval()
    total = 0.0
    test_generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for index, _ in batches(len(test_x), 1000):
            total += float(loss(test_x[index], test_generator))
    row = {
        "design": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": seconds,
        "test_nelbo_bpp": bits_per_pixel(total / len(test_x), PIXELS),
    }
    if isinstance(model, ConvVAE) and model.pixel_head is not None:
        schedule = (
            "passes-8" if model.config.pass_schedule == "raster" else model.config.pass_schedule
        )
        row["bits_by_pass"] = (schedule, bits_by_pass(model, test_x, schedule))
    head = getattr(model, "pixel_head", None)
    trial = head is not None and isinstance(head.network, PerPass)
    if save and isinstance(model, ConvVAE) and not trial:
        save_model(model, Path(save) / name.replace(" ", "_"))
    if codec_limit and isinstance(model, ConvVAE) and not trial:
        row |= speeds(model, test_x, codec_limit)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/mnist")
    parser.add_argument("--set", choices=("schedules", "likelihoods"), default="schedules")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--codec-limit", type=int, default=1000,
                        help="test digits for the codec's rate and speeds (0: skip)")  # fmt: skip
    parser.add_argument("--only", nargs="*", help="design names to run (default: all)")
    parser.add_argument("--head-hidden", type=int, default=32,
                        help="schedules: units of the pixel head's hidden layers (the "
                             "default model's: 32)")  # fmt: skip
    parser.add_argument("--save", help="a folder to save each trained model in")
    args = parser.parse_args()
    train_x, _ = load_images(args.data, "train", args.train_limit, seed=0)
    test_x, _ = load_test_images(args.data)
    codec_limit = args.codec_limit if args.set == "schedules" else 0
    print(f"{len(train_x)} training images, {len(test_x)} test images, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads; codec on the first {codec_limit} test digits",
          flush=True)  # fmt: skip
    header = f"{'design':26s} {'parameters':>10s} {'train s':>8s} {'test -ELBO bpp':>15s}"
    if codec_limit:
        header += " lossless bpp  compress/s  decompress/s  pictures/s"
    print(header)
    for name, build in designs(args.set, args.head_hidden).items():
        if (args.only and name not in args.only) or (name.endswith("per-pass") and not args.only):
            continue  # the per-pass trials run only when named
        row = run(
            name, build, train_x, test_x, args.epochs, args.batch_size, args.lr, codec_limit,
            args.save,
        )  # fmt: skip
        line = (f"{name:26s} {row['parameters']:10,d} {row['train_seconds']:8.1f} "
                f"{row['test_nelbo_bpp']:15.4f}")  # fmt: skip
        if "lossless_bpp" in row:
            line += (f" {row['lossless_bpp']:13.4f} {row['compress_images_per_second']:11.0f} "
                     f"{row['decompress_images_per_second']:13.0f} "
                     f"{row['pictures_per_second']:11.0f}")  # fmt: skip
        print(line, flush=True)
        if "bits_by_pass" in row:
            schedule, bits = row["bits_by_pass"]
            print(f"    bits per pixel in each pass of {schedule}: "
                  + " ".join(f"{b:.3f}" for b in bits), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
