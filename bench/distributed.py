"""One process against N under torchrun, at the same effective batch size.

Runs the real train stage twice on this repository's params.yaml and downloaded MNIST,
each in a scratch folder of its own (its own MLflow store; the workspace is not touched):
``python stages/train.py`` with ``train.batch_size = B`` and ``torchrun --standalone
--nproc_per_node=N stages/train.py`` with ``B / N`` per process. Prints each run's training
time (from the stage's own clock, without start-up and MLflow logging) and final test
negative ELBO, and the difference. Run from the repository root after ``dvc repro download``:

    python bench/distributed.py                                  # the default run, N = 2
    python bench/distributed.py --train-limit 6000 --epochs 3    # a quick look
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "stages" / "train.py"


def train(folder: Path, params: dict, processes: int) -> dict[str, float]:
    """Run the train stage in ``folder`` (MNIST linked in); its seconds and test loss."""
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "mnist").symlink_to(ROOT / "data" / "mnist")
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    launcher = [sys.executable]
    if processes > 1:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        launcher = [torchrun, "--standalone", f"--nproc_per_node={processes}"]
    started = time.perf_counter()
    result = subprocess.run(
        [*launcher, str(STAGE)], cwd=folder, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"the train stage failed with {processes} process(es):\n{result.stderr[-3000:]}")
    seconds = float(re.search(r"epochs in ([\d.]+) s", result.stdout)[1])
    metrics = json.loads((folder / "data/metrics/train.json").read_text())
    return {"seconds": seconds, "wall": wall, "test_loss": metrics["test_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2, help="N for torchrun (default 2)")
    parser.add_argument("--epochs", type=int, help="default: params.yaml's train.epochs")
    parser.add_argument("--train-limit", type=int, help="default: params.yaml's")
    args = parser.parse_args()
    if args.processes < 2:
        parser.error("--processes must be at least 2")

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if args.epochs is not None:
        params["train"]["epochs"] = args.epochs
    if args.train_limit is not None:
        params["data"]["train_limit"] = args.train_limit
    batch = params["train"]["batch_size"]
    if batch % args.processes:
        parser.error(f"train.batch_size {batch} is not divisible by {args.processes} processes")
    if not (ROOT / "data" / "mnist").is_dir():
        sys.exit("no data/mnist: run `dvc repro download` first")

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as scratch:
        for processes in (1, args.processes):
            run_params = {**params, "train": {**params["train"], "batch_size": batch // processes}}
            print(f"training with {processes} process(es) x {batch // processes} ...", flush=True)
            result = train(Path(scratch) / f"p{processes}", run_params, processes)
            rows.append((processes, batch // processes, result))

    limit = params["data"]["train_limit"] or 60000
    print(f"\n{limit} training images, {params['train']['epochs']} epochs, effective batch {batch}")
    header = ("processes", "per-process batch", "train s", "wall s", "test -ELBO")
    print("{:>9} {:>17} {:>8} {:>7} {:>10}".format(*header))
    for processes, per_process, r in rows:
        print(
            f"{processes:>9} {per_process:>17} {r['seconds']:>8.1f} {r['wall']:>7.1f} "
            f"{r['test_loss']:>10.2f}"
        )
    (_, _, one), (_, _, many) = rows
    print(
        f"difference in test -ELBO: {many['test_loss'] - one['test_loss']:+.2f} nats; "
        f"training time x{many['seconds'] / one['seconds']:.2f}"
    )


if __name__ == "__main__":
    main()
