"""Stage rate_distortion: the lossy codec at every rate level against PCA, the standard
lossy codecs and the learned ones, then our near-lossless file at every bound against
JPEG-LS, on the test images (README: Compression).

Reads: seed, data.train_limit (PCA is fitted on the training images the model saw),
data.test_limit, data.binarize, lossy.rate; the classic codecs' points (baselines) and the
learned codecs' (learned_baselines)
Writes: data/compression/lossy/ (curves.png: PSNR and SSIM against bits per image;
equal_bytes.png: originals over ours over the classic codec and the learned one closest in
bytes; test-lossy.mvae: the test set at lossy.rate), data/metrics/rate_distortion/*.csv
(dvc plots: a file per curve), data/metrics/lossy.json and near_lossless.json (dvc
metrics). Every rate is bytes actually written, every distortion that of the images decoded
from them (near-lossless: the pixels its file decodes to or is refused, the bins' centres;
bench/near_lossless.py decodes every file and checks them).
"""

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd

from mnist_vae import files
from mnist_vae.compression import rate_distortion as rd
from mnist_vae.compression.lossless import BitsBackCodec
from mnist_vae.compression.lossy import LossyCodec
from mnist_vae.data import load_images, load_test_images, to_symbols
from mnist_vae.model.folder import WEIGHTS_FILE
from mnist_vae.params import MAX_RATE, load_params
from mnist_vae.progress import bar_over
from mnist_vae.stage import run, write_metrics
from mnist_vae.tracking import runs

DATA = Path("data/mnist")
MODEL_DIR = Path("data/model")
BASELINES = Path("data/metrics/lossy_baselines.csv")
LOSSLESS_BASELINES = Path("data/metrics/baselines.csv")
NEAR_LOSSLESS_BASELINES = Path("data/metrics/near_lossless_baselines.csv")
LEARNED = Path("data/metrics/learned_baselines")
OUT = Path("data/compression/lossy")
CURVES = Path("data/metrics/rate_distortion")
METRICS = Path("data/metrics/lossy.json")
NEAR_LOSSLESS_METRICS = Path("data/metrics/near_lossless.json")


def main() -> None:
    params = load_params()
    runs.configure()  # a server that refuses us stops the stage before any output
    p = params.data
    images = to_symbols(load_test_images(DATA, p.test_limit, p.binarize)[0], 256).numpy()
    train = to_symbols(load_images(DATA, "train", p.train_limit, params.seed)[0], 256).numpy()
    codec = LossyCodec.from_folder(MODEL_DIR)
    print(f"rate_distortion: {len(images)} test images, rate levels 0..{MAX_RATE}, PCA, "
          "baselines", flush=True)  # fmt: skip
    ours = rd.ours(codec, images, progress=bar_over("ours, mixture"))
    prior = rd.ours(codec, images, "prior", progress=bar_over("ours, prior"))
    pca = rd.pca_curve(train, images, progress=bar_over("PCA, by components"))
    baselines = pd.read_csv(BASELINES)
    learned = pd.read_csv(LEARNED / "curves.csv")
    metrics = rd.summary(ours, prior, pca, baselines, learned, params.lossy.rate)
    print(json.dumps(metrics, indent=2), flush=True)
    bits_back = BitsBackCodec.from_folder(MODEL_DIR)
    near = rd.near_lossless(bits_back, images, progress=bar_over("ours, near-lossless"))
    jpegls = pd.read_csv(NEAR_LOSSLESS_BASELINES)
    near_metrics = rd.near_lossless_summary(
        near, ours, jpegls, pd.read_csv(LOSSLESS_BASELINES), pd.concat([baselines, learned]),
        len(images),
    )  # fmt: skip
    print(json.dumps(near_metrics, indent=2), flush=True)

    shutil.rmtree(OUT, ignore_errors=True)
    shutil.rmtree(CURVES, ignore_errors=True)
    curves = pd.concat([ours, near, pca, baselines, jpegls, learned], ignore_index=True)
    rd.write_curves(pd.concat([curves, prior.assign(layout=prior["layout"] + " (prior)")]), CURVES)
    rd.save_curves(curves, OUT / "curves.png")
    rd.picture_at_equal_bytes(
        codec, images, params.lossy.rate, baselines, learned, LEARNED, OUT / "equal_bytes.png"
    )
    files.write_bytes(OUT / "test-lossy.mvae", codec.compress(images, params.lossy.rate))
    write_metrics(METRICS, metrics)
    write_metrics(NEAR_LOSSLESS_METRICS, near_metrics)

    with runs.model_run(MODEL_DIR / WEIGHTS_FILE):
        flat = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        mlflow.log_metrics({f"lossy.{k}": float(v) for k, v in flat.items()})
        mlflow.log_metrics({
            f"near_lossless.max_error_{k}.bytes_per_image": v["bytes_per_image"]
            for k, v in near_metrics["by_max_error"].items()
        })  # fmt: skip
        mlflow.log_artifacts(str(OUT), "rate_distortion")
        mlflow.log_artifacts(str(CURVES), "metrics/rate_distortion")
        mlflow.log_artifact(str(METRICS), "metrics")
        mlflow.log_artifact(str(NEAR_LOSSLESS_METRICS), "metrics")


if __name__ == "__main__":
    run(main, "rate_distortion")
