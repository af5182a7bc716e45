"""The train stage's loop against a bare PyTorch loop: images per second on the same model,
batch size and data.

The stage's loop is ``mnist_vae.training.loop.train_epoch`` exactly as the train stage calls it
(seeded shuffling on a dedicated generator, the loss parts summed for the epoch's means,
the learning-rate schedule stepped, the tqdm bar). The bare loop is the least a PyTorch
user would write: shuffle, slice, forward, loss, backward, step. They take turns, epoch by
epoch, so both see the same machine; the best epoch of each is reported.

    python bench/overhead.py              # 2 epochs of each, about a minute
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mnist_vae.data import load_images
from mnist_vae.model.vae import VAEConfig
from mnist_vae.params import load_params
from mnist_vae.training.loop import lr_schedule, seeded_model, train_epoch

DATA = Path("data/mnist")
LOSS = "bce"  # the bare loop's loss: both loops compute the same thing


def bare_epoch(model, optimizer, images: torch.Tensor, batch_size: int, generator) -> None:
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(images), batch_size):
        x = images[order[start : start + batch_size]]
        mean, logvar = model.encode(x)
        z = mean + torch.randn(mean.shape, generator=generator) * torch.exp(0.5 * logvar)
        logits = model.decode(z)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp())
        loss = (recon + kl) / len(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs of each loop")
    args = parser.parse_args()

    params = load_params()
    p = params.train
    images, _ = load_images(DATA, "train", params.data.train_limit, params.seed)
    config = VAEConfig(latent_dim=params.latent_dim, arch=params.model.arch)
    print(f"{len(images)} images, batch {p.batch_size}, {config.arch} z={config.latent_dim}, "
          f"{torch.get_num_threads()} threads", flush=True)  # fmt: skip

    stage_model, bare_model = seeded_model(config, params.seed), seeded_model(config, params.seed)
    stage_opt = torch.optim.Adam(stage_model.parameters(), lr=p.lr)
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=p.lr)
    steps = (args.epochs + 1) * -(-len(images) // p.batch_size)
    scheduler = lr_schedule(stage_opt, p.schedule, steps)
    stage_gen, bare_gen = (torch.Generator().manual_seed(params.seed) for _ in range(2))

    def stage() -> None:
        train_epoch(stage_model, stage_opt, images, p.batch_size, LOSS, stage_gen,
                    scheduler=scheduler, desc="stage loop")  # fmt: skip

    def bare() -> None:
        bare_model.train()
        bare_epoch(bare_model, bare_opt, images, p.batch_size, bare_gen)

    # warm-up: allocator, thread pool, first touch of the data
    bare()
    stage()
    rates: dict[str, list[float]] = {"bare": [], "stage": []}
    for _ in range(args.epochs):
        for name, epoch in (("bare", bare), ("stage", stage)):
            start = time.perf_counter()
            epoch()
            rates[name].append(len(images) / (time.perf_counter() - start))
            print(f"  {name:5s} loop: {rates[name][-1]:7.0f} images/s", flush=True)

    best = {name: max(r) for name, r in rates.items()}
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"\nbare PyTorch loop: {best['bare']:.0f} images/s (median {median['bare']:.0f})")
    print(f"train stage loop:  {best['stage']:.0f} images/s (median {median['stage']:.0f})")
    ratio = best["stage"] / best["bare"]
    pace = f"{1 - ratio:.1%} slower" if ratio < 1 else f"{ratio - 1:.1%} faster"
    print(f"stage / bare: {ratio:.3f} (the stage's loop is {pace}; target: at most 10% slower)")


if __name__ == "__main__":
    main()
