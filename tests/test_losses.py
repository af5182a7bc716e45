import math

import pytest
import torch

from mnist_vae.model.vae import VAEOutput
from mnist_vae.training.losses import iwae_nll, kl_to_standard_normal, negative_elbo


def test_negative_elbo_against_hand_computation():
    # Two images of two pixels; logits 0 -> p = 0.5 for every pixel.
    x = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    logits = torch.zeros(2, 2)
    mean = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])

    # BCE of p = 0.5 is ln 2 per pixel whatever the target: 2 ln 2 per image.
    recon = 2 * math.log(2.0)
    # KL per dim: 0.5 * (mu^2 + var - 1 - log var)
    kl_first = 0.5 * (1 + 1 - 1 - 0) + 0.5 * (0 + 2 - 1 - math.log(2.0))
    kl = (kl_first + 0.0) / 2

    parts = negative_elbo(VAEOutput(logits, mean, logvar), x, "bce")
    assert parts.recon.item() == pytest.approx(recon)
    assert parts.kl.item() == pytest.approx(kl)
    assert parts.loss.item() == pytest.approx(recon + kl)
    assert parts.as_dict("test_") == {"test_loss": parts.loss, "test_recon": parts.recon,
                                      "test_kl": parts.kl}  # fmt: skip


def test_mse_option_is_the_squared_error_of_probabilities():
    x = torch.tensor([[1.0, 0.0]])
    output = VAEOutput(torch.zeros(1, 2), torch.zeros(1, 1), torch.zeros(1, 1))
    parts = negative_elbo(output, x, "mse")
    assert parts.recon.item() == pytest.approx(0.25 + 0.25)
    assert parts.kl.item() == 0.0


def test_kl_is_zero_only_at_the_prior():
    assert kl_to_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max() == 0
    assert (kl_to_standard_normal(torch.randn(3, 4), torch.randn(3, 4)) > 0).all()


def test_unknown_loss_is_refused():
    output = VAEOutput(torch.zeros(1, 2), torch.zeros(1, 1), torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"unknown loss 'l1'; expected one of \('bce', 'mse', "):
        negative_elbo(output, torch.zeros(1, 2), "l1")


class _PriorModel:
    """q(z|x) = p(z) = N(0, I) and p(x|z) = Bernoulli(0.5) per pixel, whatever z."""

    def encode(self, x):
        return torch.zeros(len(x), 3), torch.zeros(len(x), 3)

    def log_likelihood(self, z, x, loss="bce"):
        return torch.full(z.shape[:2], x[0].numel() * math.log(0.5))


@pytest.mark.parametrize("k", [1, 7, 50])
def test_iwae_nll_against_hand_computation(k):
    # every importance weight is p(x|z) = 0.5^4, so -log p(x) = 4 ln 2 exactly, for any k
    x = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 0.0], [1.0, 1.0]]]])
    nll = iwae_nll(_PriorModel(), x, k, torch.Generator().manual_seed(0), budget=6)
    torch.testing.assert_close(nll, torch.full((2,), 4 * math.log(2.0)))


class _OffsetPosterior(_PriorModel):
    """q(z|x) = N(1, I) against the prior N(0, I): KL(q || p) = 1.5 nats over 3 dimensions."""

    def encode(self, x):
        return torch.ones(len(x), 3), torch.zeros(len(x), 3)


def test_iwae_tightens_from_the_elbo_to_the_true_nll():
    # The decoder ignores z, so -log p(x) = 4 ln 2 exactly. With one sample the estimate
    # averages 4 ln 2 + KL(q || p); with many it converges to 4 ln 2.
    x = torch.zeros(400, 1, 2, 2)
    g = torch.Generator().manual_seed(0)
    k1 = iwae_nll(_OffsetPosterior(), x, 1, g).mean().item()
    k2000 = iwae_nll(_OffsetPosterior(), x, 2000, g, budget=50_000).mean().item()
    assert k1 == pytest.approx(4 * math.log(2.0) + 1.5, abs=0.15)
    assert k2000 == pytest.approx(4 * math.log(2.0), abs=0.05)
