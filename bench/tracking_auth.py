"""What an account's password costs per request on the shared MLflow server.

MLflow's basic-auth app checks the password against its scrypt hash on every request
unless ``auth_cache_ttl_seconds`` in its auth.ini lets a worker remember a password it has
checked (docs/scaling-out.md). This times the same small read (search one experiment) with
and without the viewer's credentials, round after round, on the server that
``.ci/shared-tracking`` starts and describes in the environment:

    bash -c '. .venv/bin/activate && . .ci/shared-tracking && python bench/tracking_auth.py'
    MNIST_VAE_TRACKING_AUTH_CACHE=0 bash -c '...'     # the same server without the cache

Without credentials the server answers 401 at once: that round is the cost of the request
itself, the difference is the password check.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import time
import urllib.error
import urllib.request
from pathlib import Path


def per_request_ms(url: str, headers: dict[str, str], n: int) -> float:
    """The mean milliseconds of ``n`` GETs of ``url``, answered or refused."""
    started = time.perf_counter()
    for _ in range(n):
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                answer.read()
        except urllib.error.HTTPError as refused:
            refused.read()
    return (time.perf_counter() - started) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    server = os.environ["MNIST_VAE_TRACKING_SERVER"].rstrip("/")
    accounts = json.loads(Path(os.environ["MNIST_VAE_TRACKING_ACCOUNTS"]).read_text())
    viewer, account = next((n, a) for n, a in accounts.items() if a["role"] == "viewer")
    token = base64.b64encode(f"{viewer}:{account['password']}".encode()).decode()
    url = f"{server}/api/2.0/mlflow/experiments/search?max_results=1"
    cache = os.environ.get("MNIST_VAE_TRACKING_AUTH_CACHE", "60 (.ci/shared-tracking's default)")
    print(f"{server}, auth_cache_ttl_seconds = {cache}")
    ways = {"without credentials (401)": {}, "as the viewer": {"Authorization": f"Basic {token}"}}
    rounds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):  # the two ways take turns, so both see the same machine
        for name, headers in ways.items():
            rounds[name].append(per_request_ms(url, headers, args.requests))
    for name, times in rounds.items():
        print(f"{name:>26}: median {statistics.median(times):7.1f} ms a request "
              f"(rounds of {args.requests}: {', '.join(f'{t:.1f}' for t in times)})")  # fmt: skip


if __name__ == "__main__":
    main()
