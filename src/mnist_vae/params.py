"""Typed pipeline parameters: load ``params.yaml`` and validate it before any work.

Every stage calls ``load_params`` first, so a typo or an out-of-range value
stops the stage with one message naming the key, the value and what is allowed,
before any output is touched. The typed objects then travel unchanged into the
library (``fit`` takes ``Params``), so each key has one name and one default.

This module imports neither torch nor the rest of the package: it also holds the
vocabularies (architectures, losses, schedules, devices, binarisations) that the
modules implementing them import from here, and ``python -m mnist_vae.params``
checks a params file in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ParamsError

ARCH_NAMES = ("fast", "conv")
DECODER_NAMES = ("factorized", "autoregressive")
PASS_SCHEDULES = ("raster", "passes-2", "passes-4", "passes-8", "passes-16")
"""``model.DECODERS`` builds each (a test checks that the two agree)"""
"""``model.ARCHITECTURES`` builds each (a test checks that the two agree)"""
LOSSES = ("bce", "mse", "beta_binomial", "logistic_mixture")
"""``likelihoods.LIKELIHOODS`` defines each (a test checks that the two agree)"""
SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
BINARIZATIONS = ("none", "dynamic")
LEARNED_CODECS = ("bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean")
"""``learned_codecs.MODELS`` builds each (CompressAI's names)"""
MAX_RATE = 12
"""the finest rate level of the lossy codec (``lossy.MAX_RATE`` uses this one)"""
TRAINING_KEYS = ("latent_dim", "seed", "data", "model", "train")
"""The top-level keys the train stage reads: together with the data, they fix the weights."""


def at_least(low: int | float, default: Any) -> Any:
    """A numeric field that must be >= ``low`` (and finite, for floats)."""
    return field(default=default, metadata={"min": low})


def above(low: int | float, default: Any) -> Any:
    """A numeric field that must be > ``low`` (and finite, for floats)."""
    return field(default=default, metadata={"above": low})


def between(low: int, high: int, default: int) -> Any:
    """An integer field that must be from ``low`` to ``high``."""
    return field(default=default, metadata={"min": low, "max": high})


def one_of(options: Iterable[str], default: str) -> Any:
    """A string field that must be one of ``options``."""
    return field(default=default, metadata={"choices": tuple(options)})


def each(rule: Any, default: tuple) -> Any:
    """A list field (a tuple in Python): not empty, no item twice, every item meeting ``rule``
    (a field made by ``at_least``, ``above`` or ``one_of``)."""
    return field(default=default, metadata=rule.metadata)


@dataclass(frozen=True)
class DataParams:
    train_limit: int = at_least(0, 0)
    """0 takes all 60,000 training images; a positive number a seeded random subset."""
    test_limit: int = at_least(0, 0)
    """0 evaluates on all 10,000 test images; a positive number on the first ones (quick runs)."""
    binarize: str = one_of(BINARIZATIONS, "none")
    """``none``: grey levels; ``dynamic``: Bernoulli pixels re-drawn at every visit (test: once)."""


@dataclass(frozen=True)
class ModelParams:
    arch: str = one_of(ARCH_NAMES, "fast")
    """``fast``: two 4x4 stride-2 convolutions and a dense layer; ``conv``: the original's"""
    decoder: str = one_of(DECODER_NAMES, "autoregressive")
    """``factorized``: each pixel from z alone; ``autoregressive``: also from the pixels
    decoded before it nearby (a local pixel head)"""
    pass_schedule: str = one_of(PASS_SCHEDULES, "raster")
    """autoregressive: ``raster``, one pixel at a time (784 steps); ``passes-N`` (2, 4, 8,
    16): N passes of many pixels each, every pixel seeing the known pixels of its window"""
    head_hidden: int = at_least(1, 32)
    """autoregressive: units of the pixel head's two hidden layers; a pass head needs more
    than the raster head for its rate (one network serves every pass)"""
    sampler_components: int = at_least(0, 50)
    """Gaussians of the mixture fitted to the training codes after training, which ``sample``
    draws from (0: the N(0, I) prior); the codec always uses the prior"""


@dataclass(frozen=True)
class TrainParams:
    epochs: int = at_least(1, 12)
    batch_size: int = at_least(1, 128)
    lr: float = above(0, 3e-3)
    """Adam's learning rate (the peak, with the cosine schedule)"""
    schedule: str = one_of(SCHEDULES, "cosine")
    """``cosine``: lr decays to 0 over all steps; ``constant``"""
    loss: str = one_of(LOSSES, "logistic_mixture")
    """``logistic_mixture``, ``beta_binomial``: distributions over the 256 grey levels (codecs);
    ``bce``: Bernoulli negative ELBO in nats; ``mse``: the original's squared error"""
    device: str = one_of(DEVICES, "auto")
    """``auto``: CUDA when available, else the CPU"""
    cuda_batch_scale: int = at_least(1, 4)
    """on CUDA only: batch_size times this, lr times its square root"""
    bf16: bool = False
    """on CUDA: bfloat16 autocast"""
    compile: bool = False
    """``torch.compile`` the network (pays off on GPUs)"""
    lossy_decoder_epochs: int = at_least(0, 5)
    """after the VAE: epochs of the lossy codec's own decoder, trained for squared error on
    the training digits' codes at every rate level (0: a code decodes to the model's mean
    image)"""


@dataclass(frozen=True)
class GenerateParams:
    n_samples: int = at_least(1, 64)
    nrow: int = at_least(1, 8)


@dataclass(frozen=True)
class CompareParams:
    n_images: int = at_least(1, 16)
    nrow: int = at_least(1, 8)


@dataclass(frozen=True)
class ClassifierParams:
    """The sample-quality judge. Its own seed, so `-S seed=N` experiments share one judge."""

    seed: int = at_least(0, 0)
    train_limit: int = at_least(0, 0)
    epochs: int = at_least(1, 4)
    batch_size: int = at_least(1, 128)
    lr: float = above(0, 3e-3)
    """the peak of the one-cycle learning-rate schedule"""


@dataclass(frozen=True)
class EvaluateParams:
    iw_samples: int = at_least(1, 20)
    """importance samples per test image for the IWAE bound on -log p(x)"""
    fid_samples: int = at_least(1, 10000)
    """generated images scored against the test images (Fréchet distance, label histogram)"""
    active_threshold: float = at_least(0, 0.01)
    """a latent dimension is active when its KL, averaged over the test set, exceeds this (nats)"""
    traversal_span: float = above(0, 3.0)
    traversal_steps: int = at_least(2, 9)
    interpolations: int = at_least(1, 8)
    interpolation_steps: int = at_least(2, 10)


@dataclass(frozen=True)
class LossyParams:
    rate: int = between(0, MAX_RATE, 6)
    """the rate level whose figures become the metrics (the grid step of the code is
    2^(1 - rate/2) prior standard deviations); the curves cover every level"""


@dataclass(frozen=True)
class LearnedBaselinesParams:
    """CompressAI's learned codecs, trained on the training digits (the learned_baselines
    stage): each model at each of its lambdas; the first lambda from scratch, each next one
    from the weights of the one before."""

    def lambdas_of(self, model: str) -> tuple[float, ...]:
        """``model``'s lambdas, largest first (the order they are trained in)."""
        chosen = self.lambdas if model == LEARNED_CODECS[0] else self.hyperprior_lambdas
        return tuple(sorted(chosen, reverse=True))

    models: tuple[str, ...] = each(one_of(LEARNED_CODECS, ""), LEARNED_CODECS[:2])
    lambdas: tuple[float, ...] = each(
        above(0, 0.0), (0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001, 0.00003, 0.00001)
    )
    """the factorized prior's weights of the squared error (pixels 0..255) against the bits
    per pixel (CompressAI's qualities 1..6 use 0.0018 to 0.0483); the largest is trained
    first"""
    hyperprior_lambdas: tuple[float, ...] = each(
        above(0, 0.0), (0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001)
    )
    """the same for the hyperpriors, whose two streams per digit never get far below 16
    bytes: smaller lambdas buy them nothing"""
    channels: int = at_least(1, 32)
    """N, the transforms' width"""
    latent_channels: int = at_least(1, 48)
    """M, the latent's channels"""
    epochs: int = at_least(1, 4)
    """for the first (largest) lambda, from scratch"""
    fine_tune_epochs: int = at_least(1, 1)
    """for each further lambda, from the weights of the lambda before"""
    batch_size: int = at_least(1, 64)
    lr: float = above(0, 3e-3)
    """Adam's learning rate (cosine-decayed to 0 over each lambda's steps)"""
    seed: int = at_least(0, 0)
    train_limit: int = at_least(0, 0)
    """0: all 60,000 training images; N > 0: a seeded random subset of N"""
    settle_steps: int = at_least(0, 5000)
    """after each lambda's training, at most this many steps of the entropy bottleneck's
    quantiles alone, until they settle (a few milliseconds each: 5,000 took about 25 s on a
    2-core AMD EPYC)"""


@dataclass(frozen=True)
class Params:
    latent_dim: int = at_least(1, 10)
    seed: int = at_least(0, 0)
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    generate: GenerateParams = field(default_factory=GenerateParams)
    compare: CompareParams = field(default_factory=CompareParams)
    classifier: ClassifierParams = field(default_factory=ClassifierParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    lossy: LossyParams = field(default_factory=LossyParams)
    learned_baselines: LearnedBaselinesParams = field(default_factory=LearnedBaselinesParams)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """Dotted keys as DVC names them (``train.lr``), for MLflow params; only those under
        the top-level ``keys`` when given."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if keys is not None and key not in keys:
                continue
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Check a scalar against its declared type; ints are accepted where floats are."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"params.yaml: {key} = {value!r} is not true or false")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ParamsError(
            f"params.yaml: {key} = {value!r} is a {type(value).__name__}; expected {kind.__name__}"
        )
    return value


def _coerce_list(key: str, value: Any, kind: type, rules: Any) -> tuple:
    """A list field: each item coerced and checked like a scalar field."""
    if not isinstance(value, list) or not value:
        raise ParamsError(f"params.yaml: {key} = {value!r} is not a non-empty list")
    items = tuple(_coerce(f"{key}[{i}]", item, kind) for i, item in enumerate(value))
    for i, item in enumerate(items):
        _check_allowed(f"{key}[{i}]", item, rules)
    if len(set(items)) < len(items):
        raise ParamsError(f"params.yaml: {key} = {value!r} has an item twice")
    return items


def _check_allowed(key: str, value: Any, rules: Any) -> None:
    """Enforce a field's ``at_least`` / ``above`` / ``one_of`` rule."""
    if "choices" in rules:
        ok, allowed = value in rules["choices"], f"one of {rules['choices']}"
    else:
        bound, op = (rules["min"], ">=") if "min" in rules else (rules.get("above"), ">")
        if bound is None:
            return
        kind = "an integer" if isinstance(value, int) else "a finite number"
        ok = math.isfinite(value) and (value >= bound if op == ">=" else value > bound)
        allowed = f"{kind} {op} {bound}"
        if "max" in rules:
            ok, allowed = ok and value <= rules["max"], f"{kind} from {bound} to {rules['max']}"
    if not ok:
        raise ParamsError(f"params.yaml: {key} = {value!r} is not allowed; expected {allowed}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((key for key in raw if key not in names), key=str)  # YAML keys: any type
    if unknown:
        key = unknown[0]
        shown = key if isinstance(key, str) and key.isidentifier() else repr(key)  # one line
        raise ParamsError(
            f"params.yaml: unknown key {prefix}{shown} in {where}; allowed: {sorted(names)}"
        )
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        kind, key = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(kind):
            values[f.name] = _build(kind, raw[f.name], f"{key}.")
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            values[f.name] = _coerce_list(key, raw[f.name], item, f.metadata)
        else:
            values[f.name] = _coerce(key, raw[f.name], kind)
            _check_allowed(key, values[f.name], f.metadata)
    return cls(**values)


def parse_params(raw: Any) -> Params:
    """Validate an already-parsed params mapping."""
    return _build(Params, raw, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run the stage from the project root") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw)


def main(argv: list[str] | None = None) -> int:
    """``python -m mnist_vae.params [params.yaml]``: validate a params file, print one line."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else "params.yaml"
    try:
        load_params(path)
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
