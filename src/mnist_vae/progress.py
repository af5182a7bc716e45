"""Progress bars for every long loop (training, the classifier, downloads), one setting."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

from tqdm import tqdm

# Redraw the bar often on a terminal; in a log file (CI, `dvc repro > log`) rarely.
PROGRESS_INTERVAL = 0.2 if sys.stderr.isatty() else 30.0


def progress_bar(enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar that disappears when done and redraws at ``PROGRESS_INTERVAL``."""
    return tqdm(disable=not enabled, leave=False, mininterval=PROGRESS_INTERVAL, **kwargs)


def bar_over(what: str) -> Callable[[Iterable], Iterable]:
    """For library loops that take a ``progress`` callable: wraps their iterable in a bar."""
    return lambda items: progress_bar(iterable=items, desc=what)
