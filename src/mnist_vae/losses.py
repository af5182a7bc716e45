"""The VAE objective: the negative ELBO and its two parts, averaged over images.

With ``recon="bce"`` the reconstruction term is the Bernoulli negative
log-likelihood summed over pixels (binary cross-entropy against grey levels),
so the total is the negative ELBO per image in nats, exactly as pytorch/examples'
VAE defines it and numbers compare. ``recon="mse"`` is the original student
project's squared error, summed over pixels of the decoded probabilities.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class LossParts(NamedTuple):
    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per image, summed over latent dimensions."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def reconstruction_error(logits: torch.Tensor, x: torch.Tensor, recon: str) -> torch.Tensor:
    """Per-image reconstruction term, summed over pixels."""
    if recon == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif recon == "mse":
        per_pixel = (torch.sigmoid(logits) - x).pow(2)
    else:
        raise ValueError(f"unknown reconstruction loss {recon!r}; expected 'bce' or 'mse'")
    return per_pixel.flatten(1).sum(dim=1)


def negative_elbo(
    logits: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    recon: str = "bce",
) -> LossParts:
    """Mean over the batch of reconstruction + KL, with both parts."""
    rec = reconstruction_error(logits, x, recon).mean()
    kl = kl_to_standard_normal(mean, logvar).mean()
    return LossParts(rec + kl, rec, kl)
