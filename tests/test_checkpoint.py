"""The train stage's resume checkpoint (model folders are tested in test_model_folder.py)."""

import dataclasses

import torch

from mnist_vae.params import Params
from mnist_vae.training.checkpoint import Checkpoint, training_fingerprint


def test_a_checkpoint_reads_back_only_for_its_own_fingerprint(tmp_path, capsys):
    path = tmp_path / "checkpoints" / "train.pt"
    mine = Checkpoint(path, "a" * 64, run_id="run-1")
    assert mine.load() is None  # nothing yet, nothing said
    mine.save({"epoch": 2, "model": {"w": torch.ones(2)}})
    assert not path.with_name("train.pt.partial").exists()  # written whole, then renamed
    state = mine.load()
    assert (state["epoch"], state["run_id"], state["fingerprint"]) == (2, "run-1", "a" * 64)
    assert torch.equal(state["model"]["w"], torch.ones(2))

    assert Checkpoint(path, "b" * 64).load() is None
    assert "it belongs to other params or data); training starts afresh" in capsys.readouterr().out
    path.write_bytes(b"not a checkpoint")
    assert mine.load() is None
    assert "unreadable: " in capsys.readouterr().out
    mine.remove()
    mine.remove()  # twice is fine
    assert not path.exists()


def test_the_fingerprint_follows_what_fixes_the_weights_only():
    base = Params()

    def fingerprint(params: Params = base, processes: int = 1, data: str = "d") -> str:
        return training_fingerprint(params, processes, data)

    assert fingerprint() == fingerprint()
    assert fingerprint(dataclasses.replace(base, latent_dim=16)) != fingerprint()
    assert fingerprint(processes=2) != fingerprint()
    assert fingerprint(data="e") != fingerprint()
    other_stage = dataclasses.replace(base, generate=dataclasses.replace(base.generate, nrow=4))
    assert fingerprint(other_stage) == fingerprint()  # generate.* never reaches the weights
