"""The served model under load: `mlflow models serve` of the champion on 127.0.0.1, then
locust (headless, `bench/locustfile.py`) with N users at once for a fixed time each, every
user sending one-digit ``compress``, ``decompress`` and ``reconstruct`` requests and
64-latent ``decode`` requests in equal shares, with no pause. Prints, for each N, the
requests per second, p50/p95/p99 latency per mode, the failures by cause, and the server's
resident memory (all its workers) before and after (after a 10 s warm-up at the most
users, not reported); then the targets at N = 16.

    python bench/load.py                                  # 2 workers, N = 1, 4, 16, 64, 60 s
    python bench/load.py --users 16 --seconds 20 --workers 1
    python bench/load.py --split --workers 1              # codec modes and pictures apart
    python bench/load.py --url http://127.0.0.1:5000      # a server already running

``--split`` serves the model twice, ``--workers`` each: one server takes the codec modes
(``compress``, ``decompress``), the other the autoregressive pictures (``decode``,
``reconstruct``), as a proxy routing by mode would; the users and their mix are the same,
and the memory is both servers'.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import serving  # bench/serving.py: the server's start, a POST

from mnist_vae.data import load_test_images
from mnist_vae.tracking import runs

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
TARGET_USERS = 16  # the targets: no failure, p99 of compress, memory growth
TARGET_P99_COMPRESS_MS = 250
TARGET_RSS_GROWTH = 0.10


def post(url: str, body: dict) -> dict:
    status, answer = serving.post(url, body)
    if status != 200:
        sys.exit(f"the server answered {status}: {answer[:300]!r}")
    return json.loads(answer)


def request_bodies(url: str, latent_dim: int) -> dict[str, dict]:
    """The four requests, made from the first test digit (its stream from the server)."""
    images, _ = load_test_images(Path("data/mnist"), 1)
    digit = images[0, 0].numpy().round(4).tolist()
    stream = post(url, {"inputs": [digit], "params": {"mode": "compress"}})["predictions"]
    base64.b64decode(stream[0], validate=True)  # a stream, not an error
    z = np.random.default_rng(0).standard_normal((64, latent_dim)).round(4).tolist()
    return {
        "compress": {"inputs": [digit], "params": {"mode": "compress"}},
        "decompress": {"inputs": stream, "params": {"mode": "decompress"}},
        "reconstruct": {"inputs": [digit], "params": {"mode": "reconstruct"}},
        "decode": {"inputs": z, "params": {"mode": "decode"}},
    }


def server_rss(pid: int) -> int:
    """Resident bytes of the server and every process under it (its workers)."""
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def _cpu(process: psutil.Process) -> float:
    return sum(process.cpu_times()[:2])


def _listens(process: psutil.Process) -> bool:
    return any(c.status == psutil.CONN_LISTEN for c in process.net_connections("tcp"))


def worker_cpu(pids: list[int]) -> dict[int, tuple[float, dict[int, float]]]:
    """CPU seconds so far of every uvicorn worker under the servers ``pids`` (the processes
    that listen, below the supervisor when there is one) and of each of its picture
    processes: worker pid -> (seconds, {picture process pid: seconds})."""
    cpu = {}
    for pid in pids:
        listening = [p for p in psutil.Process(pid).children(recursive=True) if _listens(p)]
        for worker in listening:
            if any(child in listening for child in worker.children()):
                continue  # the supervisor of several workers
            pictures = [p for p in worker.children() if "spawn_main" in " ".join(p.cmdline())]
            cpu[worker.pid] = (_cpu(worker), {p.pid: _cpu(p) for p in pictures})
    return cpu


def cpu_used(before: dict, after: dict) -> str:
    """Each worker's CPU seconds between two ``worker_cpu`` readings, its picture
    processes' in brackets."""

    parts = []
    for pid, (seconds, pictures) in sorted(after.items()):
        was, was_pictures = before.get(pid, (0.0, {}))
        text = f"{seconds - was:.0f}"
        if pictures:
            spent = [f"{s - was_pictures.get(p, 0.0):.0f}" for p, s in sorted(pictures.items())]
            text += f" ({', '.join(spent)})"
        parts.append(text)
    return "; ".join(parts)


