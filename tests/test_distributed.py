"""torchrun's environment, shards and the single-process fallbacks (the 2-process runs are in
test_train_stage.py)."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from mnist_vae.training import distributed
from mnist_vae.training.distributed import Cluster, DistributedError


def test_without_torchrun_it_is_one_process():
    cluster = distributed.from_environment({})
    assert cluster == Cluster(rank=0, world_size=1, local_rank=0)
    assert cluster.is_main and not cluster.distributed
    assert cluster.place(torch.device("cuda")) == torch.device("cuda")


def test_torchrun_environment_gives_rank_world_and_gpu():
    cluster = distributed.from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (cluster.rank, cluster.world_size, cluster.local_rank) == (3, 4, 1)
    assert cluster.distributed and not cluster.is_main
    assert cluster.place(torch.device("cuda")) == torch.device("cuda", 1)
    assert cluster.place(torch.device("cpu")) == torch.device("cpu")
    assert cluster.backend(torch.device("cpu")) == "gloo"
    assert cluster.backend(torch.device("cuda", 1)) == "nccl"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"WORLD_SIZE": "2"}, "RANK/LOCAL_RANK are missing"),
        ({"WORLD_SIZE": "2", "RANK": "one"}, "not integers"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "expected 0 <= RANK < WORLD_SIZE"),
        ({"WORLD_SIZE": "0", "RANK": "0"}, "expected 0 <= RANK < WORLD_SIZE"),
    ],
)
def test_an_inconsistent_environment_is_refused_with_what_to_do(environ, message):
    with pytest.raises(DistributedError, match=message):
        distributed.from_environment(environ)


@pytest.mark.parametrize(("n", "world_size"), [(10, 2), (11, 2), (7, 3), (5, 4)])
def test_shards_are_equal_in_size_and_cover_every_image_each_epoch(n, world_size):
    for epoch in (1, 2):
        shards = []
        for rank in range(world_size):
            sampler = distributed.shard_sampler(n, Cluster(rank, world_size, rank), seed=0)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        assert len({len(s) for s in shards}) == 1  # the same number of steps everywhere
        assert set().union(*shards) == set(range(n))
        assert sum(map(len, shards)) - n < world_size  # only the padding repeats


def test_shards_follow_the_seed_and_the_epoch():
    def order(seed: int, epoch: int) -> list[int]:
        sampler = distributed.shard_sampler(100, Cluster(0, 2, 0), seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)


def test_one_process_reduces_and_gathers_to_itself():
    values = {"loss": 1.5, "kl": 0.25}
    assert distributed.mean_across(values, Cluster()) == values
    state = torch.Generator().manual_seed(3).get_state()
    (gathered,) = distributed.gather(state, Cluster())
    assert torch.equal(gathered, state)


def test_one_process_needs_no_process_group():
    with distributed.process_group(Cluster(), torch.device("cpu")):
        assert not torch.distributed.is_initialized()


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    """One of the processes of the gloo test below (the way torchrun sets it up)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cluster = Cluster(rank, world_size, rank)
    with distributed.process_group(cluster, torch.device("cpu")):
        mean = distributed.mean_across({"a": float(rank), "b": 10.0 * rank}, cluster)
        states = distributed.gather(torch.Generator().manual_seed(rank).get_state(), cluster)
    torch.save({"mean": mean, "states": states}, f"{out}/{rank}.pt")


def test_two_processes_average_and_gather_over_gloo(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert result["mean"] == {"a": 0.5, "b": 5.0}
        expected = [torch.Generator().manual_seed(r).get_state() for r in range(2)]
        assert all(map(torch.equal, result["states"], expected))
