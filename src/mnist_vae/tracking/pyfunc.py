"""How the served model is logged: its request params, its signature and
``log_pyfunc_model`` (models-from-code: ``serving_model.py`` builds the
``serving.VAEPyfunc``, the package travels as ``code_paths``).

This module does not import ``serving``, so the train stage, which logs the model,
depends on neither the served model's logic nor the codecs behind it (dvc.yaml).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import ParamSchema, ParamSpec
from mlflow.types.schema import Schema, TensorSpec

from ..params import LossyParams

MODEL_ARTIFACT_KEY = "model_files"  # the pyfunc's artifacts entry holding the model folder
ARTIFACT_PATH = "model"  # the pyfunc model's name within its run
MODEL_CODE = Path(__file__).with_name("serving_model.py")

PARAMS = ParamSchema(
    [
        ParamSpec("mode", "string", "decode"),
        ParamSpec("n", "long", 16),
        ParamSpec("seed", "long", 0),
        ParamSpec("rate", "long", LossyParams().rate),
        ParamSpec("max_error", "long", 0),
    ]
)


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
    package = Path(__file__).parents[1]  # the whole mnist_vae package
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


def main(argv: list[str] | None = None) -> int:
    """``python -m mnist_vae.tracking.pyfunc [MODEL_DIR]``: log the model folder (default
    data/model) again as the served model of its MLflow run and register it as a new
    version, with the package as it is now: a model logged before an upgrade keeps the code
    it was logged with (models-from-code), so new request modes need this (or a retrain)."""
    import argparse

    from ..model.folder import WEIGHTS_FILE
    from ..model.vae import load_model
    from . import runs

    parser = argparse.ArgumentParser(
        prog="python -m mnist_vae.tracking.pyfunc", description=main.__doc__
    )
    parser.add_argument("model_dir", nargs="?", default="data/model", type=Path)
    args = parser.parse_args(argv)
    latent_dim = load_model(args.model_dir).config.latent_dim
    with runs.model_run(args.model_dir / WEIGHTS_FILE):  # configures the store too
        info = log_pyfunc_model(args.model_dir, latent_dim, runs.REGISTERED_MODEL)
    print(f"logged {info.model_uri}; registered as {runs.REGISTERED_MODEL} version "
          f"{info.registered_model_version}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
