"""What every stage script shares: run the body, turn known failures into one clear line,
write metrics files."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import USER_ERRORS, tracking_access_error


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwind like Ctrl-C: open MLflow runs end as KILLED


def run(main: Callable[[], object], name: str) -> None:
    """Run a stage's ``main``: a user error, or an MLflow server refusing the credentials or
    the account (HTTP 401/403), ends it with one line on stderr and exit status 1."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except USER_ERRORS as exc:
        _fail(name, exc)
    except Exception as exc:
        if (access := tracking_access_error(exc)) is None:
            raise
        _fail(name, access)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)


def _fail(name: str, error: BaseException) -> None:
    print(f"{name}: error: {error}", file=sys.stderr)
    sys.exit(1)


def write_metrics(path: str | Path, values: dict[str, Any]) -> Path:
    """A metrics file for ``dvc metrics``: indented JSON, one key per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=2) + "\n")
    return path
