import dataclasses
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

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
        ({"data": {"\n": None}}, "unknown key data.'\\n' in data"),  # found by hypothesis
        ({"data": {1: 2, "x": 3}}, "unknown key data.1 in data"),
        ({"train": {"bf16": "yes"}}, "train.bf16 = 'yes' is not true or false"),
        ({"learned_baselines": {"lambdas": 0.01}}, "lambdas = 0.01 is not a non-empty list"),
        ({"learned_baselines": {"lambdas": []}}, "lambdas = [] is not a non-empty list"),
        ({"learned_baselines": {"lambdas": [0.01, 0]}}, "learned_baselines.lambdas[1] = 0.0"),
        ({"learned_baselines": {"lambdas": [0.1, 0.1]}}, "has an item twice"),
        ({"learned_baselines": {"models": ["jpeg"]}}, "learned_baselines.models[0] = 'jpeg'"),
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


# Random params: every field of every group gets values of every kind, and unknown keys
# appear beside known ones. The validator must either accept (and then every field holds a
# value its rule allows) or refuse with one ParamsError line naming a key; nothing else.
_ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["none", "dynamic", "fast", "conv", "bce", "mse", "cosine", "auto", "cpu"]),
    st.lists(st.integers(), max_size=2),
)  # fmt: skip


def _valid(f: dataclasses.Field) -> st.SearchStrategy:
    """Values the field's rule allows (for a list field: lists of them, no item twice)."""
    rules, kind = f.metadata, type(f.default)
    if kind is tuple:
        item = dataclasses.field(default=f.default[0], metadata=rules)
        return st.lists(_valid(item), min_size=1, max_size=4, unique=True)
    if "choices" in rules:
        return st.sampled_from(rules["choices"])
    if kind is bool:
        return st.booleans()
    low = rules.get("min", rules.get("above", 0))
    if kind is int:
        return st.integers(low + ("above" in rules), low + 1000)
    return st.floats(low, low + 10.0, exclude_min="above" in rules)


@st.composite
def _field_value(draw, f: dataclasses.Field):
    if dataclasses.is_dataclass(
        f.default_factory if f.default_factory is not dataclasses.MISSING else None
    ):
        return draw(_group(f.default_factory))
    return draw(_ANY_VALUE) if draw(st.integers(0, 19)) == 0 else draw(_valid(f))


@st.composite
def _group(draw, cls) -> dict:
    if draw(st.integers(0, 29)) == 0:
        return draw(_ANY_VALUE)  # not even a mapping
    raw = {f.name: draw(_field_value(f)) for f in dataclasses.fields(cls) if draw(st.booleans())}
    if draw(st.integers(0, 19)) == 0:  # an unknown key, as YAML may give: text, number, bool
        raw[draw(st.one_of(st.text(max_size=6), st.integers(), st.booleans()))] = draw(_ANY_VALUE)
    return raw


def _raw_params():
    return _group(Params)


def _allowed(value, rules) -> bool:
    if isinstance(value, tuple):
        return len(value) == len(set(value)) > 0 and all(_allowed(v, rules) for v in value)
    if "choices" in rules:
        return value in rules["choices"]
    if "min" in rules:
        return math.isfinite(value) and value >= rules["min"]
    if "above" in rules:
        return math.isfinite(value) and value > rules["above"]
    return True


@settings(max_examples=400, deadline=None, derandomize=True)  # the same examples in every CI run
@given(_raw_params())
def test_random_params_are_accepted_only_when_valid(raw):
    try:
        params = parse_params(raw)
    except ParamsError as error:
        message = str(error)
        assert message.startswith("params.yaml: ") and "\n" not in message
        return
    for group in (params, *(getattr(params, f.name) for f in dataclasses.fields(params)
                            if dataclasses.is_dataclass(getattr(params, f.name)))):  # fmt: skip
        for f in dataclasses.fields(group):
            value = getattr(group, f.name)
            if not dataclasses.is_dataclass(value):
                assert type(value) is type(f.default), (f.name, value)
                assert _allowed(value, f.metadata), (f.name, value)
