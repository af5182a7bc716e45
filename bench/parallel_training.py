"""Two trainings at once on a small machine: the seconds per step, alone and side by side,
under the OpenMP settings that decide how the threads of two processes share the cores.

What `dvc queue start -j 2` (or two terminals) does on a 2-core machine: two train stages,
each with as many threads as cores. By default an OpenMP thread that finishes its share
of an operation keeps its core busy a while, waiting for the next one; with two processes
on the cores those waits take the cores the other process needs. Each setting runs the
default model's training steps (params.yaml; MNIST's first training digits) in fresh
processes, all started together, and checks that every run ends with the same weights (the
kernels are pinned: the threads change no bit).

    python bench/parallel_training.py               # 30 steps each, about 2 minutes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

DATA = Path("data/mnist")
SETTINGS = {  # name: (processes at once, environment)
    "alone": (1, {}),
    "alone, OMP_WAIT_POLICY=PASSIVE": (1, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "2 at once": (2, {}),
    "2 at once, OMP_WAIT_POLICY=PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "2 at once, OMP_NUM_THREADS=1 each": (2, {"OMP_NUM_THREADS": "1"}),
    "2 at once, OMP_NUM_THREADS=1 each, PASSIVE": (
        2,
        {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
    ),
}


def worker(steps: int, warmup: int) -> None:
    """Train ``warmup`` then ``steps`` steps of the default model; print the timed steps'
    mean seconds, the threads and a digest of the weights as JSON."""
    import torch

    from mnist_vae.data import load_images
    from mnist_vae.invariant import pinned_arithmetic
    from mnist_vae.model.vae import config_from_params
    from mnist_vae.params import load_params
    from mnist_vae.reproducibility import digests
    from mnist_vae.training.loop import seeded_model, train_epoch

    params = load_params()
    batch = params.train.batch_size
    images, _ = load_images(DATA, "train", batch * (warmup + steps), params.seed)
    model = seeded_model(config_from_params(params), params.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.train.lr)
    generator = torch.Generator().manual_seed(params.seed)
    loss = params.train.loss

    def train(part: torch.Tensor) -> None:
        train_epoch(model, optimizer, part, batch, loss, generator, progress=False)

    with pinned_arithmetic():
        train(images[: batch * warmup])
        start = time.perf_counter()
        train(images[batch * warmup :])
        seconds = time.perf_counter() - start
    weights = hashlib.sha256("".join(digests(model).values()).encode()).hexdigest()
    print(json.dumps({"step": seconds / steps, "threads": torch.get_num_threads(),
                      "weights": weights[:12]}))  # fmt: skip


def run(setting: str, steps: int, warmup: int) -> list[dict]:
    """The setting's processes, started together; each one's report."""
    count, extra = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    command = [sys.executable, __file__, "--worker", "--steps", str(steps), "--warmup", str(warmup)]
    processes = [
        subprocess.Popen(command, env={**env, **extra}, stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    reports = []
    for process in processes:
        output, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"{setting}: a training failed")
        reports.append(json.loads(output.strip().splitlines()[-1]))
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per training")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2, help="each setting this many times")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.warmup)
        return

    print(f"{os.cpu_count()} cores; {args.steps} steps per training, batch from params.yaml; "
          f"settings in turn, {args.rounds} rounds", flush=True)  # fmt: skip
    rows = []
    for round_ in range(args.rounds):
        for setting in SETTINGS:
            reports = run(setting, args.steps, args.warmup)
            for report in reports:
                rows.append({"setting": setting, "round": round_, **report})
            steps = ", ".join(f"{r['step'] * 1000:.0f}" for r in reports)
            print(f"  {setting}: ms per step {steps}", flush=True)
    table = pd.DataFrame(rows)
    alone = 1000 * table[table.setting == "alone"]["step"].median()
    summary = pd.DataFrame(
        [
            {
                "setting": setting,
                "processes": count,
                "threads": int(runs["threads"].iloc[0]),
                "ms_per_step": round(1000 * runs["step"].median()),
                # two trainings of S steps each: side by side they take S x (their step);
                # one after the other, 2 x S x (the lone step)
                "vs_one_after_the_other": f"{1000 * runs['step'].median() / (count * alone):.2f}x",
            }
            for setting, (count, _) in SETTINGS.items()
            for runs in [table[table.setting == setting]]
        ]
    ).set_index("setting")
    print()
    print(summary.to_string())
    weights = sorted(set(table["weights"]))
    print(f"\nweights after the steps: {', '.join(weights)} "
          f"({'the same in every run' if len(weights) == 1 else 'DIFFER'})")  # fmt: skip
    sys.exit(0 if len(weights) == 1 else 1)


if __name__ == "__main__":
    main()
