"""Where a picture's time goes: the model's pictures (``mean_image``, as ``generate`` and the
served ``decode`` draw them) by batch size, split into the decoder (z to the features the
pixel head reads, one pass of convolutions) and the pixel head's passes.

For issue 44's targets: at least 10,000 pictures a second in batches, and the served
``decode`` of 64 codes in at most 50 ms. The decoder's share bounds the first whatever the
head does; the head's time per pass, times its passes, bounds the second, and so does the
served answer's JSON (``mlflow models serve`` writes the pictures as JSON numbers, with
MLflow's own ``predictions_to_json``), timed here too.

    python bench/pictures.py                       # data/model, batches of 64 to 10,000
    python bench/pictures.py --model other/model --batches 64 1000
"""

from __future__ import annotations

import argparse
import io
import time

import pandas as pd
import torch
from mlflow.pyfunc.scoring_server import predictions_to_json

from mnist_vae.model.vae import load_model


def best_seconds(run, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``run`` (after one untimed)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/model", help="a model folder")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1000, 10000])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per batch (best)")
    args = parser.parse_args()

    model = load_model(args.model).eval()
    head = model.pixel_head
    passes = len(head.passes) if head is not None else 0
    schedule = model.config.pass_schedule if head is not None else "factorized"
    print(f"{args.model}: {schedule} ({passes} passes), {torch.get_num_threads()} threads, "
          f"best of {args.repeats}", flush=True)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        for batch in args.batches:
            z = torch.randn(batch, model.config.latent_dim, generator=generator)
            whole = best_seconds(lambda z=z: model.mean_image(z), args.repeats)
            decoder = best_seconds(lambda z=z: model.decoder(z), args.repeats)
            row = {
                "batch": batch,
                "pictures/s": round(batch / whole),
                "ms per batch": round(1000 * whole, 1),
                "decoder ms": round(1000 * decoder, 1),
                "decoder alone, pictures/s": round(batch / decoder),
            }
            if passes:
                row["head ms per pass"] = round(1000 * (whole - decoder) / passes, 3)
            pictures = model.mean_image(z).squeeze(1).numpy()
            as_json = best_seconds(lambda p=pictures: predictions_to_json(p, io.StringIO()), 1)
            row["served JSON ms"] = round(1000 * as_json, 1)
            rows.append(row)
            print(f"  batch {batch}: {row['pictures/s']} pictures/s", flush=True)
    print()
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