def run_locust(
    host: str, users: int, seconds: int, requests: Path, out: Path, routes: dict[str, str]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """One locust run: its table per mode (requests, failures, percentiles, rate; the
    ``Aggregated`` row: all modes) and its failures counted by cause. ``routes``: the
    modes sent to another server than ``host``."""
    prefix = out / f"users{users}"
    subprocess.run(
        ["locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary", "-u", str(users),
         "-r", str(users), "-t", f"{seconds}s", "--stop-timeout", "120", "--host", host,
         "--csv", str(prefix)],
        env={**os.environ, "MNIST_VAE_LOAD_REQUESTS": str(requests),
             "MNIST_VAE_LOAD_ROUTES": json.dumps(routes)},
        check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    stats = pd.read_csv(f"{prefix}_stats.csv")
    failures = pd.read_csv(f"{prefix}_failures.csv")
    table = stats.rename(columns={"Name": "mode", "Request Count": "requests",
                                  "Failure Count": "failures", "Requests/s": "req/s",
                                  "50%": "p50 ms", "95%": "p95 ms", "99%": "p99 ms"})  # fmt: skip
    table = table[["mode", "requests", "failures", "req/s", "p50 ms", "p95 ms", "p99 ms"]]
    table["req/s"] = table["req/s"].round(1)
    table.insert(0, "users", users)
    causes = failures.groupby("Error")["Occurrences"].sum().to_dict() if len(failures) else {}
    return table, causes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=f"models:/{runs.REGISTERED_MODEL}@champion")
    parser.add_argument("--url", help="a server already running (then --model, --workers "
                        "and the memory figures do not apply)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (default 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker (OMP_NUM_THREADS; 0: torch's default)",
    )
    parser.add_argument(
        "--split", action="store_true", help="codec modes on one server, pictures on another"
    )
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=int, default=60, help="per user count")
    args = parser.parse_args()

    servers, host = [], args.url and args.url.rstrip("/")
    routes = {}
    try:
        for _ in range(0 if args.url else 2 if args.split else 1):
            server, url = serving.start_server(args.model, args.workers, args.threads or None)
            servers.append(server)
            host = host or url
        if args.split:
            routes = {"decode": url, "reconstruct": url}  # the second server
            print(f"codec modes on {host}, decode and reconstruct on {url}", flush=True)
        encoded = post(f"{host}/invocations", {"inputs": [[[0.0] * 28] * 28],
                                               "params": {"mode": "encode"}})  # fmt: skip
        latent_dim = len(encoded["predictions"]["mean"][0])
        with tempfile.TemporaryDirectory() as scratch:
            requests = Path(scratch) / "requests.json"
            requests.write_text(json.dumps(request_bodies(f"{host}/invocations", latent_dim)))
            # warm-up, not reported: every worker's allocator and caches at the most users
            run_locust(host, max(args.users), 10, requests, Path(scratch), routes)
            tables, memory = [], []
            for users in args.users:
                before = sum(server_rss(s.pid) for s in servers) or None
                cpu_before = worker_cpu([s.pid for s in servers])
                table, causes = run_locust(
                    host, users, args.seconds, requests, Path(scratch), routes
                )
                after = sum(server_rss(s.pid) for s in servers) or None
                cpu = worker_cpu([s.pid for s in servers])
                tables.append(table)
                memory.append((users, before, after))
                print(table.to_string(index=False), flush=True)
                if causes:
                    print("  failures:", causes, flush=True)
                if servers:
                    print(f"  server RSS {before / 2**20:.0f} MiB before, "
                          f"{after / 2**20:.0f} MiB after", flush=True)  # fmt: skip
                    print(f"  CPU seconds in {args.seconds} s, each worker (its picture "
                          f"processes): {cpu_used(cpu_before, cpu)}", flush=True)  # fmt: skip
        report(pd.concat(tables), memory)
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


def report(table: pd.DataFrame, memory: list[tuple[int, int | None, int | None]]) -> None:
    print(f"\n{table.to_string(index=False)}")
    if TARGET_USERS not in set(table["users"]):
        return
    at = table[table["users"] == TARGET_USERS].set_index("mode")
    failed = int(at["failures"].sum())
    print(f"\nat {TARGET_USERS} users: {failed} failures (target 0): "
          f"{'ok' if failed == 0 else 'MISSED'}")  # fmt: skip
    p99 = float(at.loc["compress", "p99 ms"])
    print(
        f"at {TARGET_USERS} users: p99 of compress {p99:.0f} ms (target <= "
        f"{TARGET_P99_COMPRESS_MS}): {'ok' if p99 <= TARGET_P99_COMPRESS_MS else 'MISSED'}"
    )
    for users, before, after in memory:
        if users == TARGET_USERS and before:
            growth = after / before - 1
            print(f"at {TARGET_USERS} users: server RSS grew {100 * growth:.1f}% (target <= "
                  f"{100 * TARGET_RSS_GROWTH:.0f}%): "
                  f"{'ok' if growth <= TARGET_RSS_GROWTH else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
