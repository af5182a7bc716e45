"""Does a compressed file decode under other settings? The cross-setting matrix.

A codec is only as good as its worst decoder. This writes files with the ``mnist-vae``
command under some settings (the environment variables that choose the CPU kernels and the
thread count, as a user's machine would), decodes every file under every setting, each in
a new process, and compares what comes back: every pixel of a lossless file must be the
original's, of a near-lossless one its bin's centre (``near_lossless.Bins.quantize``). A
lossy file's codes are checked by its checksum (a wrong one is refused); its
picture is the floating-point decoder's, rounded to 8 bits, compared with the picture
where it was written (a pixel whose value falls within the kernels' rounding of a half
grey level may come out one level apart).

    python -m mnist_vae.compression.portability --model data/model --limit 500 \
        [--python "torch 2.13.0=/path/to/other/venv/bin/python"]

What one machine can emulate: the kernels pinned at AVX2 (the package's default) or
native (AVX-512 where the CPU has it), ATen's scalar kernels, oneDNN capped at SSE4.1,
1, 2 and 4 threads, one core; ``--python`` adds another interpreter (another torch
version, say). The network batch is checked by the unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..environment import NATIVE_SWITCH, PINNED_KERNELS, SET_BY_PIN
from .near_lossless import Bins

_NATIVE = {NATIVE_SWITCH: "1"}
SETTINGS: dict[str, dict[str, str]] = {
    "pinned AVX2, 2 threads": {"OMP_NUM_THREADS": "2"},
    "pinned AVX2, 1 thread": {"OMP_NUM_THREADS": "1"},
    "pinned AVX2, 4 threads": {"OMP_NUM_THREADS": "4"},
    "pinned AVX2, one core (taskset -c 0)": {"OMP_NUM_THREADS": "1"},
    "native, 2 threads": {**_NATIVE, "OMP_NUM_THREADS": "2"},
    "native, scalar ATen, 1 thread": {
        **_NATIVE,
        "ATEN_CPU_CAPABILITY": "default",
        "OMP_NUM_THREADS": "1",
    },
    "native, oneDNN at SSE4.1, 4 threads": {
        **_NATIVE,
        "DNNL_MAX_CPU_ISA": "SSE41",
        "OMP_NUM_THREADS": "4",
    },
}
ONE_CORE = "pinned AVX2, one core (taskset -c 0)"
WRITERS = ("pinned AVX2, 2 threads", "native, scalar ATen, 1 thread")
NEAR_LOSSLESS_ERROR = 4
MODES = {
    "lossless": [],
    "near-lossless": ["--max-error", str(NEAR_LOSSLESS_ERROR)],
    "lossy": ["--lossy"],
}
EXACT = ("lossless", "near-lossless")
"""the modes whose every pixel is fixed by the file: the originals, or their bins' centres"""

# One process per setting runs ``mnist-vae`` commands (torch caps OMP_NUM_THREADS at the
# cores, so the thread count is set explicitly) and says what the CPU ran.
_RUNNER = """
import json, os, sys, torch
from mnist_vae.cli import main
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
codes = [main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                  "capability": torch.backends.cpu.get_cpu_capability(), "codes": codes}))
"""


def environment(setting: str) -> dict[str, str]:
    """The process environment for ``setting``: this one's, less every kernel and thread
    choice (including those the package's pin made here), plus the setting's (another
    interpreter's runs as the first writer's)."""
    env = dict(os.environ)
    for name in (*PINNED_KERNELS, SET_BY_PIN, NATIVE_SWITCH, "OMP_NUM_THREADS"):
        env.pop(name, None)
    return {**env, **SETTINGS.get(setting, SETTINGS[WRITERS[0]])}


def _command(setting: str, python: str, args: list[str]) -> list[str]:
    """The command line: ``taskset -c 0`` in front for the one-core setting."""
    prefix = ["taskset", "-c", "0"] if setting == ONE_CORE and shutil.which("taskset") else []
    return [*prefix, python, *args]


