"""The lossy codec's targets on the default model (issues 14 and 25), printed:

1. at the PSNR of the default rate, our bytes per image against the best baseline stored per
   image (at most one tenth) and against every mosaic (less): from data/metrics/lossy.json,
   which the rate_distortion stage wrote from the bytes it wrote;
2. our curve above PCA's at every rate where both exist (the same file);
3. against CompressAI's learned codecs trained on the same digits (the learned_baselines stage:
   data/metrics/learned_baselines/): their points, their training, the bytes each needs for
   our PSNR (ours at most half of the best one's), our curve above each where both reach;
4. compress and decompress speed on the 10,000 test images, both layouts (>= 2,000/s), and
   the distortion level by level (a finer grid never worse on this set), with PCA's PSNR at
   the same bits and the decoding speed of each level (without a lossy decoder, the
   coarsest average 16 of the model's pictures per code).

    python bench/lossy.py [--model data/model] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mnist_vae.compression import rate_distortion as rd
from mnist_vae.compression.distortion import distortion
from mnist_vae.compression.lossy import LossyCodec, points_per_code
from mnist_vae.data import load_test_images, to_symbols
from mnist_vae.params import MAX_RATE, load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="data/model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rate = load_params().lossy.rate
    images = to_symbols(load_test_images(Path("data/mnist"))[0], 256).numpy()
    codec = LossyCodec.from_folder(args.model)
    n = len(images)
    print(f"{n} test images, model {args.model}, {args.threads} threads, rate {rate}\n")

    timings = {}
    for name, encode, decode in (
        ("whole set", lambda c: c.compress(images, rate), LossyCodec.decompress),
        ("per image", lambda c: c.compress_each(images, rate), LossyCodec.decompress_each),
    ):
        best = [np.inf, np.inf]
        for _ in range(3):
            # A fresh codec each round: one keeps the last images' codes and the last codes'
            # pictures, so a second round would time the cache.
            fresh = LossyCodec.from_folder(args.model)
            start = time.perf_counter()
            data = encode(fresh)
            middle = time.perf_counter()
            decode(fresh, data)
            best = [min(best[0], middle - start), min(best[1], time.perf_counter() - middle)]
        timings[name] = (n / best[0], n / best[1])
        print(f"speed, {name:9}: compress {n / best[0]:8,.0f} images/s, decompress "
              f"{n / best[1]:8,.0f} images/s (best of 3)")  # fmt: skip

    def averaged(level: int) -> int:  # a model with a lossy decoder decodes one picture
        return 1 if codec.model.lossy_decoder is not None else points_per_code(level)

    curves = Path("data/metrics/rate_distortion")
    pca = pd.read_csv(curves / "pca_whole_set.csv")
    print("\nlevel  bytes/image  PSNR (dB)  SSIM   PCA's PSNR at these bits  images/s decoded"
          "  (pictures averaged per code)")  # fmt: skip
    psnrs = []
    for level in range(MAX_RATE + 1):
        data = codec.compress(images, level)
        start = time.perf_counter()
        decoded = codec.decompress(data)
        speed = n / (time.perf_counter() - start)
        quality = distortion(images, decoded)
        psnrs.append(quality["psnr"])
        bits = pd.DataFrame({"bits_per_image": [8 * len(data) / n], "psnr": [quality["psnr"]]})
        at = rd.pca_comparison(bits, pca)["pca_psnr"]
        pca_psnr = f"{at.iloc[0]:.2f}" if len(at) else "-"
        print(f"{level:5}  {len(data) / n:11.2f}  {quality['psnr']:9.2f}  {quality['ssim']:.3f}"
              f"  {pca_psnr:>24}  {speed:16,.0f}  ({averaged(level)})")  # fmt: skip

    metrics = json.loads(Path("data/metrics/lossy.json").read_text())
    t = metrics["targets"]
    print(f"\nat rate {rate}: {metrics['bytes_per_image']:.2f} bytes per image (whole set), "
          f"{metrics['bytes_per_image_stream']:.2f} per one-image stream, PSNR "
          f"{metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}")  # fmt: skip
    print("classic codecs, bytes per image to match that PSNR:")
    for name, value in metrics["baseline_bytes_to_match_psnr"].items():
        print(f"  {name:40} {value}")
    print("learned codecs (CompressAI, trained on the training digits), the same:")
    for name, value in metrics["learned_bytes_to_match_psnr"].items():
        print(f"  {name:40} {value}")
    learned = Path("data/metrics/learned_baselines")
    points = pd.read_csv(learned / "curves.csv").assign(
        bytes_per_image=lambda t: t["bits_per_image"] / 8
    )
    training = pd.read_csv(learned / "training.csv")
    table = points.merge(
        training.assign(setting=[f"lambda {v:g}" for v in training["lambda"]]),
        on=["codec", "setting"],
    )
    print("\nthe learned codecs' points (every stream decoded and checked) and their training:")
    columns = ["codec", "setting", "bytes_per_image", "psnr", "ssim", "epochs", "steps", "loss"]
    print(table[columns].to_string(index=False, float_format="%.4g"))
    speed = min(min(pair) for pair in timings.values())
    checks = [
        (f"whole set vs best per-image baseline ({t['best_per_image_baseline']}, "
         f"{t['its_bytes_for_our_psnr']} B)", t["ratio_whole_set"], "<= 0.1",
         t["ratio_whole_set"] <= 0.1),
        ("one-image streams vs the same", t["ratio_per_image_stream"], "<= 0.1",
         t["ratio_per_image_stream"] <= 0.1),
        ("whole set below every mosaic", t["below_every_mosaic"], "True", t["below_every_mosaic"]),
        (f"above PCA at each of {t['shared_rates']} shared rates",
         t["above_pca_at_every_shared_rate"], "True", t["above_pca_at_every_shared_rate"]),
        (f"whole set vs best learned codec ({t['best_learned']}, "
         f"{t['its_bytes_for_our_psnr_learned']} B)", t["ratio_learned_whole_set"], "<= 0.5",
         (t["ratio_learned_whole_set"] or np.inf) <= 0.5),
        (f"above every learned curve at each of {t['learned_shared_rates']} shared rates",
         t["above_learned_at_every_shared_rate"], "True", t["above_learned_at_every_shared_rate"]),
        ("slowest of compress/decompress (images/s)", round(speed), ">= 2000", speed >= 2000),
        ("a finer level never lowers the PSNR", all(b >= a for a, b in itertools.pairwise(psnrs)),
         "True", all(b >= a for a, b in itertools.pairwise(psnrs))),
    ]  # fmt: skip
    print()
    for name, value, target, ok in checks:
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{name:72} {shown:>10}  target {target:8} {'ok' if ok else 'MISSED'}")
    print(f"\n{sum(ok for *_, ok in checks)} of {len(checks)} targets met")
    if t["ratio_learned_per_image_stream"] is not None:
        print(f"(one-image streams against the best learned codec, whose streams are one per "
              f"digit too: {t['ratio_learned_per_image_stream']:.3f} of its bytes)")  # fmt: skip


if __name__ == "__main__":
    main()
