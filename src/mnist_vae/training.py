"""The training loop: seeded, deterministic on CPU, with progress output.

The data are tensors already in memory (on the GPU when training there); a batch
is an index slice, so there is no per-image Python work in the hot loop. All
randomness (weight init, shuffling, the reparameterisation noise) flows from the
one ``seed``: initialisation from the global generator seeded just before the
model is built, shuffling and noise from a dedicated :class:`torch.Generator` on
the training device. The test estimate uses its own fixed generator, so the
reported test loss of the same weights is always the same.

Under ``torchrun`` (see :mod:`.distributed`) the same loop runs data-parallel: each
process visits its shard, draws its noise from ``seed + rank``, and DDP averages the
gradients; only rank 0 evaluates and checkpoints.

Adam's learning rate follows a cosine from ``lr`` down to 0 over all steps
(``schedule="cosine"``, the default) or stays at ``lr`` (``"constant"``): the
decay is what lets a short, fixed budget of epochs end at a low loss.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import distributed
from .distributed import Cluster
from .losses import negative_elbo
from .model import ConvVAE, VAEConfig, build_model

# Redraw the bar often on a terminal; in a log file (CI, `dvc repro > log`) rarely.
PROGRESS_INTERVAL = 0.2 if sys.stderr.isatty() else 30.0
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("cosine", "constant")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message says where and what to try."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when a GPU is visible, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "train.device is 'cuda' but PyTorch sees no CUDA device; set train.device to "
            "'auto' or 'cpu'"
        )
    return torch.device(name)


def lr_schedule(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: a cosine from the optimizer's lr to 0, or constant."""
    if schedule == "cosine":
        decay = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))  # noqa: E731
    elif schedule == "constant":
        decay = lambda step: 1.0  # noqa: E731
    else:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, decay)


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
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    bf16: bool = False,
    epoch: int = 1,
    order: torch.Tensor | None = None,
) -> dict[str, float]:
    """One pass over ``images`` in a seeded random order; returns per-image means.

    ``order`` (indices into ``images``, e.g. this process's shard under DDP) replaces the
    random order drawn from ``generator``.

    With ``binarize``, each grey-level image is re-drawn as Bernoulli pixels every time it
    is seen (dynamic binarisation, as in the binarized-MNIST literature). ``scheduler`` is
    stepped after every batch. ``bf16`` runs the network under bfloat16 autocast (the loss
    stays in float32). A NaN or infinite loss raises :class:`TrainingDiverged` before the
    step that would spread it into the weights."""
    model.train()
    device = images.device
    if order is None:
        order = torch.randperm(len(images), generator=generator, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    n_batches = -(-len(order) // batch_size)
    with tqdm(
        total=n_batches,
        desc=desc,
        unit="batch",
        disable=not progress,
        leave=False,
        mininterval=PROGRESS_INTERVAL,
    ) as bar:
        for batch, (index, size) in enumerate(batches(len(order), batch_size, order), 1):
            x = torch.bernoulli(images[index], generator=generator) if binarize else images[index]
            with autocast:
                logits, mean, logvar = model(x, generator)
            parts = negative_elbo(logits.float(), x, mean.float(), logvar.float(), recon)
            if not torch.isfinite(parts.total):
                raise TrainingDiverged(
                    f"the training loss became {parts.total.item()} at epoch {epoch}, batch "
                    f"{batch} of {n_batches} (learning rate {optimizer.param_groups[0]['lr']:g}"
                    "); try a lower train.lr, train.schedule: cosine, or train.bf16: false"
                )
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            sums += torch.stack([p.detach() for p in parts]).double() * size
            bar.update()
            if batch % 50 == 0:
                bar.set_postfix(loss=f"{parts.total.item():.2f}", refresh=False)
    return _per_image(sums.cpu(), len(order))


def training_fingerprint(settings: dict[str, Any]) -> str:
    """A digest of everything that determines a training run (params, data checksum): a
    checkpoint is only resumed by a run with the same fingerprint."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def load_training_state(path: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` when it belongs to a run with ``fingerprint``, else None.

    Read with ``weights_only=True`` like every weights file; an unreadable one is reported
    and ignored (training starts afresh and overwrites it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # whatever torch raises for it, the answer is to start afresh
        print(f"ignoring unreadable checkpoint {path} ({type(error).__name__})", flush=True)
        return None
    if state.get("fingerprint") != fingerprint:
        print(f"ignoring checkpoint {path}: it belongs to other params or data", flush=True)
        return None
    return state


def _save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a kill mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


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
    schedule: str = "cosine",
    device: str | torch.device = "cpu",
    cuda_batch_scale: int = 1,
    bf16: bool = False,
    compile: bool = False,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_meta: dict[str, Any] | None = None,
    resume: dict[str, Any] | None = None,
    cluster: Cluster | None = None,
) -> list[EpochMetrics]:
    """Train with Adam; after each epoch evaluate on ``test_images`` and call ``on_epoch``.

    With ``checkpoint``, the model, optimizer, schedule and generator states, the epoch, the
    history so far, the training seconds and ``checkpoint_meta`` are written there after every
    epoch; ``resume`` (a state read back by :func:`load_training_state`) continues from it,
    bit for bit on the CPU: the result is the same as a run that was never interrupted.

    ``binarize`` re-draws training images as Bernoulli pixels at every visit; the test
    images are used as given (binarize them once beforehand, see ``data.binarize_fixed``).
    The model and both image sets move to ``device`` for the run; on CUDA the batch grows
    ``cuda_batch_scale`` times and the learning rate by its square root (a GPU runs a big
    batch in the time of a small one). ``bf16`` (autocast) and ``compile``
    (``torch.compile``) speed up GPUs and are off by default. The model ends on the CPU.

    With a distributed ``cluster`` (every process calls ``fit`` inside
    :func:`.distributed.process_group`) ``batch_size`` is per process; only rank 0 evaluates,
    calls ``on_epoch``, writes the checkpoint and returns the history (the others return [])."""
    cluster = cluster or Cluster()
    device = torch.device(device)
    if device.type == "cuda":
        batch_size, lr = batch_size * cuda_batch_scale, lr * math.sqrt(cuda_batch_scale)
    model.to(device)
    train_images, test_images = train_images.to(device), test_images.to(device)
    network: torch.nn.Module = model
    sampler = None
    if cluster.distributed:
        network = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
        sampler = distributed.shard_sampler(len(train_images), cluster, seed)
    network = torch.compile(network) if compile else network
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = len(sampler) if sampler is not None else len(train_images)
    scheduler = lr_schedule(optimizer, schedule, epochs * -(-per_epoch // batch_size))
    # One process: rank 0, so the stream is the one seed's. Under DDP: each its own noise.
    generator = torch.Generator(device=device).manual_seed(seed + cluster.rank)
    history: list[EpochMetrics] = []
    seconds_before, first = 0.0, 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generators"][cluster.rank])
        history = [EpochMetrics(**m) for m in resume["history"]]
        seconds_before, first = resume["seconds"], resume["epoch"] + 1
        if progress and cluster.is_main:
            tqdm.write(f"resuming after epoch {resume['epoch']} of {epochs} from the checkpoint")
    started = time.perf_counter()
    for epoch in range(first, epochs + 1):
        order = None
        if sampler is not None:
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), device=device)
        train = train_epoch(
            network,
            optimizer,
            train_images,
            batch_size,
            recon,
            generator,
            desc=f"epoch {epoch}/{epochs}",
            progress=progress and cluster.is_main,
            binarize=binarize,
            scheduler=scheduler,
            bf16=bf16,
            epoch=epoch,
            order=order,
        )
        train = distributed.mean_across(train, cluster)
        generators = distributed.gather(generator.get_state(), cluster)  # for the checkpoint
        if not cluster.is_main:
            continue
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
        if checkpoint is not None:
            _save_training_state(Path(checkpoint), {
                **(checkpoint_meta or {}),
                "epoch": epoch,
                "history": [m.as_dict() for m in history],
                "seconds": seconds_before + time.perf_counter() - started,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generators": generators,  # one per process, in rank order
            })  # fmt: skip
    model.cpu()
    return history
