"""Stage compress: the trained model as a lossless codec on the whole test set.

Reads: data.test_limit, data.binarize
Writes: data/compression/lossless/test.mvae (the test images, compressed; for a model that is no
codec, NOT_COMPRESSED.txt with the reason), data/metrics/compress.json (dvc metrics: bits
per pixel actually written, the negative ELBO and IWAE bound in bits per pixel from
evaluate, the gap) and data/metrics/codecs.csv (dvc plots: ours beside the baselines).
Images per second both ways go to MLflow and the log only: no clock in an output.
Decompresses in a fresh codec and stops with an error unless every pixel comes back.
"""

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd

from mnist_vae import files
from mnist_vae.compression.lossless import no_codec_reason, round_trip
from mnist_vae.data import load_test_images, to_symbols
from mnist_vae.model.folder import WEIGHTS_FILE
from mnist_vae.model.likelihoods import likelihood
from mnist_vae.model.vae import load_model
from mnist_vae.params import load_params
from mnist_vae.stage import run, write_metrics
from mnist_vae.tracking import runs

DATA = Path("data/mnist")
MODEL_DIR = Path("data/model")
OUT = Path("data/compression/lossless")
EVALUATION = Path("data/metrics/evaluate.json")
BASELINES = Path("data/metrics/baselines.csv")
METRICS = Path("data/metrics/compress.json")
TABLE = Path("data/metrics/codecs.csv")


def main() -> None:
    params = load_params()
    runs.configure()  # a server that refuses us stops the stage before any output
    images, _ = load_test_images(DATA, params.data.test_limit, params.data.binarize)
    loss = load_model(MODEL_DIR).config.likelihood
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    table = pd.read_csv(BASELINES)
    reason = no_codec_reason(loss, params.data.binarize == "dynamic")
    if reason is not None:
        print(f"compress: {reason}; baselines only", flush=True)
        (OUT / "NOT_COMPRESSED.txt").write_text(
            f"{reason}: train with train.loss logistic_mixture (README: Compression)\n"
        )
        write_metrics(METRICS, {"lossless": False})
        table.to_csv(TABLE, index=False)
        return
    symbols = to_symbols(images, likelihood(loss).levels).numpy()
    print(f"compress: {len(symbols)} test images, bits-back ANS", flush=True)
    trip = round_trip(MODEL_DIR, symbols)
    files.write_bytes(OUT / "test.mvae", trip.data)
    evaluation = json.loads(EVALUATION.read_text())
    metrics = trip.metrics(evaluation["bits_per_pixel"], evaluation["iwae_bits_per_pixel"])
    metrics["best_baseline_bits_per_pixel"] = float(table["bits_per_pixel"].min())
    print(json.dumps({**metrics, **trip.speed()}, indent=2), flush=True)
    write_metrics(METRICS, metrics)  # the clock (speed) goes to MLflow and the log only
    ours = {"codec": "mnist-vae (bits-back ANS)", "layout": "whole set", "bytes": len(trip.data),
            "bits_per_pixel": trip.bits_per_pixel}  # fmt: skip
    pd.concat([pd.DataFrame([ours]), table]).to_csv(TABLE, index=False)

    with runs.model_run(MODEL_DIR / WEIGHTS_FILE):
        logged = {**metrics, **trip.speed()}
        mlflow.log_metrics({f"compress.{k}": float(v) for k, v in logged.items()})
        mlflow.log_artifact(str(TABLE), "metrics")


if __name__ == "__main__":
    run(main, "compress")
