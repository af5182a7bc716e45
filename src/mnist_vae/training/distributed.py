"""Data-parallel training over processes started by ``torchrun``.

``torchrun --nproc_per_node=N stages/train.py`` starts N copies of the train stage and
tells each its place through the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). A ``WORLD_SIZE`` above 1 is what switches training to
``torch.nn.parallel.DistributedDataParallel``; without it (``python stages/train.py``)
nothing here does anything and training is the single-process loop, bit for bit.

What each process does under DDP:

- it joins the process group (gloo on the CPU, NCCL on CUDA, one GPU per ``LOCAL_RANK``);
- every epoch it visits its shard of a permutation shared by all processes
  (``torch.utils.data.distributed.DistributedSampler``, seeded with ``seed``,
  reshuffled by epoch; up to N-1 images are visited twice so all shards are the same size);
- ``train.batch_size`` is per process, so the effective batch is ``N x batch_size``;
- its reparameterisation noise comes from its own generator seeded with ``seed + rank``;
- gradients are averaged across processes at every step, so all copies stay identical;
- only rank 0 evaluates, writes outputs and checkpoints, and talks to MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

from ..errors import DistributedError


@dataclass(frozen=True)
class Cluster:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that evaluates, writes outputs and logs to MLflow."""
        return self.rank == 0

    def backend(self, device: torch.device) -> str:
        return "nccl" if device.type == "cuda" else "gloo"

    def place(self, device: torch.device) -> torch.device:
        """Under DDP on CUDA each process takes the GPU of its ``LOCAL_RANK``."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device


def from_environment(environ: Mapping[str, str] | None = None) -> Cluster:
    """The cluster torchrun describes in the environment; one process when it says nothing."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return Cluster()
    try:
        world_size, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as error:
        raise DistributedError(
            f"WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers ({error}); "
            "start the stage with torchrun, or unset WORLD_SIZE"
        ) from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(
            f"RANK={rank} with WORLD_SIZE={world_size}: expected 0 <= RANK < WORLD_SIZE"
        )
    return Cluster(rank, world_size, local_rank)


@contextmanager
def process_group(cluster: Cluster, device: torch.device) -> Iterator[None]:
    """Join the process group for the duration (a no-op for a single process)."""
    if not cluster.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        cluster.backend(device),
        rank=cluster.rank,
        world_size=cluster.world_size,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard_sampler(n: int, cluster: Cluster, seed: int) -> DistributedSampler:
    """This process's share of ``n`` training images; ``set_epoch`` reshuffles it."""
    return DistributedSampler(
        range(n), num_replicas=cluster.world_size, rank=cluster.rank, shuffle=True, seed=seed
    )


def _collective_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo moves CPU tensors."""
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def mean_across(values: dict[str, float], cluster: Cluster) -> dict[str, float]:
    """The mean over processes of each value (every process must call it)."""
    if not cluster.distributed:
        return values
    total = torch.tensor(list(values.values()), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return dict(zip(values, (total / cluster.world_size).tolist(), strict=True))


def gather(tensor: torch.Tensor, cluster: Cluster) -> list[torch.Tensor]:
    """Every process's ``tensor`` (same shape and dtype everywhere), in rank order, on the CPU.

    Every process must call it. Tensors, not pickled objects, cross between processes."""
    if not cluster.distributed:
        return [tensor.cpu()]
    local = tensor.to(_collective_device())
    parts = [torch.empty_like(local) for _ in range(cluster.world_size)]
    dist.all_gather(parts, local)
    return [part.cpu() for part in parts]
