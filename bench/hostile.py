"""Lying headers against the decoders: is a file's decoding work bounded by its size?

Usage: ``python bench/hostile.py [--model data/model] [--sizes 1 5 500] [--cap 60]``

Writes a lossless and a lossy file of the first 1, 5 and 500 test digits with the trained
model, times the command line's ``decompress`` of each (the best of two runs), then sets
each header field (count, group size, height, width, values per pixel, latent bits, mode)
to extreme and to plausible wrong values and decompresses every forged file the same way.
A lossless file of the bounded format also gets counts whose group table is rewritten to
add up (the worst a forger can do: the first group decoded is as large as the words allow).
A forged file's decode is stopped after ``--cap`` seconds or twice its bound, whichever is
longer (an unbounded decoder would run for ever).

It prints, for each file and field, the values tried, their outcomes and the worst time,
against the target: refused or decoded within twice the valid file's time plus one second.
Exit status 1 if a case misses it or a forged file decodes to other images than written.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from mnist_vae import cli
from mnist_vae.compression import lossless
from mnist_vae.compression.container import HEADER_BYTES, LOSSLESS, Header
from mnist_vae.compression.lossless import BitsBackCodec, coding_groups
from mnist_vae.compression.lossy import LossyCodec
from mnist_vae.data import load_test_images, to_symbols
from mnist_vae.errors import CodecError

DATA = Path("data/mnist")
U16, U32 = 2**16 - 1, 2**32 - 1


class Stopped(BaseException):
    """The cap ran out (a BaseException: no decoder's ``except Exception`` swallows it)."""


def _stop(signum, frame):
    raise Stopped


def fields(header: Header) -> dict[str, list[int]]:
    """Each field's forged values: the extremes and wrong values close to the truth."""
    n, batch = header.count, header.batch
    return {
        "count": sorted({1, max(1, n - 1), n + 1, 2 * n, 10 * n, 10**9, U32} - {n}),
        "group size": sorted({1, max(1, batch - 1), batch + 1, 100, 500, 1000, U16} - {batch}),
        "height": [1, 27, 29, 56, U16],
        "width": [1, 27, 29, 56, U16],
        "values per pixel": sorted({2, 255, 257, U16} - {header.levels}),
        "latent bits": sorted({0, 7, 9, 16, 255} - {header.latent_bits}),
        "mode": sorted({0, 1, 2, 3, 255} - {header.mode}),
    }


def forged(data: bytes, field: str, value: int) -> bytes:
    header, _ = Header.unpack(data)
    name = {
        "count": "count", "group size": "batch", "height": "height", "width": "width",
        "values per pixel": "levels", "latent bits": "latent_bits", "mode": "mode",
    }[field]  # fmt: skip
    return replace(header, **{name: value}).pack() + data[HEADER_BYTES:]


def with_table(data: bytes, codec: BitsBackCodec, count: int) -> bytes | None:
    """A lossless file claiming ``count`` images whose group table adds up to its words,
    every group at its floor but the last written (the first decoded), which takes the rest;
    None where the words cannot hold ``count`` images (refused from the header alone)."""
    header, words = Header.unpack(data)
    old = list(coding_groups(header.count, codec.batch))
    stack = words[len(old) :]
    new = list(coding_groups(count, codec.batch))
    sizes = np.array([(g.stop - g.start) * codec.min_words for g in new], np.int64)
    spare = len(stack) - len(codec._startup_words()) - sizes.sum()
    if spare < 0:
        return None
    sizes[-1] += spare
    body = np.concatenate([sizes.astype(np.uint32), stack]).astype("<u4").tobytes()
    return replace(header, count=count).pack() + body


def decode(folder: Path, data: bytes, cap: float | None) -> tuple[str, float, np.ndarray | None]:
    """``mnist-vae decompress`` of ``data``, stopped after ``cap`` seconds (None: never):
    (outcome, seconds, the images written)."""
    with tempfile.TemporaryDirectory() as scratch:
        stream, out = Path(scratch) / "forged.mvae", Path(scratch) / "out"
        stream.write_bytes(data)
        signal.setitimer(signal.ITIMER_REAL, cap or 0)
        start = time.perf_counter()
        try:
            cli.decompress(stream, out, str(folder), force=True)
            outcome = "decoded"
        except CodecError:
            outcome = "refused"
        except Stopped:
            outcome = "stopped"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        seconds = time.perf_counter() - start
        images = None
        if outcome == "decoded":
            images = np.stack([np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))])
        return outcome, seconds, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="data/model", type=Path, help="a model folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 500])
    parser.add_argument(
        "--cap", type=float, default=60.0, help="seconds before a decode is stopped"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _stop)

    codec = BitsBackCodec.from_folder(args.model)
    lossy = LossyCodec.from_folder(args.model)
    grey, _ = load_test_images(DATA, max(args.sizes), "none")
    digits = to_symbols(grey, codec.levels).numpy()
    bounded = hasattr(lossless, "min_words")
    table = "with" if bounded else "without"
    print(f"model {args.model} ({codec.model.config.decoder} decoder), lossless format {table} "
          f"the group table; a forged file's decode stopped after {args.cap:.0f} s or twice its "
          "bound; target: refused or decoded within 2 x valid + 1 s", flush=True)  # fmt: skip

    misses, worst_ratio = 0, 0.0
    writers: dict[str, Callable[[np.ndarray], bytes]] = {
        "lossless": codec.compress, "lossy": lossy.compress,
    }  # fmt: skip
    for kind, write in writers.items():
        for n in args.sizes:
            data = write(digits[:n])
            valid = min(decode(args.model, data, None)[1] for _ in range(2))
            expected = decode(args.model, data, None)[2]
            bound = 2 * valid + 1
            cap = max(args.cap, 2 * bound)
            print(f"\n{kind}, {n} images, {len(data):,} bytes: valid decode {valid:.2f} s, "
                  f"bound {bound:.2f} s", flush=True)  # fmt: skip
            print(f"  {'field':22s} {'values':>6s}  {'refused':>7s} {'decoded':>7s} "
                  f"{'stopped':>7s}  {'worst s':>8s}  worst at")  # fmt: skip
            cases = {
                f: [(v, forged(data, f, v)) for v in vs]
                for f, vs in fields(Header.unpack(data)[0]).items()
            }
            if kind == "lossless" and bounded and Header.unpack(data)[0].mode == LOSSLESS:
                words = Header.unpack(data)[1]
                stack = len(words) - len(list(coding_groups(n, codec.batch)))
                most = (stack - len(codec._startup_words())) // codec.min_words  # the words hold
                tried = sorted({n + 1, 2 * n, most} - {n})
                cases["count, table rewritten"] = [
                    (v, f) for v in tried if (f := with_table(data, codec, v)) is not None
                ]
            for field, forgeries in cases.items():
                tally = {"refused": 0, "decoded": 0, "stopped": 0}
                worst, worst_value = 0.0, None
                for value, forgery in forgeries:
                    outcome, seconds, images = decode(args.model, forgery, cap)
                    tally[outcome] += 1
                    if outcome == "decoded" and not np.array_equal(images, expected):
                        outcome = "decoded wrong"
                        misses += 1
                        print(f"  ! {field} = {value}: decoded to other images", flush=True)
                    if seconds > worst:
                        worst, worst_value = seconds, value
                    if outcome == "stopped" or seconds > bound:
                        misses += 1
                    worst_ratio = max(worst_ratio, seconds / bound)
                flag = "" if worst <= bound and not tally["stopped"] else "   <- over the bound"
                print(f"  {field:22s} {len(forgeries):6d}  {tally['refused']:7d} "
                      f"{tally['decoded']:7d} {tally['stopped']:7d}  {worst:8.2f}  "
                      f"{worst_value}{flag}", flush=True)  # fmt: skip
    print(
        f"\nworst case: {worst_ratio:.2f} of its bound; "
        f"{'every case within it' if not misses else f'{misses} cases missed it'}"
    )
    raise SystemExit(1 if misses else 0)


if __name__ == "__main__":
    main()
