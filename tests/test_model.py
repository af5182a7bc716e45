import json

import pytest
import torch

from mnist_vae.model.folder import CONFIG_FILE
from mnist_vae.model.vae import (
    ARCHITECTURES,
    DECODERS,
    VAEConfig,
    VAEOutput,
    build_model,
    config_from_params,
    load_model,
    save_model,
)
from mnist_vae.params import ARCH_NAMES, DECODER_NAMES, ModelParams, Params, TrainParams


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("latent_dim", [1, 2, 10, 16])
def test_shapes_follow_the_config(latent_dim, arch):
    model = build_model(VAEConfig(latent_dim=latent_dim, arch=arch))
    x = torch.rand(3, 1, 28, 28)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (3, latent_dim)
    output = model(x)
    assert isinstance(output, VAEOutput)
    assert output.decoded.shape == x.shape
    assert output.mean.shape == output.logvar.shape == (3, latent_dim)
    assert model.decode(torch.randn(5, latent_dim)).shape == (5, 1, 28, 28)


def _layers(modules, kind):
    return [(m.out_channels, m.kernel_size[0], m.stride[0]) for m in modules if isinstance(m, kind)]


def test_conv_is_the_original_layer_table_mirrored():
    model = build_model(VAEConfig(arch="conv"))
    assert _layers(model.encoder, torch.nn.Conv2d) == [
        (16, 7, 1),
        (32, 5, 2),
        (64, 3, 2),
        (128, 3, 1),
    ]
    assert model.feature_shape == (128, 7, 7)
    assert _layers(model.decoder, torch.nn.ConvTranspose2d) == [
        (64, 3, 1), (32, 3, 2), (16, 5, 2), (1, 7, 1)
    ]  # fmt: skip
    assert not any(isinstance(m, torch.nn.Linear) for m in model.encoder)


def test_fast_halves_twice_and_adds_a_dense_layer():
    model = build_model(VAEConfig(arch="fast"))
    assert VAEConfig().arch == "fast"
    assert _layers(model.encoder, torch.nn.Conv2d) == [(32, 4, 2), (64, 4, 2)]
    assert model.feature_shape == (64, 7, 7)
    dense = [
        (m.in_features, m.out_features) for m in model.encoder if isinstance(m, torch.nn.Linear)
    ]
    assert dense == [(64 * 7 * 7, 256)]
    assert model.to_mean.in_features == 256
    # about a third of the original's multiply-adds per image
    fast, conv = (_macs(build_model(VAEConfig(arch=a))) for a in ("fast", "conv"))
    assert fast < conv / 2.5


def _macs(model) -> int:
    """Multiply-adds of one forward pass on one image, counted with forward hooks."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features
        elif isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            per_position = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            spatial = (output if isinstance(module, torch.nn.Conv2d) else inputs[0]).shape[-2:]
            total += per_position * module.out_channels * spatial.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    model(torch.rand(1, 1, 28, 28))
    for hook in hooks:
        hook.remove()
    return total


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_other_image_sizes_need_no_code_change(arch):
    model = build_model(VAEConfig(image_size=32, in_channels=3, latent_dim=4, arch=arch))
    x = torch.rand(2, 3, 32, 32)
    assert model(x).decoded.shape == x.shape


def test_uniform_api_outputs_are_images_in_unit_range():
    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=3)).eval()
    x = torch.rand(4, 1, 28, 28)
    for images in (model.reconstruct(x), model.sample(6, torch.Generator().manual_seed(1))):
        assert images.min() >= 0 and images.max() <= 1
    assert model.sample(6).shape == (6, 1, 28, 28)
    path = model.interpolate(x[:2], x[2:], steps=5)
    assert path.shape == (2, 5, 1, 28, 28)
    torch.testing.assert_close(path[:, 0], model.reconstruct(x[:2]))
    torch.testing.assert_close(path[:, -1], model.reconstruct(x[2:]))


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = build_model(VAEConfig()).eval()
    a = model.sample(4, torch.Generator().manual_seed(7))
    b = model.sample(4, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=5)).eval()
    save_model(model, tmp_path)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["latent_dim"] == 5
    loaded = load_model(tmp_path)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded.reconstruct(x), model.reconstruct(x))


def test_the_architectures_are_the_ones_params_yaml_allows():
    assert tuple(ARCHITECTURES) == ARCH_NAMES
    assert DECODERS == DECODER_NAMES


def test_unknown_decoder():
    with pytest.raises(ValueError, match="unknown decoder 'pixelcnn'"):
        build_model(VAEConfig(decoder="pixelcnn"))


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model(VAEConfig(arch="mlp-9000"))


def test_the_params_model_keys_all_reach_the_config():
    """The train stage builds its model from params.yaml through ``config_from_params``:
    every model key set to something other than its default lands in the config."""
    model = ModelParams(
        arch="conv",
        decoder="factorized",
        pass_schedule="passes-4",
        head_hidden=48,
        sampler_components=3,
    )
    params = Params(latent_dim=7, model=model, train=TrainParams(loss="bce"))
    config = config_from_params(params)
    assert (config.latent_dim, config.arch, config.likelihood) == (7, "conv", "bce")
    assert (config.decoder, config.pass_schedule, config.sampler_components) == (
        "factorized",
        "passes-4",
        3,
    )
    assert config.head_hidden == 48
