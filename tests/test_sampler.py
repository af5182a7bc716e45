"""The sampling mixture: fitted to the training codes, stored with the weights."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mnist_vae.errors import ParamsError
from mnist_vae.model.sampler import check_sampler, fit_sampler, posterior_means
from mnist_vae.model.vae import VAEConfig, build_model, load_model, save_model


def _model(components: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(VAEConfig(latent_dim=3, sampler_components=components)).eval()


def _images(n: int = 300) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_the_fitted_mixture_sits_where_the_codes_are():
    model, images = _model(4), _images()
    score = fit_sampler(model, images, seed=0)
    assert torch.isfinite(torch.tensor(score))
    assert model.sampler_weights.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(model.sampler_scale_tril, model.sampler_scale_tril.tril())
    assert (torch.diagonal(model.sampler_scale_tril, dim1=1, dim2=2) > 0).all()
    codes = torch.from_numpy(posterior_means(model, images)).float()
    drawn = model.sample_latents(20_000, torch.Generator().manual_seed(0))
    spread = codes.std(0)
    # the codes of random images sit far inside N(0, I): the samples follow the codes
    assert torch.allclose(drawn.mean(0), codes.mean(0), atol=0.1 * spread.max().item())
    assert torch.allclose(drawn.std(0), spread, rtol=0.15)


def test_sampling_is_seeded_and_the_mixture_travels_with_the_weights(tmp_path):
    model = _model(2)
    fit_sampler(model, _images(), seed=0)
    first = model.sample(5, torch.Generator().manual_seed(3))
    assert torch.equal(first, model.sample(5, torch.Generator().manual_seed(3)))
    assert first.shape == (5, 1, 28, 28)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.sampler_components == 2
    assert torch.equal(loaded.sampler_means, model.sampler_means)
    assert torch.equal(loaded.sample(5, torch.Generator().manual_seed(3)), first)


def test_a_model_without_a_sampler_draws_from_the_prior_as_before():
    model = _model(0)
    z = model.sample_latents(4, torch.Generator().manual_seed(7))
    assert torch.equal(z, torch.randn(4, 3, generator=torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match="without a sampler"):
        fit_sampler(model, _images(10), seed=0)


def test_more_components_than_training_images_is_refused_before_training():
    check_sampler(50, 50)
    with pytest.raises(ParamsError, match=r"model\.sampler_components = 50 needs at least"):
        check_sampler(50, 49)


def test_the_served_model_and_the_lossy_codec_load_without_scikit_learn():
    """Only fitting needs scikit-learn (0.8 s to import): a server or a stage that only
    reads codes does not pay for it."""
    code = (
        "import sys\n"
        "import mnist_vae.compression.lossy, mnist_vae.tracking.serving_model\n"
        "assert 'sklearn' not in sys.modules, 'scikit-learn was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
