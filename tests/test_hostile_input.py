"""Hostile input. Bytes, property-based: a damaged or forged file given to either decoder is refused
with one line (``CodecError``; HTTP 400 from the served model) or decodes to the very images
written, never another exception, never a wait beyond a bound: through the Python API, the
command line and the served model's ``decompress`` mode (whose one-digit streams carry no
checksum: a damaged one is refused or decodes to some digit, the others to theirs).

Hypothesis draws the damage: a bit flipped anywhere (header included), a truncation, bytes
appended, or the coder words replaced by random ones under the valid header. Pictures given
to ``compress`` that are not 28 x 28 8-bit grey are refused from their header, one line each.
"""

from __future__ import annotations

import base64
import gzip
import struct
import time
import tracemalloc
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from PIL import Image

from mnist_vae.cli import main
from mnist_vae.compression.container import HEADER_BYTES, Header
from mnist_vae.compression.lossless import BitsBackCodec
from mnist_vae.compression.lossy import LossyCodec
from mnist_vae.compression.near_lossless import Bins
from mnist_vae.data import to_float
from mnist_vae.errors import CodecError
from mnist_vae.model.vae import VAEConfig, save_model
from mnist_vae.params import ModelParams, Params, TrainParams
from mnist_vae.tracking.serving import VAEPyfunc
from mnist_vae.training.loop import fit, seeded_model

DIGITS = 3
# A damaged file costs at most one coding group of garbage before a check fails, of at most
# as many images as its words can hold (lossless.min_words): here well under a second for
# the factorized models, a few for the autoregressive one; room for a loaded machine.
SECONDS = 30
DAMAGE = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("words"), st.binary(min_size=0, max_size=512)),
)
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def damaged(data: bytes, damage: tuple) -> bytes:
    kind, *args = damage
    if kind == "flip":
        position, bit = args
        out = bytearray(data)
        out[position % len(out)] ^= 1 << bit
        return bytes(out)
    if kind == "truncate":
        return data[: args[0] % len(data)]
    if kind == "append":
        return data + args[0]
    return data[:HEADER_BYTES] + args[0]  # random words under the valid header


