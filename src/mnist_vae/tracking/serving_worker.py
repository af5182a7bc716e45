"""How a worker of ``mlflow models serve`` spends its cores on the served model.

MLflow's scoring server is uvicorn running FastAPI: every request is answered in a
thread of the worker (``asyncio.to_thread``). Two things follow, measured in
``bench/load.py`` and docs/results.md#under-load:

- The default request pool has min(32, cores + 4) threads, six on two cores. A slow
  picture holds its thread to the end, so with more users than threads a one-digit
  ``compress`` of 2 ms waited behind pictures of a quarter of a second (``compress`` p99
  520 ms at 16 users). ``widen_request_threads`` gives the worker as many threads as it
  may have users.
- A picture from the autoregressive decoder is a step per pass of its schedule, each a
  few torch calls (784 small ones for the raster head, a handful of large ones for
  ``passes-N``): two in threads of one process fight over the GIL between calls, and
  uvicorn hands *connections*, not requests, to its workers, so one worker often holds
  every keep-alive client while another idles. ``PictureProcesses`` draws the pictures in
  processes of the worker's own, one per core: each request goes to whichever is free,
  and a single worker uses every core.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..model.vae import ConvVAE
# torch and the model are imported where they are used: a picture process imports this
# module first, and it watches its parent from its first second, not after torch's import
# (seconds on a loaded machine, during which a stopped server would leave it behind)

REQUEST_THREADS = 64
"""A serving worker's request threads, unless ``MNIST_VAE_REQUEST_THREADS`` says otherwise."""
SERVED_MODEL_VARIABLE = "__pyfunc_model_path__"
"""Set by ``mlflow models serve`` for its workers (``scoring_server._SERVER_MODEL_PATH``)."""
PICTURE_MODES = ("decode", "reconstruct", "sample")
PARENT_POLL_SECONDS = 0.5
"""how often a picture process checks that the worker that started it is still there"""
logger = logging.getLogger(__name__)


def _count(variable: str, default: int, least: int) -> int:
    text = os.environ.get(variable, str(default))
    try:
        count = int(text)
    except ValueError:
        count = least - 1
    if count < least:
        raise ValueError(f"{variable} must be a whole number >= {least}; got {text!r}")
    return count


def request_threads() -> int:
    """``MNIST_VAE_REQUEST_THREADS`` (default 64), checked."""
    return _count("MNIST_VAE_REQUEST_THREADS", REQUEST_THREADS, 1)


def picture_processes() -> int:
    """``MNIST_VAE_PICTURE_PROCESSES`` (default: the cores this process may use; 0: draw the
    pictures in the worker itself, taking turns), checked."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return _count("MNIST_VAE_PICTURE_PROCESSES", cores or 1, 0)


def served_by_mlflow() -> bool:
    """Whether this process is a worker of ``mlflow models serve`` (the server sets its
    variable; a script or a notebook that loads the model has none; the tests set it)."""
    return SERVED_MODEL_VARIABLE in os.environ


def widen_request_threads() -> int | None:
    """Give the running event loop a request pool of ``request_threads()`` threads: the
    count, or None when no loop runs yet.

    Under uvicorn's supervisor (``--workers 2`` or more) a worker loads the model inside
    its event loop, before the first request, so every request is answered from this pool.
    A single worker (``--workers 1``) loads it before its loop starts, and keeps Python's
    default pool (a warning says so). A waiting thread costs no CPU, and the pool starts
    its threads only as requests need them."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        logger.warning(
            "mnist-vae: the model was loaded before the server's event loop started (uvicorn "
            "with one worker), so requests keep Python's default pool of %d threads; serve "
            "with --workers 2 or more for MNIST_VAE_REQUEST_THREADS (%d) threads per worker",
            min(32, (os.cpu_count() or 1) + 4),
            request_threads(),
        )
        return None
    threads = request_threads()
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mnist-vae-request")
    )
    return threads


class PictureProcesses:
    """``decode``, ``reconstruct`` and ``sample`` in ``processes`` processes of their own,
    each with the model from ``folder`` and one torch thread: the same pictures, bit for
    bit, as ``draw`` gives in one torch thread. Arrays go back and forth between processes this
    worker started, never from a client. A process that dies (killed, out of memory) is
    replaced, and the request it held is drawn again once.

    The processes end with the worker, however it ends (its server stopped with SIGTERM or
    SIGINT, the worker killed or crashed): each watches its parent and exits within
    ``PARENT_POLL_SECONDS`` of being orphaned. A pool's processes wait on a queue whose
    both ends they hold, so they would otherwise wait for ever (issue 43: 2.2 GB of them
    after every restart of a server with two workers)."""

    def __init__(self, folder: str | Path, processes: int) -> None:
        self.folder, self.processes = str(folder), processes
        self._replacing = threading.Lock()
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),  # no forked torch state
            initializer=_load,
            initargs=(self.folder, os.getpid()),
        )
        # every process started and its model loaded before the first request: as many
        # calls at once as processes makes the pool start them all
        ready = [pool.submit(os.getpid) for _ in range(self.processes)]
        for call in ready:
            call.result()
        return pool

    def draw(
        self, mode: str, array: np.ndarray | None = None, n: int = 0, seed: int = 0
    ) -> np.ndarray:
        """The pictures of ``mode`` (``PICTURE_MODES``): ``array`` holds the latent vectors
        (decode) or images (reconstruct); ``n`` and ``seed`` are sample's."""
        pool = self._pool
        try:
            return pool.submit(_draw, mode, array, n, seed).result()
        except BrokenProcessPool:
            with self._replacing:
                if self._pool is pool:
                    self._pool = self._start()
            return self._pool.submit(_draw, mode, array, n, seed).result()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


_model: ConvVAE | None = None  # in a picture process: its model


def _load(folder: str, parent: int) -> None:
    global _model
    exit_with(parent)
    import torch

    from ..model.vae import load_model

    torch.set_num_threads(1)  # one process per core
    _model = load_model(folder)


def exit_with(parent: int) -> threading.Thread:
    """End this process once ``parent`` has ended: a daemon thread checks every
    ``PARENT_POLL_SECONDS`` that this process's parent is still ``parent`` (an orphan is
    handed to init or a subreaper) and then exits at once, as a process with no one to
    answer to has nothing to finish."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(0)

    watcher = threading.Thread(target=watch, name="mnist-vae-parent-watch", daemon=True)
    watcher.start()
    return watcher


def _draw(mode: str, array: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    return draw(_model, mode, array, n, seed)


def draw(
    model: ConvVAE, mode: str, array: np.ndarray | None = None, n: int = 0, seed: int = 0
) -> np.ndarray:
    """The pictures of one request, ``n x 28 x 28``, with ``model`` (see ``PictureProcesses``)."""
    import torch

    if mode not in PICTURE_MODES:
        raise ValueError(f"{mode!r} is not one of {PICTURE_MODES}")
    with torch.no_grad():
        if mode == "decode":
            images = model.mean_image(torch.from_numpy(array))
        elif mode == "reconstruct":
            images = model.reconstruct(torch.from_numpy(array))
        else:
            images = model.sample(n, torch.Generator().manual_seed(seed))
    return images.squeeze(1).numpy()
