"""Equal wall-clock budgets: the project's default model against a pytorch/examples-shaped VAE.

The peer is our own implementation of the shape of pytorch/examples' ``vae/main.py``: an
MLP 784-400-20 (ReLU) encoder, 20-400-784 decoder, Adam at a constant 1e-3, batch 128, the
same Bernoulli negative ELBO. Both run in this one process on this machine, on the full
training set with the same data path (tensors in memory, index slices), and both are
scored on the same 10,000 test images by the single-sample estimate the train stage reports.

A budget counts training steps only (evaluation is paused out of it). The peer's recipe has
no schedule, so one run is scored at each budget as it passes. Ours is trained afresh for
each budget with its own recipe from params.yaml (arch, latent_dim, batch size, peak lr),
its cosine decay stretched over the budget instead of over ``train.epochs``: what a user
with that much time would run. Takes the sum of the budgets for ours plus the largest for
the peer (28 minutes by default):

    python bench/peers.py                 # budgets 1 2 5 10 minutes
    python bench/peers.py --minutes 1 3   # quicker
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn

from mnist_vae.data import batches, load_images, load_test_images
from mnist_vae.model.vae import VAEConfig, VAEOutput
from mnist_vae.params import load_params
from mnist_vae.training.loop import held_out_loss, seeded_model
from mnist_vae.training.losses import negative_elbo

DATA = Path("data/mnist")
LOSS = "bce"  # both sides on the Bernoulli negative ELBO, as pytorch/examples' VAE


class ExamplesShapedVAE(nn.Module):
    """784-400-20 MLP VAE, the shape of pytorch/examples' VAE (logits out, as ours)."""

    def __init__(self, latent_dim: int = 20, hidden: int = 400) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc21 = nn.Linear(hidden, latent_dim)
        self.fc22 = nn.Linear(hidden, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, 784)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fc1(x.flatten(1)))
        return self.fc21(h), self.fc22(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc4(torch.relu(self.fc3(z))).view(-1, 1, 28, 28)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator)
        return self.decode(mean + eps * torch.exp(0.5 * logvar)), mean, logvar


def race(
    name: str,
    model: nn.Module,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    *,
    budgets: list[float],
    lr: float,
    batch_size: int,
    seed: int,
    anneal: bool,
) -> dict[float, tuple[float, float]]:
    """Train for the largest budget (seconds of training steps); {budget: (nats, epochs)}.

    With ``anneal``, the learning rate follows a cosine from ``lr`` to 0 over that budget."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    pending, horizon, results = sorted(budgets), max(budgets), {}
    spent, seen = 0.0, 0
    model.train()
    while pending:
        order = torch.randperm(len(train_x), generator=generator)
        for index, size in batches(len(train_x), batch_size, order):
            start = time.perf_counter()
            if anneal:
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(spent / horizon, 1)))
            x = train_x[index]
            loss = negative_elbo(VAEOutput(*model(x, generator)), x, LOSS).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            spent += time.perf_counter() - start
            seen += size
            if spent >= pending[0]:
                budget = pending.pop(0)
                test_loss = held_out_loss(model, test_x, LOSS, seed=0).loss
                results[budget] = (test_loss, seen / len(train_x))
                model.train()
                print(f"  {name}: {budget / 60:g} min -> {results[budget][0]:.2f} nats "
                      f"after {results[budget][1]:.1f} epochs", flush=True)  # fmt: skip
                if not pending:
                    break
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 5, 10])
    args = parser.parse_args()
    budgets = [m * 60 for m in args.minutes]

    params = load_params()
    train_x, _ = load_images(DATA, "train", 0, params.seed)
    test_x, _ = load_test_images(DATA, 0)
    threads = torch.get_num_threads()
    print(f"{len(train_x)} training and {len(test_x)} test images, {threads} threads; "
          f"budgets {args.minutes} minutes", flush=True)  # fmt: skip

    config = VAEConfig(latent_dim=params.latent_dim, arch=params.model.arch)
    ours = {}
    for budget in budgets:
        ours |= race(
            f"ours ({config.arch}, z={config.latent_dim})", seeded_model(config, params.seed),
            train_x, test_x, budgets=[budget], lr=params.train.lr,
            batch_size=params.train.batch_size, seed=params.seed, anneal=True,
        )  # fmt: skip
    torch.manual_seed(params.seed)
    peer = race(
        "peer (MLP 784-400-20)", ExamplesShapedVAE(), train_x, test_x, budgets=budgets,
        lr=1e-3, batch_size=128, seed=params.seed, anneal=False,
    )  # fmt: skip

    print("\nbudget    ours nats (epochs)   peer nats (epochs)   ours/peer")
    for budget in budgets:
        (a, ea), (b, eb) = ours[budget], peer[budget]
        verdict = "ours lower" if a < b else "PEER LOWER"
        print(f"{budget / 60:5g} min  {a:8.2f} ({ea:5.1f})    {b:8.2f} ({eb:5.1f})      "
              f"{a / b:.4f}  {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
