"""Model folders: the config that built a model, as JSON, beside its weights.

One way to write and read them for every network in the project (the VAE, the
classifier), so a folder always describes itself and weights are only ever read
with ``torch.load(..., weights_only=True)``: loading never runs pickled code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"


def save_checkpoint(folder: str | Path, config: Any, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``config`` (a dataclass) to ``config.json`` and ``state_dict`` to ``model.pt``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_json = json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)
    (folder / CONFIG_FILE).write_text(config_json + "\n")
    torch.save(state_dict, folder / WEIGHTS_FILE)
    return folder


def load_checkpoint(
    folder: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config mapping and the state_dict of a model folder."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    state = torch.load(folder / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    return config, state
