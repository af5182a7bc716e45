"""How a serving worker spends its cores: the request threads and the picture processes.
Measured under load by bench/load.py; here, what each piece promises."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import torch

from mnist_vae.model.vae import VAEConfig, build_model, save_model
from mnist_vae.tracking.serving_worker import (
    SERVED_MODEL_VARIABLE,
    PictureProcesses,
    draw,
    picture_processes,
    request_threads,
    served_by_mlflow,
    widen_request_threads,
)

LATENT = 3


def _arrive(everyone: threading.Barrier) -> str:
    everyone.wait()
    return threading.current_thread().name


def test_a_widened_worker_answers_as_many_requests_at_once_as_it_has_threads(monkeypatch):
    """40 requests, each waiting for all the others, all get a thread of their own, where
    the default pool (at most 32 threads) would leave them waiting for ever."""
    monkeypatch.setenv("MNIST_VAE_REQUEST_THREADS", "40")
    everyone = threading.Barrier(40, timeout=30)

    async def serve() -> tuple[int, set[str]]:
        threads = widen_request_threads()
        names = await asyncio.gather(*(asyncio.to_thread(_arrive, everyone) for _ in range(40)))
        return threads, set(names)

    threads, names = asyncio.run(serve())
    assert threads == 40
    assert len(names) == 40 and all(name.startswith("mnist-vae-request") for name in names)


def test_a_worker_loaded_before_its_loop_keeps_the_default_pool_and_says_so(caplog):
    """uvicorn with one worker loads the model before its loop starts."""
    assert widen_request_threads() is None
    assert "serve with --workers 2 or more" in caplog.text


def test_only_mlflows_server_is_told_apart_from_a_script_or_a_notebook(monkeypatch):
    monkeypatch.delenv(SERVED_MODEL_VARIABLE, raising=False)
    assert not served_by_mlflow()
    monkeypatch.setenv(SERVED_MODEL_VARIABLE, "models:/mnist-vae/1")
    assert served_by_mlflow()


@pytest.mark.parametrize(
    ("variable", "read"),
    [
        ("MNIST_VAE_REQUEST_THREADS", request_threads),
        ("MNIST_VAE_PICTURE_PROCESSES", picture_processes),
    ],
)
def test_the_counts_have_defaults_and_refuse_nonsense(monkeypatch, variable, read):
    monkeypatch.delenv(variable, raising=False)
    assert read() >= 1
    monkeypatch.setenv(variable, "3")
    assert read() == 3
    for bad in ("-1", "many", "2.5"):
        monkeypatch.setenv(variable, bad)
        with pytest.raises(ValueError, match=f"{variable} must be a whole number"):
            read()
    monkeypatch.setenv("MNIST_VAE_PICTURE_PROCESSES", "0")
    assert picture_processes() == 0  # the pictures in the worker itself


@pytest.fixture(scope="module")
def autoregressive(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ar")
    config = VAEConfig(latent_dim=LATENT, likelihood="logistic_mixture", decoder="autoregressive")
    save_model(build_model(config), folder)
    return folder


def _requests():
    z = np.random.default_rng(1).standard_normal((2, LATENT)).astype(np.float32)
    x = np.random.default_rng(2).random((2, 1, 28, 28), dtype=np.float32)
    return [("decode", z, 0, 0), ("reconstruct", x, 0, 0), ("sample", None, 3, 7)]


def _picture_processes_pids() -> list[int]:
    return [child.pid for child in psutil.Process().children()
            if "spawn_main" in " ".join(child.cmdline())]  # fmt: skip


def test_picture_processes_draw_the_workers_pictures_bit_for_bit_and_survive_a_kill(
    autoregressive,
):
    """Two processes, requests from four threads at once: each answer equals the one the
    worker draws itself (one torch thread, as in the processes). Then both processes are
    killed: the next requests are drawn again by new ones."""
    from mnist_vae.model.vae import load_model

    model, threads = load_model(autoregressive), torch.get_num_threads()
    torch.set_num_threads(1)  # as in the picture processes
    try:
        expected = [draw(model, *request) for request in _requests()]
    finally:
        torch.set_num_threads(threads)
    processes = PictureProcesses(autoregressive, 2)
    try:
        pids = _picture_processes_pids()
        assert len(pids) == 2
        with ThreadPoolExecutor(4) as threads:
            answers = list(threads.map(lambda r: processes.draw(*r), _requests() * 4))
        assert all(np.array_equal(a, e) for a, e in zip(answers, expected * 4, strict=True))
        for pid in pids:
            psutil.Process(pid).kill()
        psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], 10)
        again = [processes.draw(*request) for request in _requests()]
        assert all(np.array_equal(a, e) for a, e in zip(again, expected, strict=True))
        assert not set(_picture_processes_pids()) & set(pids)
    finally:
        processes.close()


def test_draw_refuses_a_mode_that_is_not_a_picture(autoregressive):
    from mnist_vae.model.vae import load_model

    with pytest.raises(ValueError, match="'compress' is not one of"):
        draw(load_model(autoregressive), "compress")


_HOLDER = """
import os, sys, time
from mnist_vae.tracking.serving_worker import PictureProcesses
pictures = PictureProcesses(sys.argv[1], 2)
print(" ".join(str(p.pid) for p in pictures._pool._processes.values()), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGSEGV"])
def test_picture_processes_end_with_the_worker_that_started_them(autoregressive, how):
    """A worker killed (SIGKILL: no clean-up runs), stopped (SIGTERM, whose default action
    ends it as abruptly) or crashed (SIGSEGV) leaves none of its picture processes behind:
    each sees it is orphaned and exits within a second."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(autoregressive)], stdout=subprocess.PIPE, text=True
    )
    children = [psutil.Process(int(pid)) for pid in holder.stdout.readline().split()]
    assert len(children) == 2 and all(child.is_running() for child in children)
    holder.send_signal(getattr(signal, how))
    holder.wait(timeout=30)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"picture processes left after the worker's {how}: {alive}"
    assert len(gone) == 2
