"""The training loop: seeded, deterministic on CPU, with progress output.

``fit`` takes the typed ``params.Params`` and a ``TrainingPlan``, the
numbers the run actually uses (device, per-process batch size and learning rate after
``cuda_batch_scale``, processes), derived once by ``plan_training`` and printed once.

The data are tensors already in memory (on the GPU when training there); a batch
is an index slice, so there is no per-image Python work in the hot loop. All
randomness (weight init, shuffling, the reparameterisation noise) flows from the
one ``seed``: initialisation from the global generator seeded just before the
model is built, shuffling and noise from a dedicated ``torch.Generator`` on
the training device. The test estimate uses its own fixed generator, so the
reported test loss of the same weights is always the same.

Under ``torchrun`` (see ``distributed``) the same loop runs data-parallel: each
process visits its shard, draws its noise from ``seed + rank``, and DDP averages the
gradients; only rank 0 evaluates and checkpoints.

Adam's learning rate follows a cosine from ``lr`` down to 0 over all steps
(``schedule="cosine"``, the default) or stays at ``lr`` (``"constant"``): the
decay is what lets a short, fixed budget of epochs end at a low loss.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..data import batches
from ..errors import ParamsError, TrainingDiverged
from ..invariant import pinned_arithmetic
from ..model.vae import ConvVAE, VAEConfig, VAEOutput, build_model
from ..params import SCHEDULES, Params, TrainParams
from ..progress import progress_bar
from . import distributed
from .checkpoint import Checkpoint
from .distributed import Cluster
from .losses import (
    LossParts,
    batch_means,
    kl_to_standard_normal,
    negative_elbo,
    reconstruction_error,
)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when a GPU is visible, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "train.device is 'cuda' but PyTorch sees no CUDA device; set train.device to "
            "'auto' or 'cpu'"
        )
    return torch.device(name)


@dataclass(frozen=True)
class TrainingPlan:
    """The numbers a training actually runs with, derived from the params once."""

    device: torch.device
    batch_size: int
    """images per step in each process (``train.batch_size``, times the CUDA scale on a GPU)"""
    lr: float
    """Adam's peak learning rate (``train.lr``, times the square root of the CUDA scale)"""
    n_train: int
    cluster: Cluster = field(default_factory=Cluster)

    @property
    def effective_batch_size(self) -> int:
        """Images per optimizer step over all processes."""
        return self.batch_size * self.cluster.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Each process visits ceil(n / processes) images (the sampler pads the shards)."""
        per_process = -(-self.n_train // self.cluster.world_size)
        return -(-per_process // self.batch_size)

    def as_params(self) -> dict[str, Any]:
        """For MLflow, beside params.yaml's own ``train.*``."""
        return {
            "train.device_used": str(self.device),
            "train.processes": self.cluster.world_size,
            "train.effective_batch_size": self.effective_batch_size,
            "train.effective_lr": self.lr,
        }

    def describe(self) -> str:
        where = f"on {self.device}"
        if self.device.type == "cpu":
            where += f" ({torch.get_num_threads()} threads)"
        if self.cluster.distributed:
            where += (
                f" x {self.cluster.world_size} processes ({self.cluster.backend(self.device)}), "
                f"effective batch {self.cluster.world_size} x {self.batch_size} = "
                f"{self.effective_batch_size}"
            )
        else:
            where += f", batch {self.batch_size}"
        return f"{where}, lr {self.lr:g}, {self.steps_per_epoch} steps per epoch"


