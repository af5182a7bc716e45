"""Stage overview: the README's picture of the run (samples, reconstructions and the
rate-distortion curves in one figure).

Reads: data/generated/grid.png, data/comparison/grid.png, data/metrics/rate_distortion/
Writes: docs/assets/overview.png (small, committed: the README and the docs site show it)
"""

from pathlib import Path

import pandas as pd

from mnist_vae.evaluation.overview import save_overview
from mnist_vae.images import load_grey
from mnist_vae.stage import run

SAMPLES = Path("data/generated/grid.png")
COMPARISON = Path("data/comparison/grid.png")
CURVES = Path("data/metrics/rate_distortion")
OUT = Path("docs/assets/overview.png")


def main() -> None:
    curves = pd.concat([pd.read_csv(path) for path in sorted(CURVES.glob("*.csv"))])
    save_overview(load_grey(SAMPLES).numpy(), load_grey(COMPARISON).numpy(), curves, OUT)
    print(f"overview: {OUT}", flush=True)


if __name__ == "__main__":
    run(main, "overview")
