"""The served model: an MLflow pyfunc over a VAE model folder, logged as models-from-code.

Nothing is cloudpickled. The model is the code in ``serving_model.py`` (which builds a
``VAEPyfunc``) plus this package, shipped with it through ``code_paths``, plus the
model folder (``config.json`` and ``model.pt``) as an artifact, read back with
``torch.load(..., weights_only=True)``. So ``mlflow models serve`` and
``mlflow.pyfunc.load_model`` work without the repository checked out.

A request picks what to do with MLflow's ``params``:

| ``mode`` | ``inputs`` | ``predictions`` |
| --- | --- | --- |
| decode | latent vectors, ``n x latent_dim`` | images ``n x 28 x 28`` in [0, 1] |
| encode | images ``n x 28 x 28`` in [0, 1] | ``{"mean": n x d, "logvar": n x d}`` |
| reconstruct | images ``n x 28 x 28`` in [0, 1] | images ``n x 28 x 28`` in [0, 1] |
| sample | ignored (send ``[]``); params ``n``, ``seed`` | images ``n x 28 x 28`` in [0, 1] |
| compress | images ``n x 28 x 28`` in [0, 1]; ``rate`` or ``max_error`` | ``n`` base64 streams |
| decompress | ``n`` base64 strings from ``compress`` | images ``n x 28 x 28`` in [0, 1] |

``compress`` rounds the pixels to 8 bits first and writes each image's lossy stream
(``compression.lossy``: a few bytes); with ``max_error`` k from 1 to 127, each image's
near-lossless file instead (``compression.near_lossless``: every pixel back within k grey
levels; about 100 bytes of a one-image file's header and start-up words on top of the
pixels' bytes). A stream decodes with the same model only (``mnist-vae decompress`` takes
one saved to a file, too).

Images may also come flat (``n x 784``) or with a channel axis (``n x 1 x 28 x 28``).
A request that breaks these rules raises an ``mlflow.exceptions.MlflowException``
with ``INVALID_PARAMETER_VALUE``, which the scoring server answers with HTTP 400 and the
message, and goes on serving.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import threading
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException

from ..compression.container import MAGIC, weights_sha256
from ..compression.lossless import BitsBackCodec
from ..compression.lossy import DEFAULT_RATE, LossyCodec
from ..compression.near_lossless import check_max_error
from ..errors import CodecError
from ..model.vae import ConvVAE, load_model
from .pyfunc import MODEL_ARTIFACT_KEY
from .serving_worker import (
    PictureProcesses,
    draw,
    picture_processes,
    served_by_mlflow,
    widen_request_threads,
)

MODES = ("decode", "encode", "reconstruct", "sample", "compress", "decompress")
MAX_ROWS = 1024
"""The most latent vectors, images or samples one request may ask for."""


def bad_request(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)


def _as_array(model_input: Any) -> np.ndarray:
    try:
        array = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise bad_request(f"inputs must be a rectangular array of numbers ({error})") from None
    if array.size and not np.isfinite(array).all():
        raise bad_request("inputs contain NaN or infinite values; expected finite numbers")
    return array


def _integer(value: Any) -> Any:
    """A request param as an int where it is one (MLflow passes ``long`` params as int, JSON
    may bring ``4.0`` or ``"4"``); anything else as it came, for the error to name."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() else value


def _check_rows(n: int, what: str) -> None:
    if n < 1:
        raise bad_request(f"expected at least one {what}, got none")
    if n > MAX_ROWS:
        raise bad_request(f"{n} {what}s in one request; at most {MAX_ROWS} are allowed")


