"""The pipeline's own figures against the targets: the default run's training time, test
negative ELBO (97 nats for ``bce``; for the 8-bit likelihoods 1.20 bits per pixel, and the
compress stage's rate below every baseline's and 1.20) and peak memory, and how fast `dvc repro`
returns when nothing changed.

Training time and peak memory (RSS) are what the train stage measured and logged to the
model's MLflow run (found by the weights' sha256, as the later stages find it); the test
negative ELBO is the stage's DVC metric. ``--repro`` first reruns, one at a time and in
the pipeline's order, every stage a fresh clone's ``dvc repro`` runs (all but the data-only
baselines, whose small outputs are committed; ``--all`` adds them), and prints each stage's
seconds and the whole against the targets: the whole within 15 minutes, no stage but
``train`` above 3, everything after ``train`` within half of it. Then ``dvc repro`` with
nothing to do is timed three times, when ``dvc status`` finds every stage up to date.

    python bench/pipeline.py              # figures of the last `dvc repro`
    python bench/pipeline.py --repro      # rerun the pipeline first, stage by stage
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import yaml

from mnist_vae.evaluation.metrics import bits_per_pixel
from mnist_vae.model.folder import WEIGHTS_FILE
from mnist_vae.tracking import runs

WEIGHTS = Path("data/model") / WEIGHTS_FILE
PIXELS = 28 * 28
TRAIN_METRICS = Path("data/metrics/train.json")
EVAL_METRICS = Path("data/metrics/evaluate.json")
COMPRESS_METRICS = Path("data/metrics/compress.json")


def check(label: str, value: float, limit: float, unit: str, digits: int = 2) -> bool:
    ok = value <= limit
    shown = f"{value:9.{digits}f} {unit:8s} target <= {limit:.{digits}f}"
    print(f"{label:38s} {shown}  {'ok' if ok else 'MISSED'}")
    return ok


def dvc_repro(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(["dvc", "repro", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"dvc repro {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return seconds, result.stdout


# Data-only stages whose outputs are committed: a fresh clone's `dvc repro` skips them.
DATA_ONLY = ("baselines", "learned_baselines")


def stages_in_order() -> list[str]:
    """The stages in dvc.yaml's order, which lists each after those it depends on."""
    result = subprocess.run(["dvc", "stage", "list", "--name-only"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return result.stdout.split()


def downstream_of(stage: str) -> set[str]:
    """The stages that read, directly or not, what ``stage`` writes (from dvc.yaml)."""
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]

    def paths(entries: list) -> list[str]:
        return [next(iter(e)) if isinstance(e, dict) else e for e in entries]

    outs = {name: paths(s.get("outs", []) + s.get("metrics", [])) for name, s in stages.items()}
    found, frontier = set(), {stage}
    while frontier:
        written = [o for name in frontier for o in outs[name]]
        frontier = {
            name for name, s in stages.items() if name not in found and any(
                d == o or d.startswith(o + "/") for d in s.get("deps", []) for o in written)
        }  # fmt: skip
        found |= frontier
    return found


def time_stages(stages: list[str]) -> list[bool]:
    """Rerun each stage alone (``dvc repro --force --single-item``) and check the budget."""
    seconds = {}
    for stage in stages:
        print(f"running {stage} ...", flush=True)
        seconds[stage], _ = dvc_repro("--force", "--single-item", stage)
        print(f"  {stage:20s} {seconds[stage]:7.0f} s", flush=True)
    whole = sum(seconds.values())
    downstream = downstream_of("train")
    after_train = sum(v for k, v in seconds.items() if k in downstream)
    slowest = max((k for k in seconds if k != "train"), key=seconds.get)
    print()
    return [
        check("the whole pipeline", whole, 900, "s", 0),
        check(f"slowest stage but train ({slowest})", seconds[slowest], 180, "s", 0),
        check("every stage downstream of train", after_train, seconds.get("train", 0) / 2, "s", 0),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repro", action="store_true", help="rerun the stages first, timed")
    parser.add_argument("--all", action="store_true", help="with --repro: the data-only too")
    args = parser.parse_args()

    results = []
    if args.repro:
        stages = [s for s in stages_in_order() if args.all or s not in DATA_ONLY]
        results += time_stages(stages)
    if not WEIGHTS.exists():
        sys.exit("no trained model in data/model: run `dvc repro` (or this with --repro) first")

    runs.configure()
    run_id = runs.find_model_run(WEIGHTS)
    if run_id is None:
        sys.exit(f"no MLflow run trained {WEIGHTS}: run `dvc repro --force train` to record one")
    run = mlflow.get_run(run_id)
    train = json.loads(TRAIN_METRICS.read_text())
    print(f"model run {run.info.run_name} ({run_id}); "
          f"params: {run.data.params['model.arch']}, z={run.data.params['latent_dim']}, "
          f"{run.data.params['train.epochs']} epochs\n")  # fmt: skip

    results += [
        check("training time", run.data.metrics["train_seconds"], 720, "s"),
        check("train stage peak memory (RSS)", run.data.metrics["peak_rss_mib"], 2048, "MiB"),
    ]
    if run.data.params["train.loss"] == "bce":
        results.append(check("test negative ELBO", train["test_loss"], 97, "nats"))
    else:  # an 8-bit likelihood: the model is a codec
        bits = bits_per_pixel(train["test_loss"], PIXELS)
        results.append(check("test negative ELBO", bits, 1.20, "bits/px", 4))
        codec = json.loads(COMPRESS_METRICS.read_text()) if COMPRESS_METRICS.exists() else {}
        if codec.get("lossless"):
            best = codec["best_baseline_bits_per_pixel"]
            results.append(check("codec rate (bytes written)", codec["bits_per_pixel"],
                                 min(best, 1.20), "bits/px", 4))  # fmt: skip
    if EVAL_METRICS.exists():
        iwae = json.loads(EVAL_METRICS.read_text())["iwae_nll"]
        print(f"{'(evaluate: IWAE NLL, for reference)':38s} {iwae:9.2f} nats")

    stale = stale_stages()
    if stale:  # timing `dvc repro` would run them: learned_baselines alone takes 97 minutes
        print(f"`dvc repro` with nothing changed: not timed, these stages are not up to date "
              f"(`dvc status`): {', '.join(stale)}")  # fmt: skip
    else:
        times = [dvc_repro()[0] for _ in range(3)]
        results.append(check("`dvc repro` with nothing changed", statistics.median(times), 3, "s"))
    print(f"\n{sum(results)} of {len(results)} targets met")


def stale_stages() -> list[str]:
    """The stages `dvc repro` would run now (``dvc status``)."""
    result = subprocess.run(["dvc", "status", "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"dvc status failed:\n{result.stdout}{result.stderr}")
    return sorted(json.loads(result.stdout or "{}"))


if __name__ == "__main__":
    main()
