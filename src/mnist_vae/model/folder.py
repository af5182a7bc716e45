"""Model folders: the config that built a model, as JSON, beside its weights.

(The train stage's resume checkpoints are another thing: see ``checkpoint``.)

One way to write and read them for every network in the project (the VAE, the
classifier), so a folder always describes itself and weights are only ever read
with ``torch.load(..., weights_only=True)``: loading never runs pickled code.
A folder that cannot be loaded (missing, truncated or foreign files, weights that
do not fit the config) raises ``ModelFolderError`` naming the file and what
to do, never a traceback from deep inside torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from .. import files
from ..errors import ModelFolderError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"


def save_model_folder(folder: str | Path, config: Any, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``config`` (a dataclass) to ``config.json`` and ``state_dict`` to ``model.pt``,
    replacing the folder whole: a failed write (``errors.WriteError``) leaves it as it was."""
    config_json = json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)
    with files.replaced_folder(folder) as staging:  # whole or not at all
        (staging / CONFIG_FILE).write_text(config_json + "\n")
        _save_weights(state_dict, staging / WEIGHTS_FILE)
    return Path(folder)


def _save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` to a path named ``model.pt``: the archive inside is named after the
    file (``model/``), so the bytes are those of every weights file written so far (saved
    to a buffer, it would be ``archive/``). torch's file writer reports a failed write as a
    bare RuntimeError; a full disk becomes the OSError it is."""
    try:
        torch.save(state_dict, path)
    except RuntimeError as error:
        if (refused := files.refused_write(path, error)) is None:
            raise
        raise refused from error


Module = TypeVar("Module", bound=nn.Module)
_RESTORE = "re-create it with `dvc repro` or restore it with `dvc checkout` / `dvc pull`"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def load_model_folder(
    folder: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config mapping and the state_dict of a model folder."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ModelFolderError(f"{path} is missing; {_RESTORE}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFolderError(f"{config_path} is not valid JSON ({error}); {_RESTORE}") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{config_path} holds no JSON object; {_RESTORE}")
    try:
        state = torch.load(weights_path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged or foreign file
        if "Unsupported global" in str(error):  # weights_only refused to build an object
            reason = "it holds Python objects besides tensors, which are never unpickled"
        else:
            reason = f"truncated or not a PyTorch weights file: {type(error).__name__}"
        raise ModelFolderError(f"{weights_path} cannot be read ({reason}); {_RESTORE}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFolderError(f"{weights_path} holds no state_dict of tensors; {_RESTORE}")
    return config, state


def load_module(
    folder: str | Path,
    build: Callable[[dict[str, Any]], Module],
    map_location: str | torch.device = "cpu",
) -> Module:
    """Build a network from a folder's config with ``build`` and load its weights into it."""
    config, state = load_model_folder(folder, map_location)
    try:
        module = build(config)
    except (TypeError, ValueError, KeyError) as error:
        raise ModelFolderError(
            f"{Path(folder) / CONFIG_FILE} does not describe a model this code can build "
            f"({_first_line(error)}); {_RESTORE}"
        ) from None
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ModelFolderError(
            f"{Path(folder) / WEIGHTS_FILE} does not fit the model its {CONFIG_FILE} describes "
            f"({_first_line(error)}); {_RESTORE}"
        ) from None
    return module.eval()
