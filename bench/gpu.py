"""GPU figures: the default training on CUDA, and the binarized-MNIST likelihood line.

Trains with params.yaml exactly as the train stage would on a CUDA device (dataset on the
GPU, batch ``train.cuda_batch_scale`` times larger, ``train.bf16`` / ``train.compile`` as
set, or forced with the flags below) and prints the wall time and the test negative ELBO.
``--binarized`` then trains the binarized-MNIST line of docs/results.md (the same overrides as
BINARIZED below) and prints its importance-weighted test NLL with 1000 samples.

    python bench/gpu.py                       # default params on CUDA
    python bench/gpu.py --bf16 --compile      # with bfloat16 autocast and torch.compile
    python bench/gpu.py --binarized           # also the binarized-MNIST line
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from mnist_vae.data import load_images, load_test_images
from mnist_vae.model.vae import VAEConfig
from mnist_vae.params import Params, load_params
from mnist_vae.training.loop import fit, seeded_model
from mnist_vae.training.losses import iwae_nll

DATA = Path("data/mnist")
# docs/results.md's line: dvc exp run -S data.binarize=dynamic -S latent_dim=32 \
#                                  -S train.epochs=200 -S evaluate.iw_samples=1000
BINARIZED = {"latent_dim": 32, "epochs": 200, "iw_samples": 1000}


def train(params: Params, binarize: bool, bf16: bool, compile: bool) -> tuple[object, float]:
    train_x, _ = load_images(DATA, "train", params.data.train_limit, params.seed)
    test_x, _ = load_test_images(DATA, params.data.test_limit, "dynamic" if binarize else "none")
    t = params.train
    config = VAEConfig(params.latent_dim, params.model.arch, likelihood=t.loss)
    model = seeded_model(config, params.seed)
    torch.cuda.synchronize()
    start = time.perf_counter()
    params = dataclasses.replace(
        params,
        data=dataclasses.replace(params.data, binarize="dynamic" if binarize else "none"),
        train=dataclasses.replace(t, device="cuda", bf16=bf16, compile=compile),
    )
    history = fit(model, train_x, test_x, params).history
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"  {t.epochs} epochs in {seconds:.1f} s; test negative ELBO "
          f"{history[-1].test.loss:.2f} nats", flush=True)  # fmt: skip
    return model, seconds


@torch.no_grad()
def test_iwae(model, params: Params, k: int) -> float:
    test_x, _ = load_test_images(DATA, 0, "dynamic")
    model = model.cuda().eval()
    generator = torch.Generator(device="cuda").manual_seed(params.seed)
    total = 0.0
    for start in range(0, len(test_x), 500):
        x = test_x[start : start + 500].cuda()
        total += iwae_nll(model, x, k, generator, budget=1 << 18).sum().item()
    return total / len(test_x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bf16", action="store_true", help="force bfloat16 autocast on")
    parser.add_argument("--compile", action="store_true", help="force torch.compile on")
    parser.add_argument("--binarized", action="store_true", help="also the binarized line")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch: nothing measured (run this on a GPU machine)")
    params = load_params()
    bf16, compile = args.bf16 or params.train.bf16, args.compile or params.train.compile
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; bf16={bf16}, "
          f"compile={compile}", flush=True)  # fmt: skip

    print("default params:", flush=True)
    train(params, binarize=False, bf16=bf16, compile=compile)

    if args.binarized:
        line = dataclasses.replace(
            params,
            latent_dim=BINARIZED["latent_dim"],
            data=dataclasses.replace(params.data, binarize="dynamic"),
            train=dataclasses.replace(params.train, epochs=BINARIZED["epochs"]),
        )
        print(f"binarized line ({BINARIZED}):", flush=True)
        model, _ = train(line, binarize=True, bf16=bf16, compile=compile)
        k = BINARIZED["iw_samples"]
        print(f"  importance-weighted test NLL, k={k}: {test_iwae(model, line, k):.2f} nats "
              f"(target <= 82)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
