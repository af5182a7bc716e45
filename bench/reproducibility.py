"""What makes CPU training differ between machines, measured on this one.

Trains the default model (params.yaml) on a slice of MNIST once per setting, each in a fresh
process (the kernel switches are read when torch first computes), and prints the weights'
sha256, the final test negative ELBO and the seconds of each. The settings emulate other
machines on this one: another thread count, and the instruction sets a CPU without AVX-512
(or with less) would use, through the switches PyTorch's kernel libraries read:
``ATEN_CPU_CAPABILITY`` (ATen's vectorised kernels), ``DNNL_MAX_CPU_ISA`` (oneDNN's
convolutions) and ``MKL_CBWR`` (MKL's matrix products).

    python bench/reproducibility.py                      # 10,000 images x 3 epochs, ~4 min
    python bench/reproducibility.py --train-limit 3000 --epochs 2
    python bench/reproducibility.py --speed --train-limit 60000 --epochs 1   # the pin's cost
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

DATA = Path("data/mnist")
NATIVE = {"MNIST_VAE_NATIVE_CPU": "1"}
AVX2_MACHINE = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2,STRICT",
}
MKL_NOT_STRICT = {"MKL_CBWR": "AVX2"}  # the pin before MKL's strict mode
# (name, environment, threads): "pinned" is the pipeline's default (mnist_vae/environment.py)
SETTINGS = [
    ("pinned", {}, 2),
    ("pinned", {}, 1),
    ("pinned", {}, 4),
    ("pinned, ATen at AVX-512", {"ATEN_CPU_CAPABILITY": "avx512"}, 2),
    ("pinned, MKL not strict", MKL_NOT_STRICT, 2),
    ("pinned, MKL not strict", MKL_NOT_STRICT, 1),
    ("native", NATIVE, 2),
    ("native", NATIVE, 1),
    ("native", NATIVE, 4),
    ("native, ATen at AVX2", {**NATIVE, "ATEN_CPU_CAPABILITY": "avx2"}, 2),
    ("native, ATen scalar", {**NATIVE, "ATEN_CPU_CAPABILITY": "default"}, 2),
    (
        "native, oneDNN+MKL at AVX2",
        {**NATIVE, "DNNL_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"},
        2,
    ),
    ("native, oneDNN at SSE4.1", {**NATIVE, "DNNL_MAX_CPU_ISA": "SSE41"}, 2),
    ("native, an AVX2 machine", {**NATIVE, **AVX2_MACHINE}, 2),
]
SPEED = [("pinned", {}, 2), ("native", NATIVE, 2)] * 2  # alternating: both see the same machine
SWITCHES = ("MNIST_VAE_NATIVE_CPU", "MNIST_VAE_PINNED_BY_PACKAGE", *AVX2_MACHINE)


def train_once(train_limit: int, epochs: int, threads: int) -> dict:
    """One training in this process (the worker): its record, weights hash and test loss."""
    import torch

    from mnist_vae import CPU_KERNELS, environment
    from mnist_vae.data import load_images, load_test_images
    from mnist_vae.model.vae import VAEConfig
    from mnist_vae.params import load_params
    from mnist_vae.training.distributed import Cluster
    from mnist_vae.training.loop import fit, plan_training, seeded_model

    torch.set_num_threads(threads)  # OMP_NUM_THREADS cannot go above the cores
    params = load_params()
    params = replace(
        params,
        data=replace(params.data, train_limit=train_limit),
        train=replace(params.train, epochs=epochs),
    )
    train, _ = load_images(DATA, "train", train_limit, params.seed)
    test, _ = load_test_images(DATA, 1000, params.data.binarize)
    plan = plan_training(params.train, Cluster(), len(train))
    config = VAEConfig(params.latent_dim, params.model.arch, likelihood=params.train.loss)
    model = seeded_model(config, params.seed)
    start = time.perf_counter()
    result = fit(model, train, test, params, plan, progress=False)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.numpy().tobytes())
    record = environment.record(str(plan.device), CPU_KERNELS)
    return {
        "kernels": record["cpu_kernels"].split(" ")[0],
        "capability": record["cpu_capability"],
        "threads": record["threads"],
        "weights sha256": digest.hexdigest()[:12],
        "test -ELBO": result.history[-1].test.loss,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-limit", type=int, default=10_000, help="training images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--speed", action="store_true", help="only the pin's cost: pinned and native, twice each"
    )
    parser.add_argument("--worker", type=int, metavar="THREADS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(train_once(args.train_limit, args.epochs, args.worker)))
        return

    print(f"{args.train_limit} training images x {args.epochs} epochs per setting, "
          f"test -ELBO on 1,000 test images; {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    base = {k: v for k, v in os.environ.items() if k not in SWITCHES}
    rows = []
    for name, env, threads in SPEED if args.speed else SETTINGS:
        command = [sys.executable, __file__, "--worker", str(threads), "--train-limit",
                   str(args.train_limit), "--epochs", str(args.epochs)]  # fmt: skip
        done = subprocess.run(command, env={**base, **env}, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{name}: the worker failed:\n{done.stderr}")
        rows.append({"setting": name, **json.loads(done.stdout.splitlines()[-1])})
        print(f"  {name}, {threads} threads: done", flush=True)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))

    for kernels, group in table.groupby("kernels", sort=False):
        loss = group["test -ELBO"]
        print(f"{kernels}: {group['weights sha256'].nunique()} distinct weights in "
              f"{len(group)} settings; test -ELBO spread {loss.max() - loss.min():.4f} nats "
              f"({(loss.max() - loss.min()) / loss.mean():.2e} relative); "
              f"median {group['seconds'].median():.1f} s")  # fmt: skip
    if args.speed:
        best = table.groupby("setting")["seconds"].min()
        print(f"the pin's cost: {best['pinned']:.1f} s against {best['native']:.1f} s native "
              f"(best of 2 each): {best['pinned'] / best['native'] - 1:+.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
