import math

import pandas as pd
import pytest
import torch
from torch import nn

from mnist_vae.evaluation import metrics
from mnist_vae.evaluation.classifier import ClassifierConfig, DigitClassifier
from mnist_vae.model.vae import VAEConfig, build_model


class _LabelInPixel(nn.Module):
    """A stand-in classifier that reads the digit from the first pixel (value digit / 10)."""

    def forward(self, x):
        return nn.functional.one_hot((x[:, 0, 0, 0] * 10).round().long(), 10).float()


def test_label_histogram_and_its_entropy():
    images = torch.zeros(20, 1, 28, 28)
    images[:, 0, 0, 0] = torch.arange(20) % 10 / 10
    fractions, entropy = metrics.label_histogram(_LabelInPixel(), images)
    assert fractions == [0.1] * 10
    assert entropy == pytest.approx(math.log(10))
    images[:, 0, 0, 0] = 0.3
    fractions, entropy = metrics.label_histogram(_LabelInPixel(), images)
    assert fractions[3] == 1.0 and entropy == 0.0


def test_active_units_count_dimensions_above_the_threshold():
    kl = torch.tensor([[0.5, 0.0, 0.02], [0.7, 0.001, 0.0]])
    n, per_dim = metrics.active_units(kl, threshold=0.01)
    assert n == 1  # dim 2 averages 0.01, not above
    assert per_dim == pytest.approx([0.6, 0.0005, 0.01])


def test_frechet_distance_is_zero_for_the_same_set_and_grows_with_a_shift():
    torch.manual_seed(0)
    classifier = DigitClassifier(ClassifierConfig()).eval()
    real = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert metrics.frechet_distance(classifier, real, real) == pytest.approx(0.0, abs=1e-3)
    near = metrics.frechet_distance(classifier, real, (real * 0.9).clamp(0, 1))
    far = metrics.frechet_distance(classifier, real, (real * 0.5).clamp(0, 1))
    assert 0 < near < far


def test_per_image_metrics_table():
    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=3)).eval()
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    rows, kl_dims = metrics.per_image_metrics(model, x, iw_samples=4, batch_size=3)
    assert isinstance(rows, pd.DataFrame) and len(rows) == 7
    assert kl_dims.shape == (7, 3)
    assert list(rows.columns) == ["loss", "recon", "kl", "iwae_nll", "mse", "psnr", "ssim"]
    assert (rows["loss"] - rows["recon"] - rows["kl"]).abs().max() < 1e-3
    assert ((rows["ssim"] <= 1) & (rows["mse"] >= 0)).all()
    # PSNR is 10 log10(1 / MSE) per image for data in [0, 1]
    assert rows["psnr"].to_numpy() == pytest.approx(
        (-10 * rows["mse"].apply(math.log10)).to_numpy(), rel=1e-4
    )
    summary = metrics.summarize(rows)
    assert summary["iwae_nll"] == pytest.approx(rows["iwae_nll"].mean())


def test_evaluate_vae_reports_summary_and_tables():
    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=3)).eval()
    classifier = DigitClassifier(ClassifierConfig()).eval()
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2] * 4)
    result = metrics.evaluate_vae(
        model, classifier, x, labels, reference=x,
        iw_samples=2, fid_samples=30, active_threshold=0.01, seed=0,
    )  # fmt: skip
    assert {"iwae_nll", "ssim", "active_units", "frechet_distance"} <= set(result.summary)
    assert list(result.per_class["digit"]) == [0, 1, 2]
    assert list(result.per_class["images"]) == [4, 4, 4]
    assert result.per_class.columns[:2].tolist() == ["digit", "images"]
    assert len(result.latent_kl) == 3
    assert result.sample_labels["fraction"].sum() == pytest.approx(1)
    again = metrics.evaluate_vae(
        model, classifier, x, labels, reference=x,
        iw_samples=2, fid_samples=30, active_threshold=0.01, seed=0,
    )  # fmt: skip
    assert again.summary == result.summary  # seeded: the same numbers every time
