from dataclasses import dataclass

import pytest
import torch

from mnist_vae.model.folder import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelFolderError,
    load_model_folder,
    save_model_folder,
)
from mnist_vae.model.vae import VAEConfig, build_model, load_model, save_model


@dataclass(frozen=True)
class _Config:
    width: int = 3
    name: str = "tiny"


class _Payload:
    """Anything but tensors: unpickling it would run code of the file's choosing."""


def test_round_trip(tmp_path):
    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    folder = save_model_folder(tmp_path / "m", _Config(), state)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    config, loaded = load_model_folder(folder)
    assert config == {"width": 3, "name": "tiny"}
    assert torch.equal(loaded["weight"], state["weight"])


def test_the_weights_file_keeps_its_bytes_through_the_atomic_write(tmp_path):
    """Written through a staging folder, model.pt holds what ``torch.save`` writes to a file
    of that name (the archive inside is named after the file): every model folder written
    before keeps its hash, and so does dvc.lock."""
    model = build_model(VAEConfig(latent_dim=2))
    save_model(model, tmp_path / "model")
    torch.save(model.state_dict(), tmp_path / "model.pt")
    assert (tmp_path / "model" / "model.pt").read_bytes() == (tmp_path / "model.pt").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.pt"]  # no staging


def test_weights_are_never_unpickled(tmp_path):
    save_model_folder(tmp_path, _Config(), {"weight": torch.zeros(1)})
    torch.save({"weight": _Payload()}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(ModelFolderError, match="Python objects besides tensors") as error:
        load_model_folder(tmp_path)
    assert "dvc repro" in str(error.value)


def _vae_folder(tmp_path, latent_dim=3):
    torch.manual_seed(0)
    return save_model(build_model(VAEConfig(latent_dim=latent_dim)), tmp_path / "model")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda f: (f / WEIGHTS_FILE).write_bytes((f / WEIGHTS_FILE).read_bytes()[:1000]),
            "cannot be read (truncated or not a PyTorch weights file",
        ),
        (
            lambda f: (f / WEIGHTS_FILE).write_bytes(b"GIF89a" + bytes(range(256)) * 8),
            "cannot be read (truncated or not a PyTorch weights file",
        ),
        (lambda f: (f / WEIGHTS_FILE).unlink(), "model.pt is missing"),
        (lambda f: (f / CONFIG_FILE).write_text("{latent_dim: 3"), "config.json is not valid JSON"),
        (lambda f: (f / CONFIG_FILE).write_text("[3]"), "config.json holds no JSON object"),
        (lambda f: torch.save([torch.zeros(2)], f / WEIGHTS_FILE), "holds no state_dict"),
        (
            lambda f: (f / CONFIG_FILE).write_text('{"latent_dim": 3, "arch": "resnet"}'),
            "does not describe a model this code can build (unknown architecture 'resnet'",
        ),
        (
            lambda f: (f / CONFIG_FILE).write_text('{"latent_dim": 3, "depth": 9}'),
            "does not describe a model this code can build",
        ),
        (lambda f: save_model(build_model(VAEConfig(latent_dim=5)), f), None),  # foreign weights
    ],
)
def test_a_damaged_or_foreign_model_folder_gives_one_clear_error(tmp_path, damage, message):
    folder = _vae_folder(tmp_path)
    if message is None:  # weights of a 5-d model under the 3-d model's config
        other = _vae_folder(tmp_path / "other", latent_dim=5)
        (folder / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
        message = "model.pt does not fit the model its config.json describes (Error(s) in loading"
    else:
        damage(folder)
    with pytest.raises(ModelFolderError) as error:
        load_model(folder)
    assert message in str(error.value)
    assert "\n" not in str(error.value) and "dvc" in str(error.value)
