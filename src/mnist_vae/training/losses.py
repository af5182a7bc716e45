"""The VAE objective: the negative ELBO and its two parts, averaged over images.

With ``loss="bce"`` the reconstruction term is the Bernoulli negative
log-likelihood summed over pixels (binary cross-entropy against grey levels),
so the total is the negative ELBO per image in nats, exactly as pytorch/examples'
VAE defines it and numbers compare. ``loss="mse"`` is the original student
project's squared error, summed over pixels of the decoded probabilities.

``loss`` names the kind of loss everywhere (``train.loss`` in params.yaml);
``LossParts`` carries its value and its two parts from here to the metrics
tables and MLflow, under the names those use: ``loss``, ``recon``, ``kl``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from ..model.likelihoods import likelihood

if TYPE_CHECKING:
    from ..model.vae import ConvVAE, VAEOutput

_LOG_2PI = math.log(2 * math.pi)


class LossParts(NamedTuple):
    """The negative ELBO (``loss``) and its two parts: tensors from ``negative_elbo``,
    floats once averaged over a data set (per image, in nats for ``bce``)."""

    loss: Any
    recon: Any
    kl: Any

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        """``{"loss": ..., "recon": ..., "kl": ...}``, each name after ``prefix``."""
        return {f"{prefix}{name}": value for name, value in self._asdict().items()}


def kl_per_dimension(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) of each latent dimension: ``[N, latent_dim]``."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per image, summed over latent dimensions."""
    return kl_per_dimension(mean, logvar).sum(dim=1)


def reconstruction_error(decoded: torch.Tensor, x: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-image reconstruction term of the ``loss`` kind, summed over pixels: the negative
    log-likelihood in nats (the squared error for ``mse``)."""
    return likelihood(loss).nll(decoded, x)


def negative_elbo(output: VAEOutput, x: torch.Tensor, loss: str) -> LossParts:
    """Mean over the batch of reconstruction + KL, with both parts (tensors)."""
    return batch_means(
        reconstruction_error(output.decoded, x, loss),
        kl_to_standard_normal(output.mean, output.logvar),
    )


def batch_means(recon: torch.Tensor, kl: torch.Tensor) -> LossParts:
    """The negative ELBO's parts from per-image reconstruction and KL terms (``[N]`` each):
    their means over the batch."""
    rec, kl = recon.mean(), kl.mean()
    return LossParts(rec + kl, rec, kl)


def _gaussian_log_density(
    z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    return -0.5 * ((z - mean).pow(2) / logvar.exp() + logvar + _LOG_2PI).sum(dim=-1)


@torch.no_grad()
def iwae_nll(
    model: ConvVAE,
    x: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
    budget: int = 4096,
    loss: str = "bce",
    batch: int = 64,
) -> torch.Tensor:
    """Importance-weighted estimate of -log p(x) per image (Burda et al. 2015), in nats,
    under the likelihood of ``loss`` (the model's own, or Bernoulli for ``mse`` models).

    -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x) with z_i ~ q(z|x); the bound tightens as
    ``k`` grows and equals the negative ELBO at k = 1. The noise is drawn in chunks of
    ``budget // N`` samples per image (which fixes the estimate for a seed), and the codes
    are decoded about ``batch`` at a time (``ConvVAE.log_likelihood``): a small working set
    stays in the CPU's caches. On a 2-core Xeon, 500 test digits with k = 20 under the
    default autoregressive model take about 2 s this way, against 5.3 s decoding 4,000 codes
    at once with the context read again for each.
    """
    mean, logvar = model.encode(x)
    n, chunk = len(x), max(1, budget // len(x))
    log_w = []
    for start in range(0, k, chunk):
        m = min(chunk, k - start)
        eps = torch.randn((n, m, mean.shape[1]), generator=generator, device=x.device)
        z = mean.unsqueeze(1) + eps * torch.exp(0.5 * logvar).unsqueeze(1)
        step = max(1, batch // m)  # images whose codes are decoded together
        log_px_z = torch.cat(
            [
                model.log_likelihood(z[i : i + step], x[i : i + step], loss)
                for i in range(0, n, step)
            ]
        )
        log_w.append(
            log_px_z
            + _gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
            - _gaussian_log_density(z, mean.unsqueeze(1), logvar.unsqueeze(1))
        )
    return math.log(k) - torch.logsumexp(torch.cat(log_w, dim=1), dim=1)
