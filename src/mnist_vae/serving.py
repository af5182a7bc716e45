"""The served model: an MLflow pyfunc over a VAE model folder, logged as models-from-code.

Nothing is cloudpickled. The model is the code in ``serving_model.py`` (which builds a
:class:`VAEPyfunc`) plus this package, shipped with it through ``code_paths``, plus the
model folder (``config.json`` and ``model.pt``) as an artifact, read back with
``torch.load(..., weights_only=True)``. So ``mlflow models serve`` and
``mlflow.pyfunc.load_model`` work without the repository checked out.

A request picks what to do with MLflow's ``params``:

============  ===========================================  ====================================
``mode``      ``inputs``                                   ``predictions``
============  ===========================================  ====================================
decode        latent vectors, ``n x latent_dim``           images ``n x 28 x 28`` in [0, 1]
encode        images ``n x 28 x 28`` in [0, 1]             ``{"mean": n x d, "logvar": n x d}``
reconstruct   images ``n x 28 x 28`` in [0, 1]             images ``n x 28 x 28`` in [0, 1]
sample        ignored (send ``[]``); params ``n``, ``seed``  images ``n x 28 x 28`` in [0, 1]
============  ===========================================  ====================================

Images may also come flat (``n x 784``) or with a channel axis (``n x 1 x 28 x 28``).
A request that breaks these rules raises an :class:`~mlflow.exceptions.MlflowException`
with ``INVALID_PARAMETER_VALUE``, which the scoring server answers with HTTP 400 and the
message, and goes on serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ParamSchema, ParamSpec
from mlflow.types.schema import Schema, TensorSpec

from .model import ConvVAE, load_model

MODES = ("decode", "encode", "reconstruct", "sample")
MAX_ROWS = 1024
"""The most latent vectors, images or samples one request may ask for."""
MODEL_ARTIFACT_KEY = "model_files"  # the pyfunc's artifacts entry holding the model folder
ARTIFACT_PATH = "model"  # the pyfunc model's name within its run
MODEL_CODE = Path(__file__).with_name("serving_model.py")

PARAMS = ParamSchema(
    [
        ParamSpec("mode", "string", "decode"),
        ParamSpec("n", "long", 16),
        ParamSpec("seed", "long", 0),
    ]
)


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

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model = load_model(context.artifacts[MODEL_ARTIFACT_KEY])

    def load_folder(self, folder: str | Path) -> VAEPyfunc:
        """Use the model folder directly (tests, and Python callers without MLflow)."""
        self.model = load_model(folder)
        return self

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

    @staticmethod
    def _pictures(images: torch.Tensor) -> np.ndarray:
        return images.squeeze(1).numpy()

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: Any,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray | dict[str, np.ndarray]:
        params = params or {}
        mode = params.get("mode", "decode")
        with torch.no_grad():
            if mode == "decode":
                return self._pictures(self.model.mean_image(self._latents(model_input)))
            if mode == "encode":
                mean, logvar = self.model.encode(self._images(model_input, mode))
                return {"mean": mean.numpy(), "logvar": logvar.numpy()}
            if mode == "reconstruct":
                return self._pictures(self.model.reconstruct(self._images(model_input, mode)))
            if mode == "sample":
                n, seed = int(params.get("n", 16)), int(params.get("seed", 0))
                _check_rows(n, "sample")
                if seed < 0:
                    raise bad_request(f"seed must be >= 0; got {seed}")
                generator = torch.Generator().manual_seed(seed)
                return self._pictures(self.model.sample(n, generator))
        raise bad_request(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")


def signature() -> ModelSignature:
    """The request params and, for the default ``decode`` mode, the answer's shape.

    The inputs differ by mode (latent vectors or images), so the model checks them
    itself, with messages that say what each mode expects."""
    return ModelSignature(
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]), params=PARAMS
    )


def log_pyfunc_model(
    model_dir: str | Path, latent_dim: int, registered_model_name: str | None = None
) -> mlflow.models.model.ModelInfo:
    """Log the model folder as a pyfunc model in the active run, optionally registering it."""
    package = Path(__file__).parent
    return mlflow.pyfunc.log_model(
        name=ARTIFACT_PATH,
        python_model=str(MODEL_CODE),
        artifacts={MODEL_ARTIFACT_KEY: str(model_dir)},
        code_paths=[str(package)],
        signature=signature(),
        input_example=(np.zeros((2, latent_dim), dtype=np.float32), {"mode": "decode"}),
        pip_requirements=[
            f"mlflow=={mlflow.__version__}",
            f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
        ],
        registered_model_name=registered_model_name,
    )
