"""Which likelihood lowers the lossless rate most: the design comparison of issue 24.

Three designs, trained on the same images with the same budget (epochs, batch, Adam with
the cosine schedule, seed), scored by the test negative ELBO in bits per pixel, which the
bits-back coder attains within a fraction of a percent (``bench/codec.py``):

- ``factorized``: today's decoder, every pixel from z alone;
- ``autoregressive``: the local pixel head (:mod:`mnist_vae.model.autoregressive`), each pixel
  also from the pixels above and to its left, for context radii 2 and 3 (r) and 32, 16 or
  8 feature channels from the decoder (f);
- ``hierarchical``: two stochastic layers, z2 -> z1 -> x, with the Markov posterior
  q(z1|x) q(z2|z1) that Bit-Swap (Kingma et al. 2019) needs to interleave its bits-back
  steps; its rate under Bit-Swap is this negative ELBO.

    python bench/decoders.py --epochs 3              # all 60,000 training images
    python bench/decoders.py --epochs 1 --train-limit 5000
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
from torch import nn

from mnist_vae.data import batches, load_images, load_test_images
from mnist_vae.evaluation.metrics import bits_per_pixel
from mnist_vae.model.likelihoods import likelihood
from mnist_vae.model.vae import VAEConfig, build_model
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


def flat_nelbo(config: VAEConfig) -> tuple[nn.Module, Loss]:
    model = build_model(config)

    def loss(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        output = model(x, generator)
        return negative_elbo(output, x, LOSS).loss * len(x)

    return model, loss


def designs() -> dict[str, Callable[[], tuple[nn.Module, Loss]]]:
    def flat(**kwargs):
        return lambda: flat_nelbo(VAEConfig(10, "fast", likelihood=LOSS, **kwargs))

    def hierarchical():
        model = Hierarchical()
        return model, lambda x, g: model.nelbo(x, g).sum()

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


def run(
    name: str,
    build: Callable[[], tuple[nn.Module, Loss]],
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
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
    return {
        "design": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": seconds,
        "test_nelbo_bpp": bits_per_pixel(total / len(test_x), PIXELS),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/mnist")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--only", nargs="*", help="design names to run (default: all)")
    args = parser.parse_args()
    train_x, _ = load_images(args.data, "train", args.train_limit, seed=0)
    test_x, _ = load_test_images(args.data)
    print(f"{len(train_x)} training images, {len(test_x)} test images, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'design':26s} {'parameters':>10s} {'train s':>8s} {'test -ELBO bpp':>15s}")
    for name, build in designs().items():
        if args.only and name not in args.only:
            continue
        row = run(name, build, train_x, test_x, args.epochs, args.batch_size, args.lr)
        print(f"{name:26s} {row['parameters']:10,d} {row['train_seconds']:8.1f} "
              f"{row['test_nelbo_bpp']:15.4f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
