"""The train stage's resume checkpoint: what it takes to continue an interrupted training.

After every epoch the training loop writes the model, optimizer, schedule and generator
states, the history so far and the training seconds to one file (atomically: a kill
mid-write leaves the previous one). A re-run with the same fingerprint (the params that
fix the weights, the number of processes, the data checksum) continues from it, in the
same MLflow run, bit for bit; one from other params or data is ignored. The file is
removed when training completes.

(Model folders, the weights one stage hands to the next, are ``model_folder``.)
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import files
from ..params import TRAINING_KEYS, Params


def training_fingerprint(params: Params, processes: int, data_checksum: str) -> str:
    """A digest of everything that determines a training run's weights."""
    settings = {**params.flat(TRAINING_KEYS), "processes": processes}
    blob = json.dumps({"params": settings, "data": data_checksum}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Checkpoint:
    """The resume file of one training, identified by its fingerprint."""

    path: Path
    fingerprint: str
    run_id: str | None = None
    """the MLflow run the training logs to, saved so that a resumed training continues it"""

    def load(self) -> dict[str, Any] | None:
        """The saved state when it belongs to this fingerprint, else None.

        Read with ``weights_only=True`` like every weights file; an unreadable one is reported
        and ignored (training starts afresh and overwrites it)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # whatever torch raises for it, the answer is to start afresh
            reason = f"unreadable: {type(error).__name__}"
            state = None
        else:
            reason = "it belongs to other params or data"
        if isinstance(state, dict) and state.get("fingerprint") == self.fingerprint:
            return state
        print(f"ignoring checkpoint {self.path} ({reason}); training starts afresh", flush=True)
        return None

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` with the fingerprint and run id, atomically."""
        buffer = io.BytesIO()
        torch.save({**state, "fingerprint": self.fingerprint, "run_id": self.run_id}, buffer)
        files.write_bytes(self.path, buffer.getvalue())

    def remove(self) -> None:
        """Training is complete: a later run starts afresh."""
        self.path.unlink(missing_ok=True)
