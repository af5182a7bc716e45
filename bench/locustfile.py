"""The users `bench/load.py` starts with locust: each sends, with no pause, one of four
requests to the served model, in equal shares: a one-digit ``compress``, a one-digit
``decompress`` (of that digit's stream), a one-digit ``reconstruct`` and a ``decode`` of 64
latent vectors. The requests' bodies come from the JSON file named by
``MNIST_VAE_LOAD_REQUESTS`` (load.py writes it from the test set). With
``MNIST_VAE_LOAD_ROUTES`` (JSON, mode -> server URL) each mode goes to its own server, as a
proxy routing by mode would send it; the others go to ``--host``.

    locust -f bench/locustfile.py --headless -u 16 -r 16 -t 60s --host http://127.0.0.1:5000
"""

from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, constant, task

with open(os.environ["MNIST_VAE_LOAD_REQUESTS"]) as file:
    BODIES = {mode: json.dumps(body) for mode, body in json.load(file).items()}
MODES = sorted(BODIES)
ROUTES = json.loads(os.environ.get("MNIST_VAE_LOAD_ROUTES", "{}"))
HEADERS = {"Content-Type": "application/json"}


class Client(FastHttpUser):
    wait_time = constant(0)

    @task
    def send(self) -> None:
        mode = random.choice(MODES)  # equal shares
        url = ROUTES.get(mode, "") + "/invocations"
        self.client.post(url, data=BODIES[mode], headers=HEADERS, name=mode)