def _run(
    setting: str, commands: list[list[str]], python: str = sys.executable
) -> tuple[dict, list[str]]:
    """``mnist-vae`` commands in one new process under ``setting``: what it reported (the
    exit codes, torch's version, the threads, the CPU capability) and its error lines."""
    done = subprocess.run(
        _command(setting, python, ["-c", _RUNNER, json.dumps(commands)]),
        env=environment(setting),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"mnist-vae under {setting!r} failed: {done.stderr.strip()}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report, [line for line in done.stderr.splitlines() if "error:" in line]


def _read_folder(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))])


def matrix(
    model: str | Path, images: np.ndarray, work: Path, interpreters: dict[str, str] | None = None
) -> pd.DataFrame:
    """Write each mode's file under each of ``WRITERS``, decode every file under every
    setting, and under each of ``interpreters`` (a label and a Python that has mnist-vae
    installed, another torch for instance): one row per (file, setting) with the outcome
    (``exact``, ``N pixels differ`` or the refusal's line) and what the decoding process
    ran on."""
    inputs = work / "images"
    inputs.mkdir(parents=True)
    paths = [inputs / f"{i:05d}.png" for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image).save(path)
    files = {
        (mode, writer): work / f"{mode} by {writer}.mvae" for writer in WRITERS for mode in MODES
    }
    for writer in WRITERS:
        report, errors = _run(writer, [
            ["compress", *map(str, paths), "-o", str(files[(mode, writer)]), "--model",
             str(model), *flags]
            for mode, flags in MODES.items()
        ])  # fmt: skip
        if any(report["codes"]):
            raise RuntimeError(f"compress under {writer!r} failed: {errors}")
    rows, decoded = [], {}
    readers = {setting: sys.executable for setting in SETTINGS} | (interpreters or {})
    for setting, python in readers.items():
        outs = [work / "out" / setting / path.stem for path in files.values()]
        report, errors = _run(setting, [
            ["decompress", str(path), "-o", str(out), "--model", str(model)]
            for path, out in zip(files.values(), outs, strict=True)
        ], python)  # fmt: skip
        lines = iter(errors)
        for (mode, writer), out, code in zip(files, outs, report["codes"], strict=True):
            got = _read_folder(out) if code == 0 else next(lines, "refused")
            decoded[(mode, writer, setting)] = got
            rows.append({"file": f"{mode}, written {writer}", "decoded": setting,
                         "torch": report["torch"], "capability": report["capability"],
                         "threads": report["threads"], "_got": got})  # fmt: skip
    for row, key in zip(rows, decoded, strict=True):
        mode, writer, _ = key
        expected = {
            "lossless": images,
            "near-lossless": Bins(NEAR_LOSSLESS_ERROR).quantize(images),
        }.get(mode, decoded[(mode, writer, writer)])
        row["outcome"] = _outcome(row.pop("_got"), expected)
    return pd.DataFrame(rows)


def _outcome(got: np.ndarray | str, expected: np.ndarray | str) -> str:
    if isinstance(got, str):
        return f"refused: {got.split('error: ')[-1]}"
    if isinstance(expected, str) or got.shape != expected.shape:
        return "decoded, nothing to compare with"
    gap = np.abs(got.astype(np.int16) - expected)
    differ = int((gap > 0).sum())
    return "exact" if differ == 0 else f"{differ} pixels differ, by {int(gap.max())} at most"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/model", help="a model folder")
    parser.add_argument("--limit", type=int, default=500, help="the first N test images")
    parser.add_argument("--data", default="data/mnist", help="the MNIST folder")
    parser.add_argument(
        "--python", action="append", default=[], metavar="LABEL=PATH",
        help="also decode with another Python that has mnist-vae installed (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    interpreters = dict(spec.split("=", 1) for spec in args.python)
    from ..data import load_test_images, to_symbols

    grey, _ = load_test_images(Path(args.data), args.limit, "none")
    images = to_symbols(grey, 256).numpy().astype(np.uint8)
    with tempfile.TemporaryDirectory() as work:
        table = matrix(args.model, images, Path(work), interpreters)
    print(table.to_string(index=False))
    mode = table["file"].str.split(",").str[0]
    for name in MODES:
        part = table[mode == name]
        print(f"{name}: {(part['outcome'] == 'exact').sum()} of {len(part)} decodings exact")
    sys.exit(0 if (table[mode.isin(EXACT)]["outcome"] == "exact").all() else 1)


if __name__ == "__main__":
    main()
