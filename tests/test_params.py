from pathlib import Path

import pytest
import yaml

from mnist_vae.params import Params, ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_committed_params_file_is_valid_and_matches_the_documented_interface():
    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert raw["latent_dim"] == params.latent_dim == 10
    assert "seed" in raw
    for key in (
        "data.train_limit",
        "train.epochs",
        "train.batch_size",
        "train.lr",
        "generate.n_samples",
        "compare.n_images",
    ):
        group, name = key.split(".")
        assert name in raw[group], key


def test_code_defaults_are_the_committed_params():
    assert load_params(ROOT / "params.yaml") == Params()


def test_empty_file_gives_defaults():
    assert parse_params(None) == Params()


def test_ints_are_accepted_for_floats():
    assert parse_params({"train": {"lr": 1}}).train.lr == 1.0


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"latent_dims": 3}, "unknown key latent_dims"),
        ({"train": {"epoch": 3}}, "unknown key train.epoch"),
        ({"latent_dim": 0}, "latent_dim = 0"),
        ({"latent_dim": "8"}, "latent_dim = '8' is a str"),
        ({"latent_dim": True}, "latent_dim = True is a bool"),
        ({"train": {"lr": 0}}, "train.lr = 0.0"),
        ({"train": {"epochs": 0}}, "train.epochs = 0"),
        ({"train": {"loss": "l1"}}, "train.loss = 'l1'"),
        ({"model": {"arch": "resnet"}}, "model.arch = 'resnet'"),
        ({"generate": 5}, "generate must be a mapping"),
        ({"data": {"train_limit": -1}}, "data.train_limit = -1"),
        ({"train": {"bf16": "yes"}}, "train.bf16 = 'yes' is not true or false"),
        ({"train": {"compile": 1}}, "train.compile = 1 is not true or false"),
        ({"train": {"device": "tpu"}}, "train.device = 'tpu'"),
        ({"train": {"schedule": "step"}}, "train.schedule = 'step'"),
        ({"train": {"cuda_batch_scale": 0}}, "train.cuda_batch_scale = 0"),
    ],
)
def test_bad_values_name_the_key_and_value(raw, fragment):
    with pytest.raises(ParamsError, match=None) as info:
        parse_params(raw)
    assert fragment in str(info.value)


def test_flat_uses_dvc_dotted_names():
    flat = Params().flat()
    assert flat["latent_dim"] == 10
    assert flat["train.lr"] == 3e-3
    assert flat["train.bf16"] is False
    assert flat["generate.n_samples"] == 64


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("latent_dim: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
