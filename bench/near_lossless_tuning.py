"""Does a model that knows the bins code near-lossless files smaller? Issue 45's next step.

Usage: ``python bench/near_lossless_tuning.py [--model data/model] [--errors 1 4 17]
[--steps 600] [--limit 1000]``

For each bound k, a copy of the model is fine-tuned the way the near-lossless coder uses it:
the encoder and the pixel head read the reconstruction (each pixel its bin's centre), and the
loss is the bins' likelihood (the mixture summed over each pixel's bin) plus the KL, on
batches of training digits (Adam, ``--lr``, ``--steps`` batches of 128). Before and after,
it writes the near-lossless file of the first ``--limit`` test digits with
``BitsBackCodec`` (a fresh codec decodes it and every pixel is checked) and prints its bytes
per digit, and the tuned model's lossless file too: a tuned model is only worth keeping if it
is the default's lossless codec as well, or worth a model of its own.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mnist_vae.compression.lossless import round_trip
from mnist_vae.compression.near_lossless import Bins
from mnist_vae.data import load_split, load_test_images, to_symbols
from mnist_vae.model.likelihoods import LEVELS, LogisticMixture
from mnist_vae.model.vae import ConvVAE, load_model, save_model
from mnist_vae.training.losses import kl_to_standard_normal

DATA = "data/mnist"
BATCH = 128


def log_bin_mass(params: torch.Tensor, levels: torch.Tensor, bins: Bins) -> torch.Tensor:
    """log P(each pixel's bin) under the logistic mixture ``params`` ``[N, 3K, H, W]``, summed
    over each image's pixels: ``[N]``. ``levels`` are the original pixels, int64 ``[N, 1, H,
    W]``; the end bins are open-ended, as the model's own edge levels."""
    symbols = torch.from_numpy(bins.symbols(levels.numpy()).astype(np.int64))
    top = torch.from_numpy(bins.edges.astype(np.int64))[symbols]  # highest level in the bin
    low = top + 1 - torch.from_numpy(bins.widths.astype(np.int64))[symbols]
    log_weights, means, log_scales = LogisticMixture._parts(params)
    inv_scale = torch.exp(-log_scales)
    unit = 2.0 / (LEVELS - 1)
    upper = ((top + 0.5) * unit - 1.0 - means) * inv_scale
    lower = ((low - 0.5) * unit - 1.0 - means) * inv_scale
    inner = torch.log((torch.sigmoid(upper) - torch.sigmoid(lower)).clamp(min=1e-12))
    log_mass = torch.where(  # a bound of 1..127 makes at least two bins: none is both ends
        low == 0, F.logsigmoid(upper), torch.where(top == LEVELS - 1, F.logsigmoid(-lower), inner)
    )
    return torch.logsumexp(log_weights + log_mass, 1).flatten(1).sum(1)


def fine_tune(
    model: ConvVAE, train: np.ndarray, k: int, steps: int, lr: float, seed: int
) -> ConvVAE:
    """A copy of ``model`` trained ``steps`` batches on the bins of bound ``k``."""
    tuned = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(tuned.parameters(), lr=lr)
    rng, bins = np.random.default_rng(seed), Bins(k)
    generator = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        x = train[rng.choice(len(train), BATCH, replace=False)]
        seen = torch.from_numpy(bins.quantize(x)).unsqueeze(1).float() / (LEVELS - 1)
        mean, logvar = tuned.encode(seen)
        params = tuned.decode(tuned.reparameterize(mean, logvar, generator), seen)
        levels = torch.from_numpy(x.astype(np.int64)).unsqueeze(1)
        loss = (kl_to_standard_normal(mean, logvar) - log_bin_mass(params, levels, bins)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps:
            print(f"  k = {k}: step {step}/{steps}, {loss.item() / math.log(2) / 8:.2f} "
                  "bytes a training digit", flush=True)  # fmt: skip
    return tuned.eval()


def file_bytes(model: ConvVAE, images: np.ndarray, k: int) -> float:
    """Bytes a digit of the file ``BitsBackCodec`` writes with ``model`` (checked round trip)."""
    with tempfile.TemporaryDirectory() as folder:
        save_model(model, folder)
        return len(round_trip(folder, images, max_error=k).data) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/model", help="a model folder")
    parser.add_argument("--errors", type=int, nargs="+", default=[1, 4, 17])
    parser.add_argument("--steps", type=int, default=600, help="batches of 128 per bound")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--limit", type=int, default=1000, help="test digits coded")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = load_model(args.model)
    if model.config.likelihood != "logistic_mixture":
        parser.error(f"the bench tunes a logistic-mixture model; {args.model} is "
                     f"{model.config.likelihood!r}")  # fmt: skip
    train = load_split(DATA, "train")[0].numpy()
    test = to_symbols(load_test_images(DATA, args.limit, "none")[0], LEVELS).numpy()
    lossless = file_bytes(model, test, 0)
    print(f"{len(test)} test digits, model {args.model}: lossless {lossless:.2f} B", flush=True)
    rows = []
    for k in args.errors:
        start = time.perf_counter()
        before = file_bytes(model, test, k)
        tuned = fine_tune(model, train, k, args.steps, args.lr, args.seed)
        rows.append({
            "k": k,
            "before B": before,
            "tuned B": file_bytes(tuned, test, k),
            "tuned lossless B": file_bytes(tuned, test, 0),
            "seconds": time.perf_counter() - start,
        })  # fmt: skip
        rows[-1]["change"] = rows[-1]["tuned B"] / before - 1
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format="%.3f"), flush=True)
    print(f"\nfine-tuned {args.steps} batches of {BATCH} at lr {args.lr} per bound; "
          f"the default's lossless file: {lossless:.2f} B a digit")  # fmt: skip
    print(pd.DataFrame(rows).to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
