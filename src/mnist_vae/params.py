"""Typed pipeline parameters: load ``params.yaml`` and validate it before any work.

Every stage calls :func:`load_params` first, so a typo or an out-of-range value
stops the stage with one message naming the key, the value and what is allowed,
before any output is touched.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import BINARIZATIONS
from .losses import LOSSES
from .model import ARCHITECTURES


class ParamsError(ValueError):
    """A parameter in params.yaml is missing, unknown, of the wrong type or out of range."""


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ParamsError(f"params.yaml: {key} = {value!r} is not allowed; expected {allowed}")


@dataclass(frozen=True)
class DataParams:
    train_limit: int = 0
    """0 takes all 60,000 training images; a positive number a seeded random subset."""
    test_limit: int = 0
    """0 evaluates on all 10,000 test images; a positive number on the first ones (quick runs)."""
    binarize: str = "none"
    """``none``: grey levels; ``dynamic``: Bernoulli pixels re-drawn at every visit (test: once)."""

    def validate(self, prefix: str) -> None:
        _check(self.train_limit >= 0, f"{prefix}train_limit", self.train_limit, "an integer >= 0")
        _check(self.test_limit >= 0, f"{prefix}test_limit", self.test_limit, "an integer >= 0")
        _check(
            self.binarize in BINARIZATIONS,
            f"{prefix}binarize",
            self.binarize,
            f"one of {BINARIZATIONS}",
        )


@dataclass(frozen=True)
class ModelParams:
    arch: str = "conv"

    def validate(self, prefix: str) -> None:
        _check(
            self.arch in ARCHITECTURES, f"{prefix}arch", self.arch, f"one of {tuple(ARCHITECTURES)}"
        )


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    loss: str = "bce"
    """``bce``: Bernoulli negative ELBO in nats; ``mse``: the original's squared error."""

    def validate(self, prefix: str) -> None:
        _check(self.epochs >= 1, f"{prefix}epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 1, f"{prefix}batch_size", self.batch_size, "an integer >= 1")
        _check(0 < self.lr < math.inf, f"{prefix}lr", self.lr, "a finite number > 0")
        _check(self.loss in LOSSES, f"{prefix}loss", self.loss, f"one of {LOSSES}")


@dataclass(frozen=True)
class GenerateParams:
    n_samples: int = 64
    nrow: int = 8

    def validate(self, prefix: str) -> None:
        _check(self.n_samples >= 1, f"{prefix}n_samples", self.n_samples, "an integer >= 1")
        _check(self.nrow >= 1, f"{prefix}nrow", self.nrow, "an integer >= 1")


@dataclass(frozen=True)
class CompareParams:
    n_images: int = 16
    nrow: int = 8

    def validate(self, prefix: str) -> None:
        _check(self.n_images >= 1, f"{prefix}n_images", self.n_images, "an integer >= 1")
        _check(self.nrow >= 1, f"{prefix}nrow", self.nrow, "an integer >= 1")


@dataclass(frozen=True)
class ClassifierParams:
    """The sample-quality judge. Its own seed, so `-S seed=N` experiments share one judge."""

    seed: int = 0
    train_limit: int = 0
    epochs: int = 4
    batch_size: int = 128
    lr: float = 3e-3
    """the peak of the one-cycle learning-rate schedule"""

    def validate(self, prefix: str) -> None:
        _check(self.seed >= 0, f"{prefix}seed", self.seed, "an integer >= 0")
        _check(self.train_limit >= 0, f"{prefix}train_limit", self.train_limit, "an integer >= 0")
        _check(self.epochs >= 1, f"{prefix}epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 1, f"{prefix}batch_size", self.batch_size, "an integer >= 1")
        _check(0 < self.lr < math.inf, f"{prefix}lr", self.lr, "a finite number > 0")


@dataclass(frozen=True)
class EvaluateParams:
    iw_samples: int = 20
    """importance samples per test image for the IWAE bound on -log p(x)"""
    fid_samples: int = 10000
    """generated images scored against the test images (Fréchet distance, label histogram)"""
    active_threshold: float = 0.01
    """a latent dimension is active when its KL, averaged over the test set, exceeds this (nats)"""
    traversal_span: float = 3.0
    traversal_steps: int = 9
    interpolations: int = 8
    interpolation_steps: int = 10

    def validate(self, prefix: str) -> None:
        for name in ("iw_samples", "fid_samples", "interpolations"):
            value = getattr(self, name)
            _check(value >= 1, f"{prefix}{name}", value, "an integer >= 1")
        for name in ("traversal_steps", "interpolation_steps"):
            value = getattr(self, name)
            _check(value >= 2, f"{prefix}{name}", value, "an integer >= 2")
        _check(
            0 <= self.active_threshold < math.inf,
            f"{prefix}active_threshold",
            self.active_threshold,
            "a finite number >= 0",
        )
        _check(
            0 < self.traversal_span < math.inf,
            f"{prefix}traversal_span",
            self.traversal_span,
            "a finite number > 0",
        )


@dataclass(frozen=True)
class Params:
    latent_dim: int = 10
    seed: int = 0
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    generate: GenerateParams = field(default_factory=GenerateParams)
    compare: CompareParams = field(default_factory=CompareParams)
    classifier: ClassifierParams = field(default_factory=ClassifierParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)

    def validate(self, prefix: str = "") -> None:
        _check(self.latent_dim >= 1, "latent_dim", self.latent_dim, "an integer >= 1")
        _check(self.seed >= 0, "seed", self.seed, "an integer >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys as DVC names them (``train.lr``), for MLflow params."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Check a scalar against its declared type; ints are accepted where floats are."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ParamsError(
            f"params.yaml: {key} = {value!r} is a {type(value).__name__}; expected {kind.__name__}"
        )
    return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key {prefix}{unknown[0]} in {where}; allowed: {sorted(names)}"
        )
    values = {}
    for name in names & set(raw):
        kind = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, raw[name], f"{key}.")
        else:
            values[name] = _coerce(key, raw[name], kind)
    obj = cls(**values)
    obj.validate(prefix)
    return obj


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
