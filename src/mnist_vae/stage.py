"""What every stage script shares: run the body, turn known failures into one clear line."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from .checkpoint import CheckpointError
from .data import DownloadError
from .distributed import DistributedError
from .params import ParamsError
from .training import TrainingDiverged

# Errors whose message tells the user what to do; a traceback would only hide it.
USER_ERRORS = (
    ParamsError,
    DownloadError,
    CheckpointError,
    TrainingDiverged,
    DistributedError,
    FileNotFoundError,
)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwind like Ctrl-C: open MLflow runs end as KILLED


def run(main: Callable[[], object], name: str) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except USER_ERRORS as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