def plan_training(params: TrainParams, cluster: Cluster, n_train: int) -> TrainingPlan:
    """Resolve the device and scale the batch and learning rate for it (on CUDA the batch
    grows ``cuda_batch_scale`` times and the learning rate by its square root: a GPU runs a
    big batch in the time of a small one). A batch larger than a process's share of the
    training images is a ``errors.ParamsError``."""
    per_process = -(-n_train // cluster.world_size)
    if params.batch_size > per_process:
        raise ParamsError(
            f"params.yaml: train.batch_size = {params.batch_size} is larger than the "
            f"{per_process} training images"
            + (f" each of {cluster.world_size} processes sees" if cluster.distributed else "")
            + f"; expected at most {per_process}"
        )
    device = cluster.place(resolve_device(params.device))
    scale = params.cuda_batch_scale if device.type == "cuda" else 1
    return TrainingPlan(
        device, params.batch_size * scale, params.lr * math.sqrt(scale), n_train, cluster
    )


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
    """One row of the training history: per-image means, in nats for the ``bce`` loss."""

    epoch: int
    train: LossParts
    test: LossParts

    def as_dict(self) -> dict[str, float]:
        """``epoch, train_loss, train_recon, train_kl, test_loss, ...``: the history's columns."""
        return {"epoch": self.epoch, **self.train.as_dict("train_"), **self.test.as_dict("test_")}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> EpochMetrics:
        def parts(split: str) -> LossParts:
            return LossParts(*(row[f"{split}_{name}"] for name in LossParts._fields))

        return cls(int(row["epoch"]), parts("train"), parts("test"))

    def describe(self, epochs: int) -> str:
        return (
            f"epoch {self.epoch}/{epochs}: train {self.train.loss:.2f} (recon "
            f"{self.train.recon:.2f} + kl {self.train.kl:.2f}), test {self.test.loss:.2f} "
            f"(recon {self.test.recon:.2f} + kl {self.test.kl:.2f})"
        )


@dataclass(frozen=True)
class TrainingResult:
    history: list[EpochMetrics]
    """one row per epoch on rank 0 (empty on the other processes)"""
    seconds: float
    """training time, including the epochs before a resume"""


def peak_memory_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seeded_model(config: VAEConfig, seed: int) -> ConvVAE:
    """A freshly initialised model whose weights depend on ``seed`` only."""
    torch.manual_seed(seed)
    return build_model(config)


def _per_image(sums: torch.Tensor, n: int) -> LossParts:
    return LossParts(*(sums / n).tolist())


@torch.no_grad()
def held_out_loss(
    model: ConvVAE,
    images: torch.Tensor,
    loss: str,
    seed: int,
    batch_size: int = 1000,
    decode_batch: int = 125,
) -> LossParts:
    """Single-sample negative ELBO and its parts, averaged over ``images`` (the per-epoch
    test figure; the evaluate stage's fuller measures are in ``metrics``).

    The noise is drawn for ``batch_size`` images at a time, which fixes the figure; the
    codes are decoded ``decode_batch`` at a time, which does not change it (the decoder
    treats each image alone; the tests check it bit for bit) and halves the time on a CPU,
    whose caches a thousand images' pixel rows overflow (5.1 s -> 2.5 s on the 10,000 test
    digits, 2-core Xeon)."""
    model.eval()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    sums = torch.zeros(3, dtype=torch.float64)
    for index, size in batches(len(images), batch_size):
        x = images[index]
        mean, logvar = model.encode(x)
        z = model.reparameterize(mean, logvar, generator)
        recon = [
            reconstruction_error(model.decode(z[part], x[part]), x[part], loss)
            for part, _ in batches(size, decode_batch)
        ]
        elbo = batch_means(torch.cat(recon), kl_to_standard_normal(mean, logvar))
        sums += torch.stack(elbo).double().cpu() * size
    return _per_image(sums, len(images))


def train_epoch(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    batch_size: int,
    loss: str,
    generator: torch.Generator,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    binarize: bool = False,
    bf16: bool = False,
    order: torch.Tensor | None = None,
    epoch: int = 1,
    desc: str = "",
    progress: bool = True,
) -> LossParts:
    """One pass over ``images`` in a seeded random order; returns per-image means.

    ``order`` (indices into ``images``, e.g. this process's shard under DDP) replaces the
    random order drawn from ``generator``.

    With ``binarize``, each grey-level image is re-drawn as Bernoulli pixels every time it
    is seen (dynamic binarisation, as in the binarized-MNIST literature). ``scheduler`` is
    stepped after every batch. ``bf16`` runs the network under bfloat16 autocast (the loss
    stays in float32). A NaN or infinite loss raises ``errors.TrainingDiverged``
    before the step that would spread it into the weights."""
    network.train()
    device = images.device
    if order is None:
        order = torch.randperm(len(images), generator=generator, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    n_batches = -(-len(order) // batch_size)
    with progress_bar(progress, total=n_batches, desc=desc, unit="batch") as bar:
        for batch, (index, size) in enumerate(batches(len(order), batch_size, order), 1):
            x = torch.bernoulli(images[index], generator=generator) if binarize else images[index]
            with autocast:
                output = VAEOutput(*network(x, generator))  # DDP may hand back a plain tuple
            parts = negative_elbo(output.float(), x, loss)
            if not torch.isfinite(parts.loss):
                raise TrainingDiverged(
                    f"the training loss became {parts.loss.item()} at epoch {epoch}, batch "
                    f"{batch} of {n_batches} (learning rate {optimizer.param_groups[0]['lr']:g}"
                    "); try a lower train.lr, train.schedule: cosine, or train.bf16: false"
                )
            optimizer.zero_grad(set_to_none=True)
            parts.loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            sums += torch.stack([p.detach() for p in parts]).double() * size
            bar.update()
            if batch % 50 == 0:
                bar.set_postfix(loss=f"{parts.loss.item():.2f}", refresh=False)
    return _per_image(sums.cpu(), len(order))


@pinned_arithmetic()  # the same bits on any number of threads (invariant.py)
def fit(
    model: ConvVAE,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    params: Params,
    plan: TrainingPlan | None = None,
    *,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    checkpoint: Checkpoint | None = None,
    resume: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Train with Adam as ``params.train`` says; after each epoch evaluate on ``test_images``
    and call ``on_epoch``.

    ``plan`` defaults to ``plan_training`` for one process. With ``checkpoint``, the
    state is saved after every epoch, before ``on_epoch`` (an epoch whose metrics the
    tracking server missed is not trained again: see ``TrainingRun.log_missing_epochs``);
    ``resume`` (a state read back by ``Checkpoint.load``) continues from it, bit for bit on
    the CPU: the result is the same as a run that was never interrupted.

    With ``data.binarize: dynamic`` training images are re-drawn as Bernoulli pixels at
    every visit; the test images are used as given (binarized once beforehand, see
    ``data.load_test_images``). The model and both image sets move to the plan's
    device for the run; the model ends on the CPU.

    Under a distributed plan (every process calls ``fit`` inside
    ``distributed.process_group``) only rank 0 evaluates, calls ``on_epoch`` and writes
    the checkpoint; the other processes return an empty history."""
    started = time.perf_counter()
    t = params.train
    if model.config.likelihood != t.loss:
        raise ValueError(
            f"the model's decoder is built for {model.config.likelihood!r} but train.loss is "
            f"{t.loss!r}: build it with VAEConfig(likelihood=params.train.loss)"
        )
    plan = plan or plan_training(t, Cluster(), len(train_images))
    cluster, device = plan.cluster, plan.device
    if progress and cluster.is_main:
        print(
            f"train: {len(train_images)} training images, {len(test_images)} test images, "
            f"{plan.describe()}",
            flush=True,
        )
    model.to(device)
    train_images, test_images = train_images.to(device), test_images.to(device)
    network: torch.nn.Module = model
    sampler = None
    if cluster.distributed:
        network = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
        sampler = distributed.shard_sampler(len(train_images), cluster, params.seed)
    network = torch.compile(network) if t.compile else network
    optimizer = torch.optim.Adam(model.parameters(), lr=plan.lr)
    scheduler = lr_schedule(optimizer, t.schedule, t.epochs * plan.steps_per_epoch)
    # One process: rank 0, so the stream is the one seed's. Under DDP: each its own noise.
    generator = torch.Generator(device=device).manual_seed(params.seed + cluster.rank)
    history: list[EpochMetrics] = []
    first = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generators"][cluster.rank])
        history = [EpochMetrics.from_dict(row) for row in resume["history"]]
        started -= resume["seconds"]
        first = resume["epoch"] + 1
        if progress and cluster.is_main:
            tqdm.write(f"resuming after epoch {resume['epoch']} of {t.epochs} from the checkpoint")
    for epoch in range(first, t.epochs + 1):
        order = None
        if sampler is not None:
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), device=device)
        train = train_epoch(
            network, optimizer, train_images, plan.batch_size, t.loss, generator,
            scheduler=scheduler, binarize=params.data.binarize == "dynamic", bf16=t.bf16,
            order=order, epoch=epoch, desc=f"epoch {epoch}/{t.epochs}",
            progress=progress and cluster.is_main,
        )  # fmt: skip
        train = LossParts(**distributed.mean_across(train._asdict(), cluster))
        generators = distributed.gather(generator.get_state(), cluster)  # for the checkpoint
        if not cluster.is_main:
            continue
        metrics = EpochMetrics(epoch, train, held_out_loss(model, test_images, t.loss, params.seed))
        history.append(metrics)
        if progress:
            tqdm.write(metrics.describe(t.epochs))
        if checkpoint is not None:  # first: an epoch the tracking server missed is kept
            checkpoint.save({
                "epoch": epoch,
                "history": [m.as_dict() for m in history],
                "seconds": time.perf_counter() - started,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generators": generators,  # one per process, in rank order
            })  # fmt: skip
        if on_epoch is not None:
            on_epoch(metrics)
    model.cpu()
    return TrainingResult(history, time.perf_counter() - started)
