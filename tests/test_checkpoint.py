import pickle
from dataclasses import dataclass

import pytest
import torch

from mnist_vae.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class _Config:
    width: int = 3
    name: str = "tiny"


class _Payload:
    """Anything but tensors: unpickling it would run code of the file's choosing."""


def test_round_trip(tmp_path):
    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    folder = save_checkpoint(tmp_path / "m", _Config(), state)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    config, loaded = load_checkpoint(folder)
    assert config == {"width": 3, "name": "tiny"}
    assert torch.equal(loaded["weight"], state["weight"])


def test_weights_are_never_unpickled(tmp_path):
    save_checkpoint(tmp_path, _Config(), {"weight": torch.zeros(1)})
    torch.save({"weight": _Payload()}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path)
