"""A small convolutional MNIST classifier: the judge of sample quality.

Its penultimate layer (``FEATURE_DIM`` units after a ReLU) is the feature space
of the Fréchet distance between generated and test images, the MNIST analogue
of FID's Inception pool features; its predictions give the label histogram of
the samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import batches
from ..invariant import pinned_arithmetic
from ..model.folder import load_module, save_model_folder
from ..progress import progress_bar


@dataclass(frozen=True)
class ClassifierConfig:
    n_classes: int = 10
    in_channels: int = 1
    image_size: int = 28
    feature_dim: int = 128
    dropout: float = 0.3


class DigitClassifier(nn.Module):
    """conv 32@3x3 - pool - conv 64@3x3 - pool - dense ``feature_dim`` - dense ``n_classes``."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        side = config.image_size // 4  # two 2x2 poolings
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * side * side, config.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(config.feature_dim, config.n_classes)
        )
        self.num_features = config.feature_dim  # read by torchmetrics' FID

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.features(x))


class FeatureExtractor(nn.Module):
    """The classifier's penultimate layer as a module of its own (what FID feeds on)."""

    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x)


@pinned_arithmetic()  # the same bits on any number of threads (invariant.py)
def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    config: ClassifierConfig | None = None,
    progress: bool = True,
) -> DigitClassifier:
    """Seeded Adam training on in-memory tensors, like the VAE's loop, with a one-cycle
    schedule peaking at ``lr`` (it reaches 99% test accuracy in a few epochs)."""
    torch.manual_seed(seed)
    model = DigitClassifier(config or ClassifierConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n_batches = -(-len(images) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * n_batches)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        for index, _ in progress_bar(
            progress,
            iterable=batches(len(images), batch_size, order),
            total=n_batches,
            unit="batch",
            desc=f"classifier epoch {epoch}/{epochs}",
        ):
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def predict(model: DigitClassifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted digit of each image."""
    model.eval()
    return torch.cat([model(images[i]).argmax(1) for i, _ in batches(len(images), batch_size)])


def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict(model, images) == labels).double().mean().item()


def save_classifier(model: DigitClassifier, folder: str | Path) -> Path:
    return save_model_folder(folder, model.config, model.state_dict())


def load_classifier(folder: str | Path) -> DigitClassifier:
    return load_module(folder, lambda config: DigitClassifier(ClassifierConfig(**config)))
