"""The container both codecs write: one header, then the coder's words.

A lossless file (``lossless``) and a lossy one (``lossy``) share this layout and
differ in the mode byte, so one reader tells them apart, refuses a file written with another
model (the weights' sha256) or by an unknown version, and finds damage before decoding.

The file format (all integers little-endian):

| offset | size | field |
| --- | --- | --- |
| 0 | 4 | magic ``MVAE`` |
| 4 | 1 | format version (5; see ``READABLE`` for the older ones still read) |
| 5 | 1 | mode (0: lossless bits-back; 1, 2: lossy, see ``lossy``; 3: near-lossless) |
| 6 | 32 | sha256 of the model's weights file |
| 38 | 4 | number of images |
| 42 | 2, 2 | image height, width |
| 46 | 2 | values per pixel (256: 8-bit grey; 2: binary) |
| 48 | 2 | images per coding group (the largest; lossless: the model's, see ``lossless``) |
| 50 | 1 | latent grid: ``LATENT_BITS`` (lossy: the rate level) |
| 51 | 8 | first 8 bytes of the sha256 of the pixels (near-lossless: decoded; lossy: the codes) |
| 59 | 4 x n | the words (``uint32``) to the end of the file |

A lossless file's words start with one per coding group, the words that group adds to the
ANS stack, then the stack itself; a near-lossless file's with one more before those, its
largest error k (1..127); a lossy file's are the stack alone. All bound a decoder's work by
the file's size (``lossless``, ``lossy``).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CodecError
from ..model.folder import WEIGHTS_FILE

MAGIC = b"MVAE"
VERSION = 5
"""1: probabilities from the floating-point network (decoded only where written); 2: from
integer arithmetic (``fixed_point``), the same on every platform; 3: also written by
autoregressive models (the pixels position by position); 4: a lossless file carries the
words of each coding group and a floor on each image's words, which bound the work of
decoding it by its size; 5: lossless pixels and latents are coded in stages (a pixel's bin
of 16 values, then its value; a latent's bucket of 16 grid points, then its point) and
pass by pass. A lossy file of version 2 to 4 is laid out as version 5 and already bounded,
so it is read too; a lossless one is not (``REFUSED``)."""
LOSSLESS = 0
LOSSY_MIXTURE = 1  # the quantized code under the fitted mixture's marginals (lossy.py)
LOSSY_PRIOR = 2  # the quantized code under the prior N(0, I)
NEAR_LOSSLESS = 3  # bits-back, each pixel's bin of 2k + 1 levels (near_lossless)
MODES = {
    LOSSLESS: "lossless",
    LOSSY_MIXTURE: "lossy",
    LOSSY_PRIOR: "lossy (prior)",
    NEAR_LOSSLESS: "near-lossless",
}
READABLE = {
    LOSSLESS: (5,),
    LOSSY_MIXTURE: (2, 3, 4, 5),
    LOSSY_PRIOR: (2, 3, 4, 5),
    NEAR_LOSSLESS: (5,),
}
"""the versions of each mode this release decodes"""
_UNBOUNDED = "a lossless file without a bound on its decoding work"
REFUSED = {
    1: ("before portable decoding", "0.1"),
    2: (_UNBOUNDED, "0.2"),
    3: (_UNBOUNDED, "0.2"),
    4: ("a lossless file coded one 256-value table per pixel", "0.3"),
}
"""for each older version this release refuses: why, and the last release that reads it"""
LATENT_RANGE = 8  # the grid covers +-8 prior standard deviations
BATCH = 100  # images per coding group (and network pass)
_HEADER = struct.Struct("<4sBB32sIHHHHB8s")
HEADER_BYTES = _HEADER.size


@dataclass(frozen=True)
class Header:
    model_sha256: bytes
    count: int
    height: int
    width: int
    levels: int
    batch: int
    latent_bits: int
    checksum: bytes
    """the first 8 bytes of the sha256 of the original pixels (uint8, in order); of the
    quantized codes (int32) for a lossy file"""
    mode: int = LOSSLESS

    def check_model(self, model_sha256: bytes) -> None:
        """A CodecError unless the file was written with the model of ``model_sha256``."""
        check_model(self.model_sha256, model_sha256)

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC, VERSION, self.mode, self.model_sha256, self.count, self.height, self.width,
            self.levels, self.batch, self.latent_bits, self.checksum,
        )  # fmt: skip

    @classmethod
    def unpack(cls, data: bytes) -> tuple[Header, np.ndarray]:
        """The header and the coder words of a compressed file; CodecError when it is none."""
        if len(data) < HEADER_BYTES or data[:4] != MAGIC:
            raise CodecError("not an mnist-vae compressed file (no MVAE header)")
        _, version, mode, model, count, h, w, levels, batch, bits, pixels = _HEADER.unpack(
            data[:HEADER_BYTES]
        )
        if mode not in MODES:
            raise CodecError(f"unknown coding mode {mode} (damaged file?)")
        if version not in READABLE[mode]:
            raise CodecError(unreadable(version, mode))
        body = data[HEADER_BYTES:]
        if len(body) % 4 or not body:
            raise CodecError("the file is truncated: its coder words are incomplete")
        if min(count, h, w, batch) < 1 or levels < 2:
            raise CodecError("the header is damaged: a size is zero")
        words = np.frombuffer(body, dtype="<u4").astype(np.uint32)
        return cls(model, count, h, w, levels, batch, bits, pixels, mode), words


def unreadable(version: int, mode: int) -> str:
    """One line on why a file of ``version`` in ``mode`` is refused, naming what reads it."""
    reads = f"this mnist-vae reads {MODES[mode]} version {' and '.join(map(str, READABLE[mode]))}"
    if version not in REFUSED:
        return f"format version {version}; {reads}"
    why, release = REFUSED[version]
    return f"format version {version} ({why}: read it with mnist-vae {release}); {reads}"


def check_model(written_with: bytes, model_sha256: bytes) -> None:
    """A CodecError unless ``written_with`` (a prefix of a weights sha256, as long as the
    format keeps) is the start of ``model_sha256``."""
    if not model_sha256.startswith(written_with):
        raise CodecError(
            f"the stream was compressed with another model (weights sha256 {written_with.hex()}"
            f"...; this one is {model_sha256.hex()[:12]}...): decompress it with that model"
        )


def weights_sha256(folder: str | Path) -> bytes:
    """The sha256 of a model folder's weights file: what a stream names its model by."""
    return hashlib.sha256((Path(folder) / WEIGHTS_FILE).read_bytes()).digest()


def pixels_digest(images: np.ndarray) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes()).digest()[:8]
