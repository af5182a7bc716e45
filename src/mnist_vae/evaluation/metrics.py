"""Evaluation metrics of a trained VAE: likelihood, reconstruction, latent use, sample quality.

Image-quality measures come from torchmetrics (PSNR, SSIM, and the Fréchet
distance computed by its FID implementation on features of our own MNIST
classifier); the likelihood bounds from ``mnist_vae.training.losses``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from torchmetrics.image.fid import FrechetInceptionDistance

from ..data import batches
from ..model.vae import ConvVAE
from ..training.losses import iwae_nll, kl_per_dimension, reconstruction_error
from .classifier import DigitClassifier, FeatureExtractor, predict

N_DIGITS = 10


@torch.no_grad()
def per_image_metrics(
    model: ConvVAE,
    images: torch.Tensor,
    *,
    iw_samples: int,
    seed: int = 0,
    batch_size: int = 500,
    iw_budget: int = 4096,
) -> tuple[pd.DataFrame, torch.Tensor]:
    """One row per image: single-sample negative ELBO in nats under the model's likelihood
    (Bernoulli for a model trained with ``mse``) and its parts, the importance-weighted
    NLL, and the MSE/PSNR/SSIM of the reconstruction from the posterior mean. Also returns
    the per-dimension KL of every image (``[N, latent_dim]``)."""
    model.eval()
    loss = evaluation_loss(model)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    rows, kls = [], []
    for index, _ in batches(len(images), batch_size):
        x = images[index]
        mean, logvar = model.encode(x)
        z = model.reparameterize(mean, logvar, generator)
        rec = reconstruction_error(model.decode(z, x), x, loss)
        kl_dims = kl_per_dimension(mean, logvar)
        kl = kl_dims.sum(1)
        x_hat = model.mean_image(mean)
        rows.append(
            pd.DataFrame(
                {
                    "loss": (rec + kl).double().cpu(),
                    "recon": rec.double().cpu(),
                    "kl": kl.double().cpu(),
                    "iwae_nll": iwae_nll(model, x, iw_samples, generator, iw_budget, loss)
                    .double()
                    .cpu(),
                    "mse": (x_hat - x).pow(2).flatten(1).mean(1).double().cpu(),
                    "psnr": peak_signal_noise_ratio(
                        x_hat, x, data_range=1.0, reduction="none", dim=(1, 2, 3)
                    )
                    .double()
                    .cpu(),
                    "ssim": structural_similarity_index_measure(
                        x_hat, x, data_range=1.0, reduction="none"
                    )
                    .double()
                    .cpu(),
                }
            )
        )
        kls.append(kl_dims.cpu())
    return pd.concat(rows, ignore_index=True), torch.cat(kls)


def evaluation_loss(model: ConvVAE) -> str:
    """The likelihood a model is scored with: its own, or Bernoulli for ``mse`` (no likelihood)."""
    return "bce" if model.config.likelihood == "mse" else model.config.likelihood


def bits_per_pixel(nats_per_image: float, pixels: int) -> float:
    """``-log2 p / pixels``: the rate a codec built on the model would approach."""
    return nats_per_image / math.log(2) / pixels


def active_units(kl_dims: torch.Tensor, threshold: float) -> tuple[int, list[float]]:
    """Dimensions whose KL, averaged over images, exceeds ``threshold`` nats, and every
    dimension's average KL."""
    mean_kl = kl_dims.double().mean(0)
    return int((mean_kl > threshold).sum()), mean_kl.tolist()


@torch.no_grad()
def frechet_distance(
    classifier: DigitClassifier, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 1000
) -> float:
    """Fréchet distance between the classifier features of two image sets (torchmetrics' FID
    with our classifier's penultimate layer in place of Inception)."""
    fid = FrechetInceptionDistance(feature=FeatureExtractor(classifier), normalize=True)
    for images, is_real in ((real, True), (fake, False)):
        for index, _ in batches(len(images), batch_size):
            fid.update(images[index], real=is_real)
    return float(fid.compute())


def label_histogram(
    classifier: DigitClassifier, samples: torch.Tensor
) -> tuple[list[float], float]:
    """Fraction of samples the classifier calls each digit, and that distribution's entropy
    in nats (ln 10 = 2.303 when every digit is equally common)."""
    counts = torch.bincount(predict(classifier, samples), minlength=N_DIGITS).double()
    fractions = counts / counts.sum()
    nonzero = fractions[fractions > 0]
    return fractions.tolist(), float(-(nonzero * nonzero.log()).sum())


def summarize(rows: pd.DataFrame) -> dict[str, float]:
    """Means of the per-image columns (PSNR as the mean of per-image PSNRs)."""
    return {name: float(value) for name, value in rows.mean(numeric_only=True).items()}


MAX_LABEL_ENTROPY = math.log(N_DIGITS)


@dataclass
class Evaluation:
    """Everything the evaluate stage reports: headline numbers and three tables."""

    summary: dict[str, float]
    per_class: pd.DataFrame
    """per-image metrics averaged per digit, with the number of images of each"""
    latent_kl: pd.DataFrame
    """average KL of each latent dimension"""
    sample_labels: pd.DataFrame
    """share of the samples the classifier assigns to each digit"""


@torch.no_grad()
def evaluate_vae(
    model: ConvVAE,
    classifier: DigitClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    reference: torch.Tensor,
    iw_samples: int,
    fid_samples: int,
    active_threshold: float,
    seed: int,
) -> Evaluation:
    """Score ``model`` on test ``images`` (as trained: grey or binarized) and its samples
    against the grey-level ``reference`` images (the Fréchet distance's real set)."""
    rows, kl_dims = per_image_metrics(model, images, iw_samples=iw_samples, seed=seed)
    n_active, kl_by_dim = active_units(kl_dims, active_threshold)
    samples = model.sample(fid_samples, torch.Generator().manual_seed(seed))
    fractions, entropy = label_histogram(classifier, samples)
    pixels = images[0].numel()
    means = summarize(rows)
    summary = {
        **means,
        "bits_per_pixel": bits_per_pixel(means["loss"], pixels),
        "iwae_bits_per_pixel": bits_per_pixel(means["iwae_nll"], pixels),
        "active_units": n_active,
        "frechet_distance": frechet_distance(classifier, reference, samples),
        "sample_label_entropy": entropy,
        "sample_min_digit_fraction": min(fractions),
    }
    by_digit = rows.groupby(labels.cpu().numpy())
    per_class = by_digit.mean().rename_axis("digit").reset_index()
    per_class.insert(1, "images", by_digit.size().to_numpy())
    return Evaluation(
        summary,
        per_class,
        pd.DataFrame({"dim": range(len(kl_by_dim)), "kl": kl_by_dim}),
        pd.DataFrame({"digit": range(N_DIGITS), "fraction": fractions}),
    )
