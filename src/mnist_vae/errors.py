"""The errors a user can fix: each message names what went wrong and what to do.

They live in one torch-free module so that ``stage.py`` (which turns them into one line
on stderr) can catch them all without importing the training loop, the data loaders or
torch itself.
"""

import os
import re


class ParamsError(ValueError):
    """A parameter in params.yaml is missing, unknown, of the wrong type or out of range."""


class DownloadError(RuntimeError):
    """No source served a verified copy of an MNIST file."""


class ModelFolderError(ValueError):
    """A model folder that cannot be loaded; the message names the file and what to do."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message says where and what to try."""


class DistributedError(RuntimeError):
    """torchrun's environment is incomplete or inconsistent."""


class CodecError(ValueError):
    """A compressed file that cannot be decoded here (another model, damaged or truncated
    bytes, another platform), or images the codec cannot take."""


class TrackingAccessError(PermissionError):
    """The MLflow server refused the credentials (HTTP 401) or the account's permission
    (HTTP 403); made from MLflow's exception by ``tracking_access_error``."""


def tracking_access_error(error: BaseException) -> TrackingAccessError | None:
    """The user's version of an MLflow client error that is about access, else None.

    Duck-typed on ``MlflowException.get_http_status_code`` so that this module and
    ``stage.py`` stay free of MLflow's import. Never quotes a credential: the message
    names the variables, the account and the server, not the password."""
    status = getattr(error, "get_http_status_code", lambda: None)()
    if status not in (401, 403):
        return None
    server = os.environ.get("MLFLOW_TRACKING_URI", "the MLflow server")
    credentials = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials)"
    if status == 401:
        return TrackingAccessError(
            f"{server} did not accept the credentials (HTTP 401): set {credentials} "
            "to your account on it"
        )
    endpoint = re.search(r"endpoint (\S+)", str(error))
    account = os.environ.get("MLFLOW_TRACKING_USERNAME", "this account")
    return TrackingAccessError(
        f"{server} refused {account!r} the request {endpoint[1] if endpoint else ''} (HTTP 403): "
        f"set {credentials} to an account that may train (README: Shared tracking)"
    )


USER_ERRORS = (
    ParamsError,
    DownloadError,
    ModelFolderError,
    TrainingDiverged,
    DistributedError,
    CodecError,
    TrackingAccessError,
    FileNotFoundError,
)
"""Errors whose message tells the user what to do; a traceback would only hide it."""
