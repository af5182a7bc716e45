"""``mnist-vae``: compress digits with a trained model, and get them back.

    mnist-vae compress digits/*.png -o digits.mvae [--model data/model] [--force]
    mnist-vae compress digits/*.png -o digits.mvae --max-error 4
    mnist-vae compress digits/*.png -o digits.mvae --lossy [--rate 6]
    mnist-vae decompress digits.mvae -o out/ [--model models:/mnist-vae@champion] [--force]

Lossless by default (bits-back ANS: every pixel back). ``--max-error K`` (1..127) is
near-lossless: every pixel back within K grey levels, guaranteed. ``--lossy`` keeps only
the quantized code (a few bytes per digit; ``--rate`` 0..12, finer and larger as it grows) and
``decompress`` gives the model's picture of each digit. ``decompress`` reads the mode from
the file, and also takes a one-image stream as the served model's ``compress`` returns it.

``--model`` is a model folder (``config.json`` and ``model.pt``, e.g. ``data/model``) or an
MLflow model URI (``models:/mnist-vae@champion``, ``models:/mnist-vae/3``, ``runs:/<id>/model``)
read from the tracking store the pipeline uses. Images are 28 x 28 grey PNGs (or any format
Pillow reads), sent in the order given; ``decompress`` writes ``00000.png``, ``00001.png``,
... in that order. For a model trained on binarized digits every pixel must be 0 or 255.

Bad input gets one line on stderr and exit status 1, and nothing half-written: outputs
are written beside their destination and renamed into place when complete. Where stderr is
a terminal, each long step shows a bar there; in a pipe or a log, nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from . import files
from .compression.near_lossless import MAX_ERROR
from .errors import USER_ERRORS, CodecError
from .params import MAX_RATE, LossyParams
from .progress import progress_bar

DEFAULT_MODEL = "data/model"
MLFLOW_SCHEMES = ("models:/", "runs:/")


def resolve_model(spec: str, scratch: Path) -> Path:
    """A model folder from a path or an MLflow model URI (downloaded into ``scratch``)."""
    if not spec.startswith(MLFLOW_SCHEMES):
        return Path(spec)
    import mlflow
    from mlflow.exceptions import MlflowException

    from .tracking import runs
    from .tracking.pyfunc import MODEL_ARTIFACT_KEY

    mlflow.set_tracking_uri(runs.tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=str(scratch)))
        artifacts = mlflow.models.Model.load(local).flavors["python_function"]["artifacts"]
        return local / artifacts[MODEL_ARTIFACT_KEY]["path"]
    except (MlflowException, OSError, KeyError) as error:
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CodecError(f"cannot load the model {spec}: {message}") from None


def read_image(path: Path, levels: int, shape: tuple[int, int]) -> np.ndarray:
    """One grey image as the codec's symbols (0..255, or 0/1 for a binary model)."""
    height, width = shape
    try:
        with Image.open(path) as image:  # reads the header only: mode and size come first
            mode, size = image.mode, image.size
            if mode not in ("L", "1") or size != (width, height):
                raise CodecError(
                    f"{path}: expected a {width} x {height} grey image; "
                    f"found {mode} {size[0]} x {size[1]}"
                )
            pixels = np.asarray(image)  # the pixels of a 28 x 28 picture only
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise CodecError(f"{path}: cannot be read as an image ({type(error).__name__})") from None
    pixels = pixels.astype(np.uint8) * (255 if mode == "1" else 1)
    if levels == 2:
        if not np.isin(pixels, (0, 255)).all():
            raise CodecError(
                f"{path}: the model codes binary digits; pixels must be 0 or 255 "
                f"(found {len(np.unique(pixels))} grey levels)"
            )
        pixels = pixels // 255
    return pixels


def _refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise CodecError(f"{path} exists; pass --force to replace it")


def _bar(what: str, total: int, iterable: Iterable | None = None) -> tqdm:
    """A bar over ``total`` images on stderr where it is a terminal; nothing in a pipe or a
    log. Iterate it (over ``iterable``) or ``update`` it."""
    return progress_bar(sys.stderr.isatty(), total=total, iterable=iterable, desc=what,
                        unit=" images")  # fmt: skip


