"""What every stage script shares: run the body, turn known failures into one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .checkpoint import CheckpointError
from .data import DownloadError
from .params import ParamsError
from .training import TrainingDiverged

# Errors whose message tells the user what to do; a traceback would only hide it.
USER_ERRORS = (ParamsError, DownloadError, CheckpointError, TrainingDiverged, FileNotFoundError)


def run(main: Callable[[], object], name: str) -> None:
    try:
        main()
    except USER_ERRORS as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        sys.exit(130)