class VAEPyfunc(mlflow.pyfunc.PythonModel):
    """decode / encode / reconstruct / sample, chosen by the request's ``mode`` param."""

    # Inputs differ by mode, so no type hint can describe them: the model checks them itself,
    # and MLflow is told not to derive a schema from ``predict``'s (absent) type hints.
    _skip_type_hint_validation = True
    model: ConvVAE
    codec: LossyCodec

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        folder = context.artifacts[MODEL_ARTIFACT_KEY]
        self.load_folder(folder)
        if served_by_mlflow():  # see serving_worker: the request threads, the pictures
            widen_request_threads()
            processes = picture_processes()
            if processes and self.model.pixel_head is not None:
                self._picture_processes = PictureProcesses(folder, processes)

    def load_folder(self, folder: str | Path) -> VAEPyfunc:
        """Use the model folder directly (tests, and Python callers without MLflow)."""
        self.model = load_model(folder)
        self.codec = LossyCodec(self.model, weights_sha256(folder))
        # Without picture processes (outside a server, or MNIST_VAE_PICTURE_PROCESSES=0) the
        # autoregressive pictures take turns: a picture is a step per pass (784 for the raster
        # head) of a few torch calls each, so in threads side by side they fight over the GIL
        # between every call (raster, four 64-latent decodes in four threads: 2.0 s, against
        # 0.77 s one after another).
        # The codec modes do not wait for a turn.
        autoregressive = self.model.pixel_head is not None
        self._picture_turn = threading.Lock() if autoregressive else contextlib.nullcontext()
        self._picture_processes: PictureProcesses | None = None
        self._bits_back_codec: BitsBackCodec | None = None
        self._bits_back_built = threading.Lock()
        return self

    def _draw(
        self, mode: str, array: np.ndarray | None = None, n: int = 0, seed: int = 0
    ) -> np.ndarray:
        if self._picture_processes is not None:
            return self._picture_processes.draw(mode, array, n, seed)
        with self._picture_turn:
            return draw(self.model, mode, array, n, seed)

    def _bits_back(self) -> BitsBackCodec:
        """The near-lossless codec, built on first use (its integer network takes a while)."""
        with self._bits_back_built:
            if self._bits_back_codec is None:
                loss = self.model.config.likelihood
                self._bits_back_codec = BitsBackCodec(self.model, loss, self.codec.model_sha256)
            return self._bits_back_codec

    def _compress(self, model_input: Any, rate: int, max_error: Any) -> list[str]:
        x = self._images(model_input, "compress").squeeze(1)
        pixels = torch.round(x * 255).to(torch.uint8).numpy()
        try:
            if max_error in (None, 0):
                streams = self.codec.compress_each(pixels, rate)
            else:
                k = check_max_error(_integer(max_error), lossless_allowed=False)
                codec = self._bits_back()
                streams = [codec.compress(image[None], max_error=k) for image in pixels]
        except CodecError as error:
            raise bad_request(f"mode 'compress': {error}") from None
        return [base64.b64encode(stream).decode("ascii") for stream in streams]

    def _decompress(self, model_input: Any) -> np.ndarray:
        strings = np.asarray(model_input, dtype=object).reshape(-1) if np.size(model_input) else []
        _check_rows(len(strings), "stream")
        streams = []
        for i, text in enumerate(strings):
            try:
                streams.append(base64.b64decode(str(text), validate=True))
            except (binascii.Error, ValueError):
                raise bad_request(f"mode 'decompress': input {i} is not base64") from None
        try:
            images = self._decompress_streams(streams)
        except CodecError as error:
            raise bad_request(f"mode 'decompress': {error}") from None
        return images.astype(np.float32) / 255

    def _decompress_streams(self, streams: list[bytes]) -> np.ndarray:
        """Lossy one-image streams and near-lossless files, in the order given."""
        files = [i for i, data in enumerate(streams) if data[:4] == MAGIC]  # near-lossless
        lossy = sorted(set(range(len(streams))) - set(files))
        images = np.empty((len(streams), *self.model.image_shape[1:]), dtype=np.uint8)
        if lossy:
            images[lossy] = self.codec.decompress_each([streams[i] for i in lossy])
        for i in files:
            try:
                decoded = self._bits_back().decompress(streams[i])
            except CodecError as error:
                raise CodecError(f"stream {i}: {error}") from None
            if len(decoded) != 1:
                raise CodecError(f"stream {i} holds {len(decoded)} images; send one a stream")
            images[i] = decoded[0]
        return images

    @property
    def latent_dim(self) -> int:
        return self.model.config.latent_dim

    def _latents(self, model_input: Any) -> torch.Tensor:
        z = _as_array(model_input)
        expected = f"latent vectors of shape n x {self.latent_dim}"
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise bad_request(f"mode 'decode' expects {expected}; got shape {z.shape}")
        _check_rows(len(z), "latent vector")
        return torch.from_numpy(z)

    def _images(self, model_input: Any, mode: str) -> torch.Tensor:
        x = _as_array(model_input)
        c, h, w = self.model.image_shape
        if x.ndim == 2 and x.shape[1:] == (c * h * w,):
            x = x.reshape(-1, c, h, w)
        elif x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
            x = x[:, None]
        elif not (x.ndim == 4 and x.shape[1:] == (c, h, w)):
            raise bad_request(
                f"mode {mode!r} expects images of shape n x {h} x {w} (or n x {c * h * w}) "
                f"with values in [0, 1]; got shape {x.shape}"
            )
        _check_rows(len(x), "image")
        if x.min() < 0 or x.max() > 1:
            raise bad_request(
                f"mode {mode!r} expects pixel values in [0, 1]; got values from "
                f"{x.min():g} to {x.max():g}"
            )
        return torch.from_numpy(np.ascontiguousarray(x))

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: Any,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray | dict[str, np.ndarray] | list[str]:
        params = params or {}
        mode = params.get("mode", "decode")
        with torch.no_grad():
            if mode == "decode":
                return self._draw(mode, self._latents(model_input).numpy())
            if mode == "encode":
                mean, logvar = self.model.encode(self._images(model_input, mode))
                return {"mean": mean.numpy(), "logvar": logvar.numpy()}
            if mode == "reconstruct":
                return self._draw(mode, self._images(model_input, mode).numpy())
            if mode == "sample":
                n, seed = int(params.get("n", 16)), int(params.get("seed", 0))
                _check_rows(n, "sample")
                if seed < 0:
                    raise bad_request(f"seed must be >= 0; got {seed}")
                return self._draw(mode, n=n, seed=seed)
            if mode == "compress":
                rate = int(params.get("rate", DEFAULT_RATE))
                return self._compress(model_input, rate, params.get("max_error"))
            if mode == "decompress":
                return self._decompress(model_input)
        raise bad_request(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