@pytest.fixture(scope="module")
def digits(mnist_mirror) -> np.ndarray:
    raw = gzip.decompress((mnist_mirror / "t10k-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:DIGITS].copy()


def _folder(tmp_path_factory, decoder: str):
    """A model folder: ``factorized``, ``autoregressive`` (the raster head) or an
    autoregressive head with a pass schedule (``passes-8``)."""
    folder = tmp_path_factory.mktemp(decoder)
    schedule = decoder if decoder.startswith("passes") else "raster"
    config = VAEConfig(
        latent_dim=4,
        likelihood="logistic_mixture",
        decoder="factorized" if decoder == "factorized" else "autoregressive",
        pass_schedule=schedule,
    )
    save_model(seeded_model(config, 0), folder)
    return folder


@pytest.fixture(
    scope="module",
    params=[
        ("factorized", 0),
        ("autoregressive", 0),
        ("passes-8", 0),
        ("factorized", 3),
        ("passes-8", 9),
    ],
    ids=lambda p: p[0] if p[1] == 0 else f"{p[0]}-near-lossless-{p[1]}",
)
def lossless(request, tmp_path_factory, digits):
    """(codec, file, the images in it, the model folder) for a lossless file of each decoder
    and head, and near-lossless files (every pixel within k: the images in it are the bins'
    centres)."""
    decoder, k = request.param
    folder = _folder(tmp_path_factory, decoder)
    codec = BitsBackCodec.from_folder(folder)
    return codec, codec.compress(digits, max_error=k), Bins(k).quantize(digits), folder


@pytest.fixture(scope="module")
def factorized(tmp_path_factory):
    return _folder(tmp_path_factory, "factorized")


@pytest.fixture(scope="module")
def lossy(factorized, digits):
    codec = LossyCodec.from_folder(factorized)
    data = codec.compress(digits)
    return codec, data, codec.decompress(data)


@pytest.fixture(scope="module")
def served(factorized, digits):
    """(the pyfunc model, its one-digit streams, the pictures they decode to)."""
    model = VAEPyfunc().load_folder(factorized)
    streams = model.predict(None, digits.astype(np.float32) / 255, {"mode": "compress"})
    return model, list(streams), model.predict(None, np.array(streams), {"mode": "decompress"})


def _refused_or_exact(decompress, data: bytes, expected: np.ndarray) -> str:
    """Decode ``data``: a one-line CodecError or the expected images, within the bound."""
    start = time.monotonic()
    try:
        images = decompress(data)
    except CodecError as error:
        outcome = "refused"
        assert str(error) and "\n" not in str(error), repr(error)
    else:
        outcome = "exact"
        assert np.array_equal(images, expected)
    assert time.monotonic() - start < SECONDS
    return outcome


@FUZZ
@given(damage=DAMAGE)
def test_a_damaged_lossless_file_is_refused_or_exact(lossless, damage):
    codec, data, digits, _ = lossless
    _refused_or_exact(codec.decompress, damaged(data, damage), digits)


@FUZZ
@given(damage=DAMAGE, which=st.integers(0, DIGITS - 1))
def test_the_served_decompress_mode_answers_400_or_pictures(served, damage, which):
    model, streams, pictures = served
    streams = list(streams)
    streams[which] = base64.b64encode(damaged(base64.b64decode(streams[which]), damage)).decode()
    start = time.monotonic()
    try:
        decoded = model.predict(None, np.array(streams), {"mode": "decompress"})
    except MlflowException as error:
        assert error.get_http_status_code() == 400 and "\n" not in error.message, error.message
    else:  # a one-digit stream is its code alone (about 4 bytes, no checksum): any code that
        # parses is some digit's, so it decodes to a picture; the other streams' are unchanged
        assert decoded.shape == pictures.shape and 0 <= decoded.min() <= decoded.max() <= 1
        others = [i for i in range(DIGITS) if i != which]
        assert np.array_equal(decoded[others], pictures[others])
    assert time.monotonic() - start < SECONDS


@FUZZ
@given(damage=DAMAGE)
def test_a_damaged_lossy_file_is_refused_or_exact(lossy, damage):
    codec, data, pictures = lossy
    _refused_or_exact(codec.decompress, damaged(data, damage), pictures)


@settings(FUZZ, max_examples=15)  # capsys is read (and so emptied) at every example
@given(damage=DAMAGE)
def test_the_command_line_refuses_a_damaged_file_with_one_line(
    lossless, damage, tmp_path_factory, capsys
):
    _, data, _, folder = lossless
    work = tmp_path_factory.mktemp("cli")
    stream = work / "damaged.mvae"
    stream.write_bytes(damaged(data, damage))
    code = main(["decompress", str(stream), "-o", str(work / "out"), "--model", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    if code == 0:
        assert len(list((work / "out").glob("*.png"))) == DIGITS
    else:
        assert code == 1 and len(err) == 1 and "error: " in err[0], err
        assert not (work / "out").exists()  # nothing half-written where a reader looks


@pytest.fixture(scope="module", params=["factorized", "autoregressive"])
def trained(request, tmp_path_factory, digits):
    """A small model of each decoder trained for a moment (the posterior then fits the digits,
    so bits-back refills the stack as on a real model), and its lossless file of 5 digits."""
    decoder = request.param
    config = VAEConfig(latent_dim=4, likelihood="logistic_mixture", decoder=decoder)
    model = seeded_model(config, 0)
    images = to_float(torch.from_numpy(np.tile(digits, (20, 1, 1))))
    train = TrainParams(epochs=1, batch_size=20, device="cpu", lossy_decoder_epochs=0)
    params = Params(latent_dim=4, model=ModelParams(decoder=decoder), train=train)
    fit(model, images, images[:DIGITS], params, progress=False)
    folder = tmp_path_factory.mktemp(f"trained-{decoder}")
    save_model(model, folder)
    codec = BitsBackCodec.from_folder(folder)
    five = np.concatenate([digits, digits[:2]])
    return codec, codec.compress(five), five, codec.compress(five, max_error=5)


def _claiming(data: bytes, count: int | None = None, batch: int | None = None) -> bytes:
    header, _ = Header.unpack(data)
    return (
        replace(header, count=count or header.count, batch=batch or header.batch).pack()
        + (data[HEADER_BYTES:])
    )


def test_a_header_claiming_a_billion_images_is_refused_at_once(trained):
    """The words a file holds bound the images it may claim (at least min_words each): 10^9
    images in a 5-digit file is refused before decoding, on either decoder."""
    codec, data, _, near_lossless = trained
    for file in (data, near_lossless):
        start = time.monotonic()
        with pytest.raises(CodecError, match=r"claims 1,000,000,000 images, more than the file"):
            codec.decompress(_claiming(file, count=10**9))
        assert time.monotonic() - start < 0.1


@pytest.mark.parametrize("count", [1, 4, 6, 7, 10, 40])
def test_a_plausible_wrong_count_is_refused_within_a_group(trained, count):
    """A count the words could hold: the groups' sizes do not add up to the file, or the
    first group decoded does not end where the file says; never the images of another count."""
    codec, data, _, near_lossless = trained
    for file in (data, near_lossless):
        with pytest.raises(CodecError, match="damaged") as refusal:
            codec.decompress(_claiming(file, count=count))
        assert "\n" not in str(refusal.value)


def test_other_coding_groups_than_the_models_are_refused_before_decoding(lossless):
    """A group is decoded whole before its words can be checked, and an autoregressive group
    costs 784 steps however few its images: a file's groups are its model's size, no other."""
    codec, data, _, _ = lossless
    for batch in (1, codec.batch - 1, codec.batch + 1, 65_535):
        with pytest.raises(CodecError, match=f"groups of {batch:,} images"):
            codec.decompress(_claiming(data, batch=batch))


def _png(width: int, height: int, rows: bytes) -> bytes:
    """A grey 8-bit PNG of ``width x height`` whose every row is ``rows`` (compressed as it
    goes: a huge picture costs little memory to write)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(b"\0" + rows) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def test_compress_refuses_every_other_picture_with_one_line_before_decoding_it(
    factorized, digits, tmp_path, capsys
):
    """16-bit, palette, RGBA, 1 x 1, 10,000 x 10,000 (refused from its header: its 100 MB
    of pixels are never decoded, the command asks no more memory than for one digit), a
    truncated PNG, a file that is not an image. (Memory is traced for the large picture
    only: under tracemalloc each command takes 1.4 to 2.8 s instead of 0.1 to 0.3.)"""
    digit = tmp_path / "digit.png"
    Image.fromarray(digits[0]).save(digit)
    Image.fromarray(digits[0].astype(np.uint16) * 257).save(tmp_path / "16-bit.png")
    Image.new("P", (28, 28)).save(tmp_path / "palette.png")
    Image.new("RGBA", (28, 28)).save(tmp_path / "rgba.png")
    Image.new("L", (1, 1)).save(tmp_path / "one-pixel.png")
    (tmp_path / "huge.png").write_bytes(_png(10_000, 10_000, bytes(10_000)))
    (tmp_path / "truncated.png").write_bytes(digit.read_bytes()[:-40])
    (tmp_path / "text.png").write_text("not a picture")
    expected = {
        "16-bit.png": "found I;16 28 x 28", "palette.png": "found P 28 x 28",
        "rgba.png": "found RGBA 28 x 28", "one-pixel.png": "found L 1 x 1",
        "huge.png": "found L 10000 x 10000", "truncated.png": "cannot be read as an image",
        "text.png": "cannot be read as an image",
    }  # fmt: skip
    warm = ["compress", str(digit), "-o", str(tmp_path / "digit.mvae"), "--model", str(factorized)]
    assert main(warm) == 0  # imports and first allocations: not the pictures' cost
    tracemalloc.start()
    assert main([*warm, "--force"]) == 0
    one_digit = tracemalloc.get_traced_memory()[1]  # the codec's tables, mostly
    tracemalloc.stop()
    capsys.readouterr()
    for name, message in expected.items():
        out = tmp_path / "out.mvae"
        traced = name == "huge.png"
        if traced:
            tracemalloc.start()
        code = main(["compress", str(digit), str(tmp_path / name), "-o", str(out),
                     "--model", str(factorized)])  # fmt: skip
        if traced:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < one_digit + 2**20, f"{peak:,} bytes at most, {one_digit:,} for a digit"
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and message in err[0], (name, err)
        assert not out.exists()
