"""Does every trained part give the same bits at any thread count? The training matrix.

The training counterpart of the decode matrix (``compression.portability``): each part that
the pipeline trains (the VAE with either decoder, the sampling mixture, the lossy decoder,
the classifier, CompressAI's learned codecs) is trained on a small slice of MNIST, in a new
process for each thread count, and the sha256 of its weights is compared across them. Three
threads split work unevenly, which is where a reduction split by thread shows; four are
more than this machine's cores, which changes nothing but the time.

    python -m mnist_vae.reproducibility --limit 512          # every part, 1 to 4 threads
    python -m mnist_vae.reproducibility --parts lossy_decoder --threads 1 3

Exit status 1 when any part's weights differ between thread counts. The parts train for a
few steps at the pipeline's batch sizes (not its lengths): a reduction whose order depends
on the threads changes the first step's gradient already.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .environment import NATIVE_SWITCH, PINNED_KERNELS, SET_BY_PIN

THREADS = (1, 2, 3, 4)
SEED = 0


def _untrained(decoder: str, loss: str, components: int = 0):
    """A seeded, untrained VAE: what the parts trained after the VAE start from here, so that
    each row of the matrix shows its own part (the VAE's own row shows the VAE's)."""
    from .model.vae import VAEConfig
    from .training.loop import seeded_model

    config = VAEConfig(10, "fast", likelihood=loss, decoder=decoder, sampler_components=components)
    return seeded_model(config, SEED)


def _vae(decoder: str, loss: str):
    """The VAE with ``decoder``, trained for one epoch at the pipeline's batch size."""

    def train(images):
        from .params import Params, TrainParams
        from .training.loop import fit

        model = _untrained(decoder, loss)
        fit(model, images, images[:128], Params(train=TrainParams(epochs=1, loss=loss)),
            progress=False)  # fmt: skip
        return model

    return train


def _sampler(images):
    from .model.sampler import fit_sampler

    model = _untrained("factorized", "bce", components=10)
    fit_sampler(model, images, SEED)  # fills the model's sampler_* buffers
    return {k: v for k, v in model.state_dict().items() if k.startswith("sampler_")}


def _lossy_decoder(decoder: str, loss: str):
    def train(images):
        from .compression.lossy import fit_lossy_decoder

        model = _untrained(decoder, loss)
        fit_lossy_decoder(model, images, epochs=1, seed=SEED)
        return model.lossy_decoder

    return train


def _classifier(images):
    import torch

    from .evaluation.classifier import train_classifier

    labels = torch.arange(len(images)) % 10  # the labels' values change no reduction's order
    return train_classifier(images, labels, epochs=1, batch_size=128, lr=3e-3, seed=SEED,
                            progress=False)  # fmt: skip


def _learned(name: str):
    def train(images):
        import torch

        from .compression import learned
        from .data import to_symbols

        torch.manual_seed(SEED)  # the initial weights, as learned.sweep seeds them
        model = learned.build(name, 32, 48)
        digits = to_symbols(images, 256).numpy()
        # a few of the quantiles' steps after training, not up to 5,000: what they compute
        # is checked by the first
        learned.train(model, digits, 0.01, epochs=1, batch_size=64, lr=3e-3, seed=SEED,
                      settle_steps=20)  # fmt: skip
        return model

    return train


PARTS: dict[str, Callable] = {
    "vae_factorized": _vae("factorized", "bce"),
    "vae_autoregressive": _vae("autoregressive", "logistic_mixture"),
    "sampler": _sampler,
    "lossy_decoder": _lossy_decoder("factorized", "bce"),
    "lossy_decoder_autoregressive": _lossy_decoder("autoregressive", "logistic_mixture"),
    "classifier": _classifier,
    "learned_factorized": _learned("bmshj2018-factorized"),
    "learned_hyperprior": _learned("bmshj2018-hyperprior"),
}
"""what the pipeline trains (the train, classifier and learned_baselines stages), each a
function of the training slice that returns the trained module (or its tensors)"""


def digests(trained) -> dict[str, str]:
    """The sha256 of each tensor of a trained module or a dict of tensors."""
    tensors = trained if isinstance(trained, dict) else trained.state_dict()
    return {
        name: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        for name, t in tensors.items()
    }


def _worker(data: Path, limit: int, parts: list[str], threads: int) -> dict[str, dict[str, str]]:
    import torch

    from .data import load_images

    torch.set_num_threads(threads)
    images, _ = load_images(data, "train", limit, SEED)
    return {part: digests(PARTS[part](images)) for part in parts}


def environment(threads: int) -> dict[str, str]:
    """This process's environment with the package's pin as a fresh process makes it (not
    inherited), and ``threads`` for every thread pool: torch's, MKL's, OpenBLAS's."""
    env = {k: v for k, v in os.environ.items() if k not in (SET_BY_PIN, NATIVE_SWITCH)}
    for name in os.environ.get(SET_BY_PIN, "").split(","):
        if name in PINNED_KERNELS:
            env.pop(name, None)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return env


def matrix(
    data: str | Path, limit: int, parts: list[str], threads: tuple[int, ...] = THREADS
) -> pd.DataFrame:
    """Train ``parts`` once per thread count, each count in a new process: one row per part,
    one column per thread count (the weights' digest), and which tensors differ."""
    runs = {}
    for n in threads:
        command = [sys.executable, "-m", "mnist_vae.reproducibility", "--worker",
                   "--data", str(data), "--limit", str(limit), "--threads", str(n),
                   "--parts", *parts]  # fmt: skip
        print(f"training {len(parts)} parts on {n} thread{'s' * (n > 1)}", file=sys.stderr,
              flush=True)  # fmt: skip
        done = subprocess.run(command, env=environment(n), capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"training on {n} threads failed:\n{done.stderr.strip()}")
        runs[n] = json.loads(done.stdout.strip().splitlines()[-1])
    rows = []
    for part in parts:
        first = runs[threads[0]][part]
        row = {"part": part, "tensors": len(first)}
        differ: set[str] = set()
        for n in threads:
            row[f"{n} thr"] = _short(runs[n][part])
            differ |= {name for name, d in runs[n][part].items() if first.get(name) != d}
        row["outcome"] = "same bits" if not differ else _differ(sorted(differ), len(first))
        rows.append(row)
    return pd.DataFrame(rows)


def _differ(names: list[str], total: int) -> str:
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"DIFFER: {len(names)} of {total} tensors ({shown})"


def _short(tensors: dict[str, str]) -> str:
    """One digest of all of a part's tensors, 12 hex digits."""
    return hashlib.sha256(json.dumps(tensors, sort_keys=True).encode()).hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/mnist", help="the MNIST folder")
    parser.add_argument("--limit", type=int, default=512, help="training images per part")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--threads", nargs="+", type=int, default=list(THREADS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(Path(args.data), args.limit, args.parts, args.threads[0])))
        return
    table = matrix(args.data, args.limit, args.parts, tuple(args.threads))
    with pd.option_context("display.width", 250, "display.max_colwidth", 120):
        print(table.to_string(index=False))
    same = (table["outcome"] == "same bits").sum()
    print(f"{same} of {len(table)} parts train to the same bits on {args.threads} threads")
    sys.exit(0 if same == len(table) else 1)


if __name__ == "__main__":
    main()
