"""Latency of the served model: `mlflow models serve` on 127.0.0.1, `decode` requests of 64
latent vectors (JSON over HTTP, as in docs/tracking.md), timed one after another.

    python bench/serving.py                          # models:/mnist-vae/latest, 200 requests
    python bench/serving.py --model models:/mnist-vae@champion --requests 500
    python bench/serving.py --turns                  # in this process: why pictures take turns

``--turns`` times, without a server, the pyfunc model of data/model answering four 64-latent
``decode`` requests one after another, then in four threads at once (as MLflow's server runs
requests) taking turns as served, then in four threads without turns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mnist_vae.tracking import runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def start_server(
    model: str, workers: int = 1, threads: int | None = None
) -> tuple[subprocess.Popen, str]:
    """``mlflow models serve`` of ``model`` on 127.0.0.1 (from this project's store), its own
    process group, once it answers ``/ping``: the process and its base URL. ``threads``
    sets ``OMP_NUM_THREADS`` for its workers."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": runs.tracking_uri()}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = ["mlflow", "models", "serve", "-m", model, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]  # fmt: skip
    print(" ".join(command), f"(OMP_NUM_THREADS={threads or 'unset'})", flush=True)
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            sys.exit(f"the server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                return server, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("the server did not answer /ping within 300 s")
            time.sleep(0.25)


def turns(requests: int = 4, rows: int = 64) -> None:
    """Print the seconds of ``requests`` decodes one after another and in as many threads."""
    import torch

    from mnist_vae.tracking.serving import VAEPyfunc

    torch.set_num_threads(1)  # one thread per worker, as bench/load.py serves it
    served = VAEPyfunc().load_folder("data/model")
    z = np.random.default_rng(0).standard_normal((rows, served.latent_dim)).astype(np.float32)

    def decode(_: object = None) -> None:
        served.predict(None, z, {"mode": "decode"})

    def timed(run) -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    decode()  # warm-up
    threads = ThreadPoolExecutor(requests)
    print(f"{requests} decodes of {rows} latent vectors, one torch thread:")
    alone = timed(lambda: [decode() for _ in range(requests)])
    print(f"  one after another:         {alone:.2f} s")
    print(f"  {requests} threads, taking turns: "
          f"{timed(lambda: list(threads.map(decode, range(requests)))):.2f} s")  # fmt: skip
    served._picture_turn = contextlib.nullcontext()  # what the turns save
    print(f"  {requests} threads, side by side: "
          f"{timed(lambda: list(threads.map(decode, range(requests)))):.2f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=f"models:/{runs.REGISTERED_MODEL}/latest")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rows", type=int, default=64, help="latent vectors per request")
    parser.add_argument("--turns", action="store_true", help="threads with and without turns")
    args = parser.parse_args()
    if args.turns:
        return turns(rows=args.rows)

    started = time.perf_counter()
    server, host = start_server(args.model)
    try:
        print(f"server ready in {time.perf_counter() - started:.1f} s", flush=True)
        url = f"{host}/invocations"
        probe = json.loads(post(url, {"inputs": [], "params": {"mode": "sample", "n": 1}})[1])
        assert np.array(probe["predictions"]).shape == (1, 28, 28), probe
        # the latent size from the server itself: a model logged by older code need not
        # load in this process, whose mnist_vae is today's (the server has its own copy)
        blank = {"inputs": [[[0.0] * 28] * 28], "params": {"mode": "encode"}}
        latent_dim = len(json.loads(post(url, blank)[1])["predictions"]["mean"][0])
        z = np.random.default_rng(0).standard_normal((args.rows, latent_dim)).round(4).tolist()
        payload = {"inputs": z, "params": {"mode": "decode"}}
        for _ in range(10):  # warm-up
            post(url, payload)
        times = []
        for _ in range(args.requests):
            start = time.perf_counter()
            status, body = post(url, payload)
            times.append(time.perf_counter() - start)
            assert status == 200, body[:500]
        shape = np.array(json.loads(body)["predictions"]).shape
        ms = sorted(t * 1000 for t in times)
        print(f"decode, {args.rows} latent vectors of {latent_dim} -> {shape}, "
              f"{args.requests} requests one after another:")  # fmt: skip
        print(f"  median {statistics.median(ms):.1f} ms, p90 {ms[int(0.9 * len(ms))]:.1f} ms, "
              f"min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms; "
              f"{len(ms) / sum(times):.1f} requests/s", flush=True)  # fmt: skip
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
