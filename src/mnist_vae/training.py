"""The training loop: seeded, deterministic on CPU, with progress output.

The data are tensors already in memory; a batch is an index slice, so there is
no per-image Python work in the hot loop. All randomness (weight init, shuffling,
the reparameterisation noise) flows from the one ``seed``: initialisation from
the global generator seeded just before the model is built, shuffling and noise
from a dedicated :class:`torch.Generator`. The test estimate uses its own fixed
generator, so the reported test loss of the same weights is always the same.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from .losses import negative_elbo
from .model import ConvVAE, VAEConfig, build_model

# Redraw the bar often on a terminal; in a log file (CI, `dvc repro > log`) rarely.
PROGRESS_INTERVAL = 0.2 if sys.stderr.isatty() else 30.0


@dataclass(frozen=True)
class EpochMetrics:
    """Per-image means, in nats for the ``bce`` loss."""

    epoch: int
    train_loss: float
    train_recon: float
    train_kl: float
    test_loss: float
    test_recon: float
    test_kl: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def seeded_model(config: VAEConfig, seed: int) -> ConvVAE:
    """A freshly initialised model whose weights depend on ``seed`` only."""
    torch.manual_seed(seed)
    return build_model(config)


def batches(n: int, batch_size: int, order: torch.Tensor | None = None):
    """Index slices (or index tensors, given an ``order``) of consecutive batches, with sizes."""
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield (order[start:stop] if order is not None else slice(start, stop)), stop - start


def _per_image(sums: torch.Tensor, n: int) -> dict[str, float]:
    loss, recon, kl = (sums / n).tolist()
    return {"loss": loss, "recon": recon, "kl": kl}


@torch.no_grad()
def evaluate(
    model: ConvVAE, images: torch.Tensor, batch_size: int = 1000, recon: str = "bce", seed: int = 0
) -> dict[str, float]:
    """Single-sample negative ELBO and its parts, averaged over ``images``."""
    model.eval()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    sums = torch.zeros(3, dtype=torch.float64)
    for index, size in batches(len(images), batch_size):
        x = images[index]
        logits, mean, logvar = model(x, generator)
        parts = negative_elbo(logits, x, mean, logvar, recon)
        sums += torch.stack(parts).double().cpu() * size
    return _per_image(sums, len(images))


def train_epoch(
    model: ConvVAE,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    batch_size: int,
    recon: str,
    generator: torch.Generator,
    desc: str = "",
    progress: bool = True,
    binarize: bool = False,
) -> dict[str, float]:
    """One pass over ``images`` in a seeded random order; returns per-image means.

    With ``binarize``, each grey-level image is re-drawn as Bernoulli pixels every time it
    is seen (dynamic binarisation, as in the binarized-MNIST literature)."""
    model.train()
    order = torch.randperm(len(images), generator=generator)
    sums = torch.zeros(3, dtype=torch.float64)
    n_batches = -(-len(images) // batch_size)
    with tqdm(
        total=n_batches,
        desc=desc,
        unit="batch",
        disable=not progress,
        leave=False,
        mininterval=PROGRESS_INTERVAL,
    ) as bar:
        for index, size in batches(len(images), batch_size, order):
            x = torch.bernoulli(images[index], generator=generator) if binarize else images[index]
            logits, mean, logvar = model(x, generator)
            parts = negative_elbo(logits, x, mean, logvar, recon)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            optimizer.step()
            sums += torch.stack([p.detach() for p in parts]).double() * size
            bar.update()
            if bar.n % 50 == 0:
                bar.set_postfix(loss=f"{parts.total.item():.2f}")
    return _per_image(sums, len(images))


def fit(
    model: ConvVAE,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    recon: str = "bce",
    seed: int = 0,
    binarize: bool = False,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    progress: bool = True,
) -> list[EpochMetrics]:
    """Train with Adam; after each epoch evaluate on ``test_images`` and call ``on_epoch``.

    ``binarize`` re-draws training images as Bernoulli pixels at every visit; the test
    images are used as given (binarize them once beforehand, see ``data.binarize_fixed``)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history: list[EpochMetrics] = []
    for epoch in range(1, epochs + 1):
        train = train_epoch(
            model,
            optimizer,
            train_images,
            batch_size,
            recon,
            generator,
            desc=f"epoch {epoch}/{epochs}",
            progress=progress,
            binarize=binarize,
        )
        test = evaluate(model, test_images, recon=recon, seed=seed)
        metrics = EpochMetrics(
            epoch,
            *(train[k] for k in ("loss", "recon", "kl")),
            *(test[k] for k in ("loss", "recon", "kl")),
        )
        history.append(metrics)
        if progress:
            tqdm.write(
                f"epoch {epoch}/{epochs}: train {metrics.train_loss:.2f} "
                f"(recon {metrics.train_recon:.2f} + kl {metrics.train_kl:.2f}), "
                f"test {metrics.test_loss:.2f} "
                f"(recon {metrics.test_recon:.2f} + kl {metrics.test_kl:.2f})"
            )
        if on_epoch is not None:
            on_epoch(metrics)
    return history
