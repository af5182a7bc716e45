import torch
from PIL import Image

from mnist_vae.evaluation.latent import project_2d, save_latent_map, save_pictures, traversal
from mnist_vae.model.vae import VAEConfig, build_model


def test_traversal_sweeps_one_dimension_per_row():
    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=3)).eval()
    z = torch.tensor([0.5, -1.0, 2.0])
    images = traversal(model, z, span=2.0, steps=5)
    assert images.shape == (15, 1, 28, 28)
    # row d, column j decodes z with z[d] = linspace(-2, 2, 5)[j]
    expected = z.clone()
    expected[1] = 1.0
    with torch.no_grad():
        torch.testing.assert_close(
            images[1 * 5 + 3], torch.sigmoid(model.decode(expected[None]))[0]
        )


def test_projection_keeps_two_dims_and_uses_pca_beyond():
    means = torch.randn(50, 2)
    points, axis = project_2d(means)
    assert torch.equal(points, means) and axis == "latent dimension"
    stretched = torch.randn(200, 5) * torch.tensor([0.1, 5.0, 0.1, 0.1, 2.0])
    points, axis = project_2d(stretched)
    assert points.shape == (200, 2) and axis == "principal component"
    assert points[:, 0].var() > points[:, 1].var() > stretched[:, 0].var()


def test_latent_map_png(tmp_path):
    path = save_latent_map(torch.randn(100, 4), torch.arange(100) % 10, tmp_path / "map.png")
    with Image.open(path) as image:
        assert image.size == (600, 600)


def test_save_pictures(tmp_path):
    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=2)).eval()
    images = torch.rand(7, 1, 28, 28)
    paths = save_pictures(model, images, torch.arange(7), tmp_path, span=1.0, steps=4,
                          pairs=5, interpolation_steps=6)  # fmt: skip
    assert [p.name for p in paths] == ["traversal.png", "interpolation.png", "latent_map.png"]
    with Image.open(paths[0]) as traversal_png, Image.open(paths[1]) as interpolation_png:
        assert traversal_png.size == (4 * 30 + 2, 2 * 30 + 2)  # 2 dims x 4 steps
        assert interpolation_png.size == (6 * 30 + 2, 3 * 30 + 2)  # 7 images: 3 pairs
