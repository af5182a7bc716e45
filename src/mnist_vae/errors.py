"""The errors a user can fix: each message names what went wrong and what to do.

They live in one torch-free module so that ``stage.py`` (which turns them into one line
on stderr) can catch them all without importing the training loop, the data loaders or
torch itself.
"""

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path


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


class TrackingUnreachable(ConnectionError):
    """The MLflow server did not answer, or answered only with server errors, through all of
    MLflow's retries; made from MLflow's exception by ``tracking_unreachable_error``."""


class WriteError(OSError):
    """An output the system refused to write (a full disk, a quota, no permission); the
    destination is left as it was (``files``)."""

    @classmethod
    def of(cls, dest: Path, error: OSError) -> "WriteError":
        reason = error.strerror or str(error)
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            advice = "free some space on its disk (or write elsewhere) and run again"
        else:
            advice = "check the folder's permissions and run again"
        return cls(f"cannot write {dest} ({reason}); it is left as it was: {advice}")


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


def causes(error: BaseException, limit: int = 20) -> Iterator[BaseException]:
    """The exceptions ``error`` was raised from or while handling, nearest first (at most
    ``limit``: a chain can loop)."""
    cause = error.__cause__ or error.__context__
    for _ in range(limit):
        if cause is None:
            return
        yield cause
        cause = cause.__cause__ or cause.__context__


def interrupted(error: BaseException) -> bool:
    """Whether ``error`` came of a Ctrl-C or SIGTERM (``stage``'s KeyboardInterrupt). One
    that lands inside a write to a SQLite store can leave the write failing (``database is
    locked``) and ending the MLflow run as KILLED failing the same way: the store's error
    hides the interrupt, which should still end the stage as interrupted."""
    return any(isinstance(cause, KeyboardInterrupt) for cause in causes(error))


RETRY_SETTINGS = "MLFLOW_HTTP_REQUEST_MAX_RETRIES and MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"


def tracking_unreachable_error(error: BaseException) -> TrackingUnreachable | None:
    """The user's version of an MLflow client error that says the server is down, else None.

    MLflow retries a refused connection or a 5xx answer with a growing wait (7 times over
    about 4 minutes by default) and then raises its own exception from the ``requests``
    one; this finds that cause (duck-typed, like ``tracking_access_error``)."""
    chain = list(causes(error))
    from_http = any(type(c).__module__.startswith(("requests", "urllib3")) for c in chain)
    if not from_http or not hasattr(error, "get_http_status_code"):
        return None
    server = os.environ.get("MLFLOW_TRACKING_URI", "the MLflow server")
    reason = str(chain[-1]).strip().splitlines()[0]  # the root: refused, timed out, 5xx
    return TrackingUnreachable(
        f"{server} did not answer through MLflow's retries ({reason}); run again once it "
        f"answers (a training resumes from its last epoch into the same MLflow run). "
        f"{RETRY_SETTINGS} set how long a call waits"
    )


USER_ERRORS = (
    ParamsError,
    DownloadError,
    ModelFolderError,
    TrainingDiverged,
    DistributedError,
    CodecError,
    TrackingAccessError,
    TrackingUnreachable,
    WriteError,
    FileNotFoundError,
)
"""Errors whose message tells the user what to do; a traceback would only hide it."""