def compress(
    inputs: list[Path],
    output: Path,
    model: str,
    force: bool,
    rate: int | None = None,
    max_error: int = 0,
) -> str:
    """Lossless; near-lossless within ``max_error`` grey levels; or lossy at ``rate`` when
    one is given."""
    from .compression.lossless import BitsBackCodec
    from .compression.lossy import LossyCodec
    from .compression.near_lossless import Bins

    _refuse_existing(output, force)
    with tempfile.TemporaryDirectory() as scratch:
        folder = resolve_model(model, Path(scratch))
        codec = (
            BitsBackCodec.from_folder(folder) if rate is None else LossyCodec.from_folder(folder)
        )
        levels = codec.levels if rate is None else 256
        shape = codec.model.image_shape[1:]
        with _bar("reading", len(inputs), inputs) as paths:
            images = np.stack([read_image(path, levels, shape) for path in paths])
        if rate is None:
            with _bar("compressing", len(images)) as bar:
                data = codec.compress(images, progress=bar.update, max_error=max_error)
        else:  # a few milliseconds per thousand digits
            data = codec.compress(images, rate=rate)
    files.write_bytes(output, data)
    bits = 8 * len(data) / images.size
    mode = f"lossy, rate {rate}" if rate is not None else "lossless"
    if max_error:
        largest = int(np.abs(images.astype(np.int16) - Bins(max_error).quantize(images)).max())
        mode = f"near-lossless, every pixel within {max_error} (largest error {largest})"
    return (
        f"{len(images)} images -> {output} ({len(data):,} bytes, {bits:.3f} bits per pixel, "
        f"{len(data) / len(images):.1f} bytes per image; {mode})"
    )


def decompress(stream: Path, output: Path, model: str, force: bool) -> str:
    from .compression.container import LOSSLESS, MODES, NEAR_LOSSLESS, Header
    from .compression.lossless import BitsBackCodec
    from .compression.lossy import LossyCodec, is_image_stream

    _refuse_existing(output, force)
    try:
        data = stream.read_bytes()
    except OSError as error:
        raise CodecError(f"{stream}: cannot be read ({error.strerror or error})") from None
    with tempfile.TemporaryDirectory() as scratch:
        folder = resolve_model(model, Path(scratch))
        if is_image_stream(data):
            images, scale = LossyCodec.from_folder(folder).decompress_each([data]), 1
        elif (header := Header.unpack(data)[0]).mode not in (LOSSLESS, NEAR_LOSSLESS):
            images, scale = LossyCodec.from_folder(folder).decompress(data), 1
        else:
            codec = BitsBackCodec.from_folder(folder)
            with _bar("decompressing", header.count) as bar:
                images = codec.decompress(data, progress=bar.update)
            scale = 255 if codec.levels == 2 else 1
    with files.replaced_folder(output) as staging, _bar("writing", len(images), images) as bar:
        for i, image in enumerate(bar):
            Image.fromarray(image * np.uint8(scale)).save(staging / f"{i:05d}.png")
    mode = "lossy" if is_image_stream(data) else MODES[header.mode]
    return f"{stream} -> {len(images)} images in {output}/ ({mode})"


def parse_max_error(text: str) -> int:
    """``--max-error``'s value, 1..127; a one-line CodecError for anything else."""
    from .compression.near_lossless import check_max_error

    try:
        value = int(text)
    except ValueError:
        raise CodecError(f"--max-error must be an integer 1..{MAX_ERROR}; got {text!r}") from None
    return check_max_error(value, lossless_allowed=False)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="mnist-vae", description="Compression of digits with a trained VAE."
    )
    commands = main.add_subparsers(dest="command", required=True)
    for name, what, output in (
        ("compress", "images into one compressed file", "the compressed file"),
        ("decompress", "a compressed file into PNGs", "the folder for the images"),
    ):
        command = commands.add_parser(name, help=f"{name} {what}")
        if name == "compress":
            command.add_argument("inputs", nargs="+", type=Path, help="28 x 28 grey images")
        else:
            command.add_argument("stream", type=Path, help="a file written by compress")
        command.add_argument("-o", "--output", type=Path, required=True, help=output)
        command.add_argument(
            "--model", default=DEFAULT_MODEL,
            help=f"a model folder or an MLflow model URI (default {DEFAULT_MODEL})",
        )  # fmt: skip
        command.add_argument("--force", action="store_true", help="replace an existing output")
        if name == "compress":
            command.add_argument(
                "--max-error", metavar="K",
                help=f"near-lossless: every pixel back within K grey levels (1..{MAX_ERROR}), "
                "guaranteed",
            )  # fmt: skip
            command.add_argument(
                "--lossy", action="store_true",
                help="keep only the quantized code, a few bytes a digit (the model's picture)",
            )  # fmt: skip
            command.add_argument(
                "--rate", type=int, choices=range(MAX_RATE + 1), metavar=f"0..{MAX_RATE}",
                help=f"with --lossy: the rate level (default {LossyParams().rate}); each level "
                "up halves the grid step of the code",
            )  # fmt: skip
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "compress":
            if args.rate is not None and not args.lossy:
                parser().error("--rate needs --lossy (lossless coding has no rate to choose)")
            if args.max_error is not None and args.lossy:
                parser().error("--max-error and --lossy are two modes: choose one")
            rate = (LossyParams().rate if args.rate is None else args.rate) if args.lossy else None
            max_error = 0 if args.max_error is None else parse_max_error(args.max_error)
            print(compress(args.inputs, args.output, args.model, args.force, rate, max_error))
        else:
            print(decompress(args.stream, args.output, args.model, args.force))
    except USER_ERRORS as error:
        print(f"mnist-vae {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
