"""The per-pixel distributions: proper distributions over the values they code, whose
negative log-likelihood, table and mean agree."""

import math

import pytest
import torch

from mnist_vae.model.likelihoods import LEVELS, LIKELIHOODS, likelihood, to_levels
from mnist_vae.params import LOSSES

CODING = [name for name, lik in LIKELIHOODS.items() if lik.levels is not None]


def _params(name: str, n: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    shape = (n, LIKELIHOODS[name].channels, 28, 28)
    return 2 * torch.randn(shape, generator=generator, dtype=torch.float64)


def _images(levels: int, n: int = 3) -> torch.Tensor:
    values = torch.randint(0, levels, (n, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    return values.double() / (levels - 1)


def test_every_loss_params_yaml_allows_has_a_likelihood():
    assert tuple(LIKELIHOODS) == LOSSES
    with pytest.raises(ValueError, match="unknown loss 'l2'"):
        likelihood("l2")


@pytest.mark.parametrize("name", CODING)
def test_the_table_is_a_distribution_and_agrees_with_the_nll(name):
    lik = LIKELIHOODS[name]
    params, x = _params(name), _images(lik.levels)
    table = lik.log_probs(params)
    assert table.shape == (3, 784, lik.levels)
    assert torch.allclose(table.exp().sum(-1), torch.ones(3, 784, dtype=torch.float64), atol=1e-5)
    k = (x * (lik.levels - 1)).round().long().flatten(1).unsqueeze(-1)
    assert torch.allclose(lik.nll(params, x), -table.gather(-1, k).squeeze(-1).sum(1))


@pytest.mark.parametrize("name", CODING)
def test_the_mean_image_is_the_expectation_of_the_table(name):
    lik = LIKELIHOODS[name]
    params = _params(name)
    values = torch.arange(lik.levels, dtype=torch.float64) / (lik.levels - 1)
    expected = (lik.log_probs(params).exp() * values).sum(-1)
    mean = lik.mean(params)
    assert mean.shape == (3, 1, 28, 28)
    assert torch.allclose(mean.flatten(1), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["beta_binomial", "logistic_mixture"])
def test_eight_bit_likelihoods_cover_the_edges(name):
    """All 0 and all 255 are the common MNIST pixels: both get finite, learnable costs."""
    lik = LIKELIHOODS[name]
    params = _params(name).requires_grad_()
    for level in (0, 255):
        x = torch.full((3, 1, 28, 28), level / 255, dtype=torch.float64)
        nll = lik.nll(params, x).sum()
        (gradient,) = torch.autograd.grad(nll, params)
        assert torch.isfinite(nll) and torch.isfinite(gradient).all()


def test_to_levels_reads_grey_levels_back_exactly():
    k = torch.arange(LEVELS, dtype=torch.float64)
    assert torch.equal(to_levels((k / 255).float()), k.float())


def test_a_uniform_beta_binomial_costs_eight_bits_a_pixel():
    """a = b = 1 is the uniform distribution over 0..255: log2(256) = 8 bits per pixel."""
    lik = LIKELIHOODS["beta_binomial"]
    params = torch.full((1, 2, 28, 28), math.log(math.e - 1), dtype=torch.float64)  # softplus=1
    nll = lik.nll(params, _images(256, 1))  # concentrations 1 + 1e-3
    assert nll.item() / math.log(2) / 784 == pytest.approx(8.0, abs=1e-2)


def test_mse_is_no_distribution_to_code_with():
    with pytest.raises(ValueError, match="nothing to code"):
        LIKELIHOODS["mse"].log_probs(torch.zeros(1, 1, 28, 28))


@pytest.mark.parametrize("name", CODING)
def test_the_zero_split_agrees_with_the_table(name):
    from mnist_vae.model.likelihoods import pixel_rows

    lik = LIKELIHOODS[name]
    rows = pixel_rows(_params(name))
    log_zero, log_rest = lik.log_zero(rows)
    table = lik.log_probs(_params(name)).flatten(0, 1)
    assert torch.allclose(log_zero, table[:, 0], atol=1e-6)
    assert torch.allclose(
        torch.logaddexp(log_zero, log_rest), torch.zeros_like(log_zero), atol=1e-6
    )
