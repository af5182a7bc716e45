"""What every stage script shares: run the body, turn known failures into one clear line,
write metrics files."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import files
from .errors import USER_ERRORS, interrupted, tracking_access_error, tracking_unreachable_error


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwind like Ctrl-C: open MLflow runs end as KILLED


def run(main: Callable[[], object], name: str) -> None:
    """Run a stage's ``main``: a user error, an MLflow server refusing the credentials or
    the account (HTTP 401/403), or one that stayed down through MLflow's retries, ends it
    with one line on stderr and exit status 1; Ctrl-C or SIGTERM with "interrupted" and 130,
    also when the interrupt surfaced as another error (``errors.interrupted``)."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except USER_ERRORS as exc:
        _fail(name, exc)
    except Exception as exc:
        if interrupted(exc):
            _stop(name)
        if (known := tracking_access_error(exc) or tracking_unreachable_error(exc)) is None:
            raise
        _fail(name, known)
    except KeyboardInterrupt:
        _stop(name)


def _stop(name: str) -> None:
    print(f"{name}: interrupted", file=sys.stderr)
    sys.exit(130)


def _fail(name: str, error: BaseException) -> None:
    print(f"{name}: error: {error}", file=sys.stderr)
    sys.exit(1)


def write_metrics(path: str | Path, values: dict[str, Any]) -> Path:
    """A metrics file for ``dvc metrics``: indented JSON, one key per line."""
    return files.write_text(path, json.dumps(values, indent=2) + "\n")
